"""Chunked stores that are read by key, never listed (zarr): one data.yml entry per store.

A zarr group or array is a folder of metadata files and chunk files that zarr opens by name.
The run reads some chunks; a re-run reads the same ones, but the backpack should carry the
store as one thing, so every input file inside a store becomes one folder entry for the
outermost folder holding a store marker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

#: Files that mark a store's folders (zarr v3 nodes, zarr v2 groups and arrays).
STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray")
#: How many folders above a file a store's top is looked for.
MAX_DEPTH = 8


def store_root(path: str, marked: dict[str, bool]) -> str | None:
    """The outermost folder above `path` (up to MAX_DEPTH levels) holding a store marker, or
    None; `marked` caches the answer per folder."""
    found = None
    folder = os.path.dirname(path)
    for _ in range(MAX_DEPTH):
        if folder not in marked:
            marked[folder] = any(os.path.exists(os.path.join(folder, m)) for m in STORE_MARKERS)
        if marked[folder]:
            found = folder
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return found


def stores_of(paths: Iterable[str], cwd: str) -> dict[str, list[str]]:
    """{store folder: the given paths inside it}, leaving out a store that holds `cwd` (the
    notebook's own folder is never a data entry)."""
    marked: dict[str, bool] = {}
    roots: dict[str, list[str]] = {}
    root_of: dict[str, str | None] = {}  # per folder: a store's root depends on it alone
    for path in paths:
        folder = os.path.dirname(path)
        if folder not in root_of:
            root_of[folder] = store_root(path, marked)
        root = root_of[folder]
        if root is not None and not (cwd == root or cwd.startswith(root + os.sep)):
            roots.setdefault(root, []).append(path)
    return roots


def store_as_named(root: str, member: str, member_as_named: str) -> str:
    """How the notebook named the store, from how it named a file inside it: 'x.zarr/a/0'
    for '/nb/x.zarr/a/0' gives 'x.zarr'; the absolute folder when that cannot be told."""
    inside = os.path.relpath(member, root)
    if member_as_named.endswith(os.sep + inside):
        return member_as_named[: -len(inside)].rstrip(os.sep) or "."
    return root
