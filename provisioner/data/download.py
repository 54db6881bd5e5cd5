"""HTTP(S) downloads into a `.part` file: resumable with Range, retried with backoff.

The caller verifies the finished `.part` and renames it into place, so nothing half-made ever
sits under the target's name. A `.part` left by an interrupted run (network failure, Ctrl-C)
is continued with `Range: bytes=N-` when the server answers 206; a server that ignores Range
(200) makes us start over. The final checksum validates a resumed file.

Cancelling (Ctrl-C, or another entry failing) must not wait for a silent server: a `Cancel`
hangs up the sockets of the requests it watches, which wakes a blocked read at once. The
`.part` is kept for the next run. https trusts what Python's default context trusts: the
system store, or the bundle named by $SSL_CERT_FILE / $SSL_CERT_DIR (read by OpenSSL).
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from auditor.backpack.data import DataPolicy
from auditor.common.errors import FloError

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


class _Line:
    """The sockets one request opened (redirects open more), so another thread can hang up."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.hung_up = False
        self.lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            if not self.hung_up:
                return
        _shutdown(sock)

    def hang_up(self) -> None:
        with self.lock:
            self.hung_up = True
            sockets = list(self.sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    """Shut the connection down under any TLS layer: a read blocked in another thread returns
    EOF at once. (A closed socket has no descriptor any more: EBADF, ignored.)"""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # not SSLSocket's, which drops its state
    except OSError:
        pass


class Cancel(threading.Event):
    """A cancel flag that also hangs up the connections of the downloads watching it."""

    def __init__(self) -> None:
        super().__init__()
        self._lines: set[_Line] = set()
        self._guard = threading.Lock()

    def set(self) -> None:
        with self._guard:
            super().set()
            lines = list(self._lines)
        for line in lines:
            line.hang_up()

    @contextmanager
    def watching(self, line: _Line) -> Iterator[None]:
        with self._guard:
            self._lines.add(line)
            cancelled = self.is_set()
        if cancelled:
            line.hang_up()
        try:
            yield
        finally:
            with self._guard:
                self._lines.discard(line)


class _Watched:
    """Mixed into http.client's connection classes: each socket made joins the request's line."""

    line: _Line

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.line.add(self.sock)  # type: ignore[attr-defined]


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, line: _Line) -> None:
        super().__init__()
        self.connection: type[http.client.HTTPConnection] = type(
            "WatchedHTTPConnection", (_Watched, http.client.HTTPConnection), {"line": line})

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, line: _Line) -> None:
        super().__init__()
        self.connection: type[http.client.HTTPSConnection] = type(
            "WatchedHTTPSConnection", (_Watched, http.client.HTTPSConnection), {"line": line})

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        # No context: http.client makes the default one per connection, so the trust store
        # (and $SSL_CERT_FILE) is read when the download starts.
        return self.do_open(self.connection, req)


@contextmanager
def _watched(cancel: threading.Event | None, line: _Line) -> Iterator[None]:
    if isinstance(cancel, Cancel):
        with cancel.watching(line):
            yield
    else:
        yield


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
            pause(policy.backoff * 2 ** (attempt - 1), cancel)
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
    """One GET; returns the offset it resumed from. Raises DownloadError (transient or not),
    or Cancelled when the failure was our own hang-up."""
    line = _Line()
    try:
        with _watched(cancel, line):
            return _get(url, part, offset, timeout, expected_size, progress, cancel, line)
    except DownloadError:
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled") from None
        raise


def _get(url: str, part: Path, offset: int, timeout: float, expected_size: int | None,
         progress: ByteProgress | None, cancel: threading.Event | None, line: _Line) -> int:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_HTTPHandler(line), _HTTPSHandler(line))
    try:
        with opener.open(request, timeout=timeout or None) as response:
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
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise DownloadError(
                f"the server's certificate is not trusted ({exc.reason.verify_message}); if "
                "your site has its own certificate authority, set SSL_CERT_FILE to its CA "
                "bundle") from None
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
            chunk = response.read(CHUNK)
            out.write(chunk)  # bytes that arrived before a hang-up are kept for the resume
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            if not chunk:
                break
            done += len(chunk)
            if progress:
                progress(done, total)
    if total is not None and done < total:
        # http.client returns b"" (no error) when the peer closes early: count the bytes.
        raise DownloadError(f"connection closed after {done} of {total} bytes", transient=True)


def pause(seconds: float, cancel: threading.Event | None) -> None:
    """Backoff between attempts; returns early (raising) when cancelled."""
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise Cancelled("cancelled")
