"""Hashing the drafter's inputs with a progress display: files, folders and (`--checksum-remote`)
URLs, each downloaded once, streamed to a temporary file that is removed afterwards.

The byte layouts are those of checksums.py, which flo-run verifies with; here they only gain a
progress callback that names what is being hashed, and None instead of an error for a file
that vanished before it could be hashed.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from collections.abc import Callable

from ...backpack.checksums import (
    CHUNK,
    directory_checksum,
    directory_listing,
    directory_stats,
    file_checksum,
)

#: progress(what, bytes done, bytes in all or 0 when unknown)
Progress = Callable[[str, int, int], None]


def checksum_url(url: str, timeout: float = 60.0,
                 progress: Progress | None = None) -> tuple[int, str]:
    """Download `url` and return (size, "sha256:<hex>"). Raises OSError (urllib's errors are
    OSErrors) when the download fails; the temporary folder is removed either way."""
    with tempfile.TemporaryDirectory(prefix="flo-fetch-") as folder:
        target = os.path.join(folder, "download")
        request = urllib.request.Request(url, headers={"User-Agent": "flo-audit"})
        with urllib.request.urlopen(request, timeout=timeout) as response, \
                open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(url, done, total)
        return os.path.getsize(target), file_checksum(target)


def _counting(label: str, total: int, progress: Progress | None) -> Callable[[int], None]:
    """Turn the hasher's per-chunk byte counts into progress(label, done, total) calls."""
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(label, done, total)
    return step


def sha256_file(path: str, progress: Progress | None = None) -> str | None:
    """The file's checksum, streamed with progress(path, done, total); None if it vanished."""
    try:
        return file_checksum(path, "sha256", _counting(path, os.path.getsize(path), progress))
    except OSError:
        return None


def sha256_folder(folder: str, progress: Progress | None = None) -> tuple[str, int, int] | None:
    """(checksum, files, total size) of a folder entry (the layout of
    checksums.directory_checksum); None if a file vanished while it was hashed."""
    try:
        listing = directory_listing(folder)  # walked once for both
        files, size = directory_stats(folder, listing)
        digest = directory_checksum(folder, "sha256", _counting(folder, size, progress), listing)
        return digest, files, size
    except OSError:
        return None
