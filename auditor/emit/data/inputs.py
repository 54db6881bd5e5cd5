"""The data draft's filesystem work, on either side of the pure classification (classify.py).

Before it, `look` takes one stat of each path the run used: the facts classification reads (is
it still there, a folder, changed since the run began). After it, `hash_inputs` turns the
classified inputs into data.yml entries: the files read inside a chunked store, or every file
of a listed folder, become one folder entry; each entry is sized, hashed (hashing.py) and named
as the notebook named it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping

from ...backpack.data import MAX_CLIMB, DataEntry, climb
from .classify import ARCHIVE_SUFFIXES, Classified, OnDisk, Place, RoleOf, first, under
from .draft import DataDraft, PathUse, entry_name
from .hashing import Progress, sha256_file, sha256_folder
from .stores import store_as_named, stores_of


def look(paths: Iterable[str]) -> dict[str, OnDisk]:
    """What the disk holds at each of `paths` now (a path absent from the answer is gone)."""
    found: dict[str, OnDisk] = {}
    for path in paths:
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode):
            try:
                info = os.stat(path)
            except OSError:
                found[path] = OnDisk(named=True, exists=False)  # a dangling link
                continue
        found[path] = OnDisk(named=True, exists=True, folder=stat.S_ISDIR(info.st_mode),
                             mtime=info.st_mtime)
    return found


def hash_inputs(draft: DataDraft, classified: Classified,
                listed: Mapping[str, Mapping[int, PathUse] | None], role_of: RoleOf,
                place: Place, names: set[str], progress: Progress | None) -> None:
    """Add the classified inputs to `draft.inputs` as entries: stores and fully read folders
    first (one entry each), then the files left, each sized and hashed."""
    candidates = dict(classified.inputs)
    _stores(draft, candidates, role_of, place, names, progress)
    _folders(draft, candidates, listed, role_of, place, names, progress)
    for path, read in sorted(candidates.items()):
        entry = entry_for(path, read, role_of, place, names)
        entry.checksum = sha256_file(path, progress)
        entry.expected_size = _size(path) if entry.checksum else None
        if entry.checksum is None:
            draft.warnings.append(f"{path}: read by the run but gone before it could be "
                                  "hashed; listed without size or checksum")
        unpack = classified.unpacked(path, read)
        if unpack:
            entry.post_fetch = {"operation": unpack}
        draft.inputs.append(entry)


def _stores(draft: DataDraft, candidates: dict[str, PathUse], role_of: RoleOf, place: Place,
            names: set[str], progress: Progress | None) -> None:
    """Files read inside a chunked store (zarr) become one entry for the whole store."""
    for root, members in sorted(stores_of(candidates, place.cwd).items()):
        digest = sha256_folder(root, progress)
        if digest is None:
            draft.warnings.append(f"{root}: changed while it was hashed; its files are "
                                  "listed one by one")
            continue
        first_path = min(members, key=lambda m: candidates[m].t)
        first_read = candidates[first_path]
        named = store_as_named(root, first_path, first_read.used_as)
        entry = entry_for(root, PathUse(first_read.t, first_read.pid, first_read.cell, named),
                          role_of, place, names, is_dir=True)
        entry.checksum, entry.files, entry.expected_size = digest
        for member in members:
            del candidates[member]
        draft.inputs.append(entry)


def _folders(draft: DataDraft, candidates: dict[str, PathUse],
             listed: Mapping[str, Mapping[int, PathUse] | None], role_of: RoleOf, place: Place,
             names: set[str], progress: Progress | None) -> None:
    """A listed folder whose every file the run read becomes one entry."""
    taken: list[str] = []
    for folder, uses in sorted(listed.items(), key=lambda kv: len(kv[0])):
        listing = first(uses, role_of) if uses else None
        if listing is None or any(under(folder, t) for t in taken):
            continue
        members = _all_read(folder, candidates)
        if not members:
            continue
        digest = sha256_folder(folder, progress)
        if digest is None:
            draft.warnings.append(f"{folder}: changed while it was hashed; its files are "
                                  "listed one by one")
            continue
        first_read = min((candidates[m] for m in members), key=lambda u: u.t)
        entry = entry_for(folder, PathUse(first_read.t, first_read.pid, first_read.cell,
                                          listing.used_as), role_of, place, names, is_dir=True)
        entry.checksum, entry.files, entry.expected_size = digest
        for member in members:
            del candidates[member]
        taken.append(folder)
        draft.inputs.append(entry)


def entry_for(path: str, use: PathUse, role_of: RoleOf, place: Place, names: set[str],
              is_dir: bool = False) -> DataEntry:
    """The data.yml entry of the input at `path`, first read as `use` says: its target is
    where the notebook looks for it, its name unique among `names`."""
    cwd = place.cwd
    used = os.path.normpath(os.path.join(cwd, use.used_as))
    relative = os.path.relpath(used, cwd)
    if under(used, cwd) or (not os.path.isabs(use.used_as) and climb(relative) <= MAX_CLIMB):
        target = relative  # as the notebook names it, '../shared.csv' included
    elif place.near(used):
        # Named absolutely but part of the notebook's project (abspath('../src'),
        # Path.cwd().parent / 'data'): copied to the same place relative to the notebook,
        # where code that computes the path from its working directory finds it.
        target = relative
    else:
        target = used  # named by its absolute path, elsewhere: used in place
    stem = os.path.basename(path.rstrip("/"))
    for suffix in (*ARCHIVE_SUFFIXES, ".gz", ".bz2", ".xz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if not is_dir:
        stem = os.path.splitext(stem)[0]
    return DataEntry(name=entry_name(stem, names), source_type="fs", source=used,
                     target_location=target, read_by=role_of(use.pid),
                     first_cell=use.cell, absolute=os.path.isabs(target))


def _all_read(folder: str, candidates: Mapping[str, PathUse]) -> list[str]:
    """The files under `folder` when the run read every one of them, else [] (stops at the
    first file not read: a listed home folder is not walked to the end)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            path = os.path.join(root, name)
            if path not in candidates:
                if os.path.isfile(path):
                    return []
                continue
            found.append(path)
    return found


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
