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


def _feed(digest: hashlib._Hash, path: str | Path, progress: Progress | None) -> None:
    """Stream one file's bytes into `digest`, CHUNK by CHUNK."""
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))


def directory_files(path: str | Path) -> list[tuple[str, Path]]:
    """Every file under `path` (recursively; symlinked directories are not followed) as
    (relative POSIX path, absolute path), sorted by the relative path's UTF-8 bytes."""
    root = os.fspath(path)
    found = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        relative_folder = os.path.relpath(folder, root)
        for name in names:
            full = os.path.join(folder, name)
            if os.path.isfile(full):
                relative = name if relative_folder == "." else f"{relative_folder}/{name}"
                found.append((relative, full))
    found.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    return [(relative, Path(full)) for relative, full in found]


def directory_stats(path: str | Path,
                    files: list[tuple[str, Path]] | None = None) -> tuple[int, int]:
    """(number of files, total bytes) of a directory, as `files` and `expected_size` count;
    `files`: its `directory_files`, if the caller has them."""
    files = directory_files(path) if files is None else files
    return len(files), sum(full.stat().st_size for _, full in files)


def directory_checksum(path: str | Path, algo: str = "sha256",
                       progress: Progress | None = None,
                       files: list[tuple[str, Path]] | None = None) -> str:
    """The checksum of a directory entry -> 'algo:hex'.

    Byte layout fed to the hash, for each file of `directory_files` in that order:
    the relative POSIX path in UTF-8, a NUL byte, the file size in decimal ASCII, a NUL byte,
    then the file's contents. The size prefix makes the stream unambiguous (no two different
    trees produce the same bytes). Empty directories and file modes do not count.
    """
    digest = hashlib.new(algo)
    for relative, full in directory_files(path) if files is None else files:
        size = full.stat().st_size
        digest.update(relative.encode("utf-8", "surrogateescape") + b"\0"
                      + str(size).encode("ascii") + b"\0")
        _feed(digest, full, progress)
    return f"{algo}:{digest.hexdigest()}"


def checksum_of(path: str | Path, algo: str = "sha256", progress: Progress | None = None) -> str:
    """`directory_checksum` for a folder, `file_checksum` for a file."""
    if Path(path).is_dir():
        return directory_checksum(path, algo, progress)
    return file_checksum(path, algo, progress)
