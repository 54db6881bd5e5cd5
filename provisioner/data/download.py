"""HTTP(S) downloads into a `.part` file: resumable with Range, retried with backoff.

The caller verifies the finished `.part` and renames it into place, so nothing half-made ever
sits under the target's name. A `.part` left by an interrupted run (network failure, Ctrl-C)
is continued with `Range: bytes=N-` when the server answers 206; a server that ignores Range
(200) makes us start over. The final checksum validates a resumed file.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditor.data_spec import DataPolicy
from auditor.errors import FloError

CHUNK = 1 << 16
USER_AGENT = "flo-run (flo-backpack)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

ByteProgress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class DownloadError(FloError):
    """A download failed. `transient` failures (network, 5xx) keep the `.part` for a resume."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Cancelled(FloError):
    """Another entry failed or the user interrupted: stop between chunks."""


@dataclass
class Downloaded:
    path: Path
    resumed_from: int  # bytes already in the .part when the successful request started
    requests: int


def download(url: str, part: Path, *, policy: DataPolicy, expected_size: int | None = None,
             progress: ByteProgress | None = None,
             cancel: threading.Event | None = None) -> Downloaded:
    """Fetch `url` into `part`, continuing what is there; retried per `policy`."""
    last: DownloadError | None = None
    if expected_size is not None and part.exists() and part.stat().st_size > expected_size:
        part.unlink()
    for attempt in range(policy.attempts):
        if attempt:
            _pause(policy.backoff * 2 ** (attempt - 1), cancel)
        offset = part.stat().st_size if part.exists() else 0
        try:
            resumed = _one_request(url, part, offset, policy.timeout, expected_size, progress,
                                   cancel)
            return Downloaded(part, resumed, attempt + 1)
        except DownloadError as exc:
            if not exc.transient:
                raise
            last = exc
    assert last is not None
    raise DownloadError(f"{last} (gave up after {policy.attempts} attempt"
                        f"{'s' if policy.attempts != 1 else ''})", transient=True)


def _one_request(url: str, part: Path, offset: int, timeout: float, expected_size: int | None,
                 progress: ByteProgress | None, cancel: threading.Event | None) -> int:
    """One GET; returns the offset it resumed from. Raises DownloadError (transient or not)."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout or None) as response:
            start, total = _body_span(response, offset)
            if expected_size is not None and total is not None and total != expected_size:
                part.unlink(missing_ok=True)
                raise DownloadError(f"expected {expected_size} bytes, the server has {total}")
            _write_body(response, part, start, total, progress, cancel)
            return start
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The .part already holds the whole body (or is junk): check, else start over.
            whole = exc.headers.get("Content-Range", "").rpartition("/")[2]
            if whole.isdigit() and int(whole) == offset:
                return offset
            part.unlink(missing_ok=True)
            raise DownloadError("the server refused to resume; starting over",
                                transient=True) from None
        transient = exc.code in (408, 425, 429) or exc.code >= 500
        raise DownloadError(f"HTTP {exc.code} {exc.reason}", transient=transient) from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot connect: {exc.reason}", transient=True) from None
    except (http.client.HTTPException, OSError) as exc:  # includes socket timeouts
        raise DownloadError(f"connection failed: {exc or type(exc).__name__}",
                            transient=True) from None


def _body_span(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """(offset the body starts at, total size of the resource or None)."""
    length = response.headers.get("Content-Length")
    length_n = int(length) if length and length.isdigit() else None
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            raise DownloadError("the server sent a different byte range than asked; "
                                "starting over", transient=True)
        total = match.group(3)
        return offset, int(total) if total.isdigit() else None
    return 0, length_n  # 200: the whole body, whatever we asked


def _write_body(response: http.client.HTTPResponse, part: Path, start: int, total: int | None,
                progress: ByteProgress | None, cancel: threading.Event | None) -> None:
    done = start
    with open(part, "r+b" if start and part.exists() else "wb") as out:
        out.seek(start)
        out.truncate()
        if progress:
            progress(done, total)
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            chunk = response.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    if total is not None and done < total:
        # http.client returns b"" (no error) when the peer closes early: count the bytes.
        raise DownloadError(f"connection closed after {done} of {total} bytes", transient=True)


def _pause(seconds: float, cancel: threading.Event | None) -> None:
    """Backoff between attempts; returns early (raising) when cancelled."""
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise Cancelled("cancelled")
