"""The resolve stage: every path the run touched -> the distribution that owns it, or a list.

`resolve` turns the event stream into what the emitters need: which distributions were *used*
(a non-metadata file of theirs opened, mapped, executed or imported; DESIGN.md rule 4), in which
cells, which local code files the notebook's own folder contributed, and the paths nobody owns,
kept explicitly: inside the environment (`unknown`) or outside it (`outside`: system files and
data candidates). Paths are looked up once each, however many events name them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..events import MARK_PREFIX, Access, Event, Exec, Import
from .base import Distribution, Environment, Ownership
from .index import EnvIndex, index_environment, source_of_pyc
from .system import dpkg_owners

__all__ = [
    "Distribution", "EnvIndex", "Environment", "Ownership", "Resolution", "DistUse",
    "dpkg_owners", "index_environment", "resolve",
]

_PSEUDO = ("/proc/", "/sys/", "/dev/", MARK_PREFIX)
_READ_MODES = ("r", "rw", "x", "i")  # "x": executed, "i": imported by a cell


@dataclass
class DistUse:
    """One distribution as the run used it."""

    dist: Distribution
    cells: set[int | None] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    first_path: str = ""
    #: (cell, pid) pairs: which process used it in which cell (a cell's manager vs workers).
    at: set[tuple[int | None, int]] = field(default_factory=set)


@dataclass
class Resolution:
    """What the run used, by owner, and the paths nobody owns."""

    used: dict[str, DistUse]
    stdlib_cells: set[int | None]
    workflow: set[str]
    unknown: list[str]
    outside: list[str]


# Verdicts of one (path, real, mode): what the events naming it count as.
_SKIP, _USE, _STDLIB, _WORKFLOW, _UNKNOWN, _OUTSIDE = range(6)


def _is_code(path: str) -> bool:
    name = path.rpartition("/")[2]
    return name.endswith((".py", ".pyw")) or (
        name.endswith(".so") and (".cpython-" in name or ".abi3." in name))


class _Classifier:
    def __init__(self, index: EnvIndex, notebook_dir: str, ignore: Iterable[str]) -> None:
        self.index = index
        self.notebook_dir = os.path.normpath(notebook_dir).rstrip("/") + "/"
        ignore = [os.path.normpath(p) for p in ignore]
        self.ignore_exact = frozenset(("/proc", "/sys", "/dev", *ignore))
        self.ignore_under = (*_PSEUDO, *(p.rstrip("/") + "/" for p in ignore))

    def _ignored(self, path: str | None) -> bool:
        if not path:
            return False
        return path in self.ignore_exact or path.startswith(self.ignore_under)

    def verdict(self, path: str, real: str | None, mode: str) -> tuple[int, object]:
        if self._ignored(path) or (real != path and self._ignored(real)):
            return _SKIP, None
        if mode == "d":
            return _SKIP, None  # listing a directory is not using what is in it
        if "/_distutils_hack/" in path:
            # setuptools' distutils-precedence.pth loads this into every interpreter of the
            # environment at start-up (each pool worker too): machinery, not a use.
            return _SKIP, None
        found = self.index.owner(path, real)
        if found is not None:
            return self._owned(found, path, mode)
        if mode == "i" and os.path.isdir(path):
            return _SKIP, None  # a namespace package's shared directory: nobody's
        reading = mode in _READ_MODES
        if self.index.in_environment(path) or (real and self.index.in_environment(real)):
            if mode == "w" and "/__pycache__/" in path:
                return _SKIP, None
            return _UNKNOWN, path
        if path.startswith(self.notebook_dir):
            source = source_of_pyc(path)
            if reading and (source or _is_code(path)):
                return _WORKFLOW, source or path
            if "/__pycache__/" in path:
                return _SKIP, None
        return (_OUTSIDE, path) if reading else (_SKIP, None)

    def _owned(self, found: Ownership, path: str, mode: str) -> tuple[int, object]:
        if found.excluded or found.metadata or mode == "w":
            return _SKIP, None
        if found.dist is not None:
            if (found.editable and path.startswith(self.notebook_dir)
                    and not _is_code(path) and source_of_pyc(path) is None):
                # Data in the notebook's folder that an editable project happens to contain.
                return _OUTSIDE, path
            return _USE, found.dist
        return (_STDLIB, None) if found.stdlib else (_SKIP, None)


def resolve(events: Iterable[Event], index: EnvIndex, notebook_dir: str,
            ignore: Iterable[str] = (), pids: set[int] | None = None) -> Resolution:
    """Resolve Access, Exec and Import events against `index` (other events are ignored).

    `ignore`: path prefixes never reported (flo-backpack's own files); `pids`: only these
    processes. Writes are not use; directory opens are not use; metadata reads are not use.
    """
    classify = _Classifier(index, notebook_dir, ignore)
    verdicts: dict[tuple[str, str | None, str], tuple[int, object]] = {}
    used: dict[str, DistUse] = {}
    stdlib_cells: set[int | None] = set()
    workflow: set[str] = set()
    unknown: set[str] = set()
    outside: set[str] = set()
    for event in events:
        if isinstance(event, Access):
            key = (event.path, event.real, event.mode)
        elif isinstance(event, Exec):
            key = (event.path, None, "x")
        elif isinstance(event, Import):
            if not event.path:
                continue
            key = (event.path, None, "i")
        else:
            continue
        if pids is not None and event.pid not in pids:
            continue
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = verdicts[key] = classify.verdict(*key)
        what, value = verdict
        if what == _USE:
            dist: Distribution = value  # type: ignore[assignment]
            use = used.get(dist.key)
            if use is None:
                use = used[dist.key] = DistUse(dist, first_path=key[0])
            use.cells.add(event.cell)
            use.pids.add(event.pid)
            use.at.add((event.cell, event.pid))
        elif what == _STDLIB:
            stdlib_cells.add(event.cell)
        elif what == _WORKFLOW:
            workflow.add(value)  # type: ignore[arg-type]
        elif what == _UNKNOWN:
            unknown.add(value)  # type: ignore[arg-type]
        elif what == _OUTSIDE:
            outside.add(value)  # type: ignore[arg-type]
    return Resolution(used, stdlib_cells, workflow, sorted(unknown), sorted(outside))
