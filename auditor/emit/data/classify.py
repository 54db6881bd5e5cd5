"""What each path the run used is (DESIGN.md rule 8), decided from the events and from facts,
never from the filesystem: an input, an output, an intermediate, a secret, or scratch.

`classify` reads the uses `DataCollector.note` gathered (`PathState`: the first read and write
of each process), who each process is (`RoleOf`) and what the disk held afterwards (`OnDisk`,
looked up once by hashing.look before this step), and returns `Classified`; hashing.py then
sizes, hashes and names the inputs. Being pure, it runs on a recorded event list alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...backpack.data import beside
from .draft import MANAGER, TOOL, TRACER, PathUse
from .rules import CODE_SUFFIXES, DataRules

if TYPE_CHECKING:
    from ...roles import Roles

#: pid -> role ("manager", "worker", "tracer"; a tool counts as the role that ran it)
RoleOf = Callable[[int], str]

ARCHIVE_SUFFIXES = {".tar.gz": "untar", ".tgz": "untar", ".tar.bz2": "untar",
                    ".tar.xz": "untar", ".tar": "untar", ".zip": "unzip"}


class PathState:
    """The first read and first write of one path by each process."""

    __slots__ = ("reads", "writes", "secret", "plain_read", "plain_reads", "read_in",
                 "written_in")

    def __init__(self, secret: bool) -> None:
        self.reads: dict[int, PathUse] = {}
        self.writes: dict[int, PathUse] = {}
        self.secret = secret
        self.plain_read = False  # opened read-only at least once (not only O_RDWR)
        self.plain_reads: dict[int, PathUse] = {}  # the first read-only open by each process
        self.read_in: set[int] = set()  # the cells that read it (any process; audit/cells.yml)
        self.written_in: set[int] = set()


@dataclass(frozen=True, slots=True)
class OnDisk:
    """What the disk held at a path when the run was over: the facts classification uses."""

    named: bool  # a name is there, perhaps a dangling link (os.path.lexists)
    exists: bool  # and what it names exists (os.path.exists)
    folder: bool = False
    mtime: float | None = None  # of what it names


GONE = OnDisk(named=False, exists=False)


@dataclass(frozen=True)
class Place:
    """Where the run ran and the rules for its paths: what is temp space, its own code, its
    project."""

    rules: DataRules
    notebook_dir: str
    cwd: str

    def scratch(self, path: str) -> bool:
        """Temporary space that is not the notebook's project (a project may live in /tmp)."""
        return self.rules.is_temp(path) and not (under(path, self.notebook_dir)
                                                 or self.near(path))

    def own_code(self, path: str) -> bool:
        return path.endswith(CODE_SUFFIXES) and under(path, self.notebook_dir)

    def near(self, path: str) -> bool:
        """Part of the notebook's project though named absolutely (backpack.data.beside)."""
        return beside(path, self.cwd)


@dataclass
class Classified:
    """The run's paths by what they are; the inputs still to be sized, hashed and named."""

    inputs: dict[str, PathUse] = field(default_factory=dict)  # path -> its first read
    outputs: list[str] = field(default_factory=list)
    intermediates: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    scratch: int = 0  # files under temp space, or made and removed: counted, not listed
    warnings: list[str] = field(default_factory=list)
    written_after: list[tuple[float, str]] = field(default_factory=list)  # intermediates
    #: Files the run wrote first: (first write, path, first read or None).
    saved: list[tuple[PathUse, str, PathUse | None]] = field(default_factory=list)

    def unpacked(self, path: str, read: PathUse) -> str | None:
        """How to unpack the input archive at `path` when the run wrote something after it
        read it (the post_fetch step: 'untar', 'unzip'); else None."""
        suffix = next((s for s in ARCHIVE_SUFFIXES if path.endswith(s)), None)
        if suffix and any(t >= read.t for t, _ in self.written_after):
            return ARCHIVE_SUFFIXES[suffix]
        return None

    def saved_copy(self, use: PathUse, base: str, place: Place) -> tuple[str, str | None] | None:
        """Where the notebook saved what it downloaded (urlretrieve(url, 'data/x.tar.gz')):
        the first file named like the URL that the same process wrote after asking for it,
        under the notebook's folder; and how to unpack it when the run read what it extracted
        next to it. flo-run then puts the download where a notebook that skips downloading
        what it already has finds it."""
        found = [(write, path, read) for write, path, read in self.saved
                 if os.path.basename(path) == base and write.pid == use.pid
                 and write.t >= use.t and (under(path, place.cwd) or place.near(path))]
        if not found:
            return None
        _, path, read = min(found, key=lambda item: item[0].t)
        suffix = next((s for s in ARCHIVE_SUFFIXES if path.endswith(s)), None)
        unpacked = suffix is not None and read is not None and any(
            t >= read.t and under(p, os.path.dirname(path)) for t, p in self.written_after)
        return (os.path.relpath(path, place.cwd),
                ARCHIVE_SUFFIXES[suffix] if unpacked and suffix is not None else None)


def classify(paths: Mapping[str, PathState | None], listed: Mapping[str, object],
             role_of: RoleOf, disk: Mapping[str, OnDisk], place: Place, *,
             skip: frozenset[str] = frozenset(), started: float | None = None) -> Classified:
    """Each path the run used, by what it is. `listed`: the folders the run listed; `disk`:
    what the disk held afterwards (a path it lacks is gone); `skip`: the workflow's own files;
    `started`: when the run began (files opened for update and changed since are outputs)."""
    found = Classified()
    # Folders the run used (parents of paths it opened), for the gone ones: a folder
    # opened without O_DIRECTORY (shutil.rmtree does) and removed since is no input.
    folders = {os.path.dirname(p) for p in paths} | set(listed)
    for path, state in sorted(paths.items()):
        if state is None or path in skip:
            continue
        read, write = first_read_and_write(state, role_of)
        if write is not None and (read is None or write.t <= read.t):
            found.saved.append((write, path, read))
        if read is None:
            if write is not None:
                _produced(found, found.outputs, path, disk, place)
            continue
        if write is not None and write.t <= read.t:
            _produced(found, found.intermediates, path, disk, place)
            found.written_after.append((write.t, path))
            continue
        now = disk.get(path, GONE)
        if state.secret:
            found.secrets.append(path)
        elif now.folder or place.own_code(path):
            continue
        elif not now.named and (path in folders or place.scratch(path)):
            found.scratch += path not in folders  # temp space outside the notebook's
        elif not state.plain_read and not now.exists:
            found.scratch += 1  # only opened for update, gone now: made and removed
        elif not state.plain_read and _changed_since(now, started):
            # Opened for update (sqlite opens so even to read) and changed by the run.
            found.outputs.append(path)
            found.warnings.append(f"{path}: opened for update and changed during the run; "
                                  "listed as an output, not an input (add it to "
                                  "data/data.yml by hand if the notebook needs its earlier "
                                  "content)")
        else:
            found.inputs[path] = read
            if write is not None:  # read, then appended to or rewritten by the run
                found.warnings.append(_overwritten(path, read, write))
    return found


def needs_look(paths: Mapping[str, PathState | None], skip: frozenset[str]) -> list[str]:
    """The paths whose state on disk `classify` may ask about."""
    return [path for path, state in paths.items() if state is not None and path not in skip]


def _produced(found: Classified, group: list[str], path: str, disk: Mapping[str, OnDisk],
              place: Place) -> None:
    if place.scratch(path) or not disk.get(path, GONE).named:
        found.scratch += 1  # temp space outside the notebook's, or made and removed
    else:
        group.append(path)


def _changed_since(now: OnDisk, started: float | None) -> bool:
    return started is not None and now.mtime is not None and now.mtime >= started


def _overwritten(path: str, read: PathUse, write: PathUse) -> str:
    """The warning for an input the run read and later wrote (often an audit run in a folder
    an earlier run left dirty): data.yml holds what the next run will not read."""
    def where(use: PathUse) -> str:
        return f"cell {use.cell}" if use.cell is not None else "outside any cell"

    return (f"{path}: read in {where(read)}, then written by the run in {where(write)}; "
            "data.yml records its content after the run, not what was read; if an earlier "
            "run left it there, audit again in a clean copy of the notebook's folder")


def role_lookup(roles: Roles | Mapping[int, str]) -> RoleOf:
    """pid -> role; a tool's reads count as its parent's. `roles` may be a plain pid -> role
    mapping (a record without the process tree)."""
    if isinstance(roles, Mapping):
        plain = roles
        return lambda pid: plain.get(pid, MANAGER)
    tree, parents = roles, roles.parent

    def role_of(pid: int) -> str:
        role, steps = tree.of(pid), 0
        while role == TOOL and pid in parents and steps < 100:
            pid, steps = parents[pid], steps + 1
            role = tree.of(pid)
        return role
    return role_of


def first_read_and_write(state: PathState, role_of: RoleOf
                         ) -> tuple[PathUse | None, PathUse | None]:
    """The first read and the first write of a path that count (`first`)."""
    read = first(state.reads, role_of)
    write = first(state.writes, role_of)
    if write is not None and read is not None and read.t < write.t:
        # Only opened for update before it was truncated (HDF5 probes an existing
        # file O_RDWR, then recreates it): the old content was never read.
        plain = first(state.plain_reads, role_of)
        if plain is None or write.t <= plain.t:
            read = plain
    return read, write


def first(uses: Mapping[int, PathUse], role_of: RoleOf) -> PathUse | None:
    """The earliest use that counts: not the tracer's, not the manager's between cells."""
    best = None
    for use in uses.values():
        role = role_of(use.pid)
        if role == TRACER or (role == MANAGER and use.cell is None):
            continue
        if best is None or use.t < best.t:
            best = use
    return best


def under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")
