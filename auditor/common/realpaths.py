"""os.path.realpath for many files of few folders: each folder resolved once.

A file's real path is its folder's real path plus its name, unless the name is itself a
symlink: one lstat a file instead of one per component of its path. Paths with `.` or `..`
parts go to os.path.realpath whole. Keep one instance per derive (the filesystem is read as
it is then; a later change to a folder's symlinks is not seen by that instance).
"""

from __future__ import annotations

import os


class RealPaths:
    """Callable: `real(path)` is `os.path.realpath(path)`, folders memoised."""

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str, link: bool | None = None) -> str:
        """`link`: whether `path` is a symlink, if the caller knows (it saves an lstat)."""
        folder, name = os.path.split(path)
        if (not name or name in (".", "..") or "/./" in f"{folder}/" or "/../" in f"{folder}/"
                or (os.path.islink(path) if link is None else link)):
            return os.path.realpath(path)
        real = self._folders.get(folder)
        if real is None:
            real = self._folders[folder] = os.path.realpath(folder)
        return os.path.join(real, name)
