"""Checksums of data entries, one definition for both sides (flo-audit drafts, flo-run checks).

A checksum is written `algo:hex` (sha256, sha1, md5); bare hex is read by its length. A
directory's checksum is defined once, in `directory_checksum`, so the drafter and the fetcher
can never disagree about its byte layout.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

ALGORITHMS = {"sha256": 64, "sha1": 40, "md5": 32}  # name -> hex digits
CHUNK = 1 << 20

Progress = Callable[[int], None]  # called with the number of bytes just hashed


def parse_checksum(text: str) -> tuple[str, str]:
    """`'sha256:ab12..'` or bare hex -> (algo, lowercase hex); ValueError saying what is wrong."""
    text = str(text).strip()
    algo, sep, digest = text.partition(":")
    if not sep:
        algo, digest = "", text
    algo, digest = algo.lower(), digest.lower()
    if not algo:
        algo = next((a for a, n in ALGORITHMS.items() if n == len(digest)), "")
        if not algo:
            raise ValueError(f"{text!r} is bare hex of length {len(digest)}; expected "
                             "'algo:hex' with algo one of sha256, sha1, md5")
    if algo not in ALGORITHMS:
        raise ValueError(f"{text!r}: unknown algorithm {algo!r}; expected sha256, sha1 or md5")
    if len(digest) != ALGORITHMS[algo] or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"{text!r}: expected {ALGORITHMS[algo]} hex digits for {algo}")
    return algo, digest


def file_checksum(path: str | Path, algo: str = "sha256",
                  progress: Progress | None = None) -> str:
    """Stream a file through `algo` (never loaded whole) -> 'algo:hex'."""
    digest = hashlib.new(algo)
    _feed(digest, path, progress)
    return f"{algo}:{digest.hexdigest()}"


def _feed(digest: hashlib._Hash, path: str | Path, progress: Progress | None,
          size: int | None = None) -> None:
    """Stream one file's bytes into `digest`, CHUNK by CHUNK, through one buffer no larger
    than the file (a folder of many small files costs few syscalls and no big allocations).
    `size`: the file's size from a listing, when known (no fstat; a read that fills less than
    the buffer, with `size` bytes in, is the end: no read of nothing to learn it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if size is None:
            size = os.fstat(fd).st_size
        buffer = bytearray(min(CHUNK, size + 1))
        view, done = memoryview(buffer), 0
        while count := os.readv(fd, (buffer,)):
            digest.update(view[:count])
            done += count
            if progress:
                progress(count)
            if count < len(buffer) and done >= size:
                break
    finally:
        os.close(fd)


# A folder's files as (relative POSIX path, absolute path, size in bytes).
Listing = list[tuple[str, str, int]]


def directory_listing(path: str | Path) -> Listing:
    """Every file under `path` (recursively; symlinked directories are not followed, a
    symlinked file counts as its target, an unreadable folder as empty) with its size, sorted
    by the relative path's UTF-8 bytes: one stat per file."""
    found: Listing = []

    def walk(folder: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif entry.is_file():
                    found.append((prefix + entry.name, entry.path, entry.stat().st_size))
            except OSError:
                continue  # gone since the listing, as a file os.path.isfile no longer finds

    walk(os.fspath(path), "")
    found.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    return found


def directory_files(path: str | Path) -> list[tuple[str, Path]]:
    """Every file under `path` as (relative POSIX path, absolute path): `directory_listing`."""
    return [(relative, Path(full)) for relative, full, _ in directory_listing(path)]


def directory_stats(path: str | Path, listing: Listing | None = None) -> tuple[int, int]:
    """(number of files, total bytes) of a directory, as `files` and `expected_size` count;
    `listing`: its `directory_listing`, if the caller has it."""
    listing = directory_listing(path) if listing is None else listing
    return len(listing), sum(size for _, _, size in listing)


def directory_checksum(path: str | Path, algo: str = "sha256",
                       progress: Progress | None = None,
                       listing: Listing | None = None) -> str:
    """The checksum of a directory entry -> 'algo:hex'.

    Byte layout fed to the hash, for each file of `directory_listing` in that order:
    the relative POSIX path in UTF-8, a NUL byte, the file size in decimal ASCII, a NUL byte,
    then the file's contents. The size prefix makes the stream unambiguous (no two different
    trees produce the same bytes). Empty directories and file modes do not count.
    """
    digest = hashlib.new(algo)
    for relative, full, size in directory_listing(path) if listing is None else listing:
        digest.update(relative.encode("utf-8", "surrogateescape") + b"\0"
                      + str(size).encode("ascii") + b"\0")
        _feed(digest, full, progress, size)
    return f"{algo}:{digest.hexdigest()}"


def checksum_of(path: str | Path, algo: str = "sha256", progress: Progress | None = None) -> str:
    """`directory_checksum` for a folder, `file_checksum` for a file."""
    if Path(path).is_dir():
        return directory_checksum(path, algo, progress)
    return file_checksum(path, algo, progress)
