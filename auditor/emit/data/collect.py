"""Draft data/data.yml from what the run read (DESIGN.md rule 8).

An input is a file the manager or a worker read that no environment or system package owns,
that is not pseudo-filesystem, cache or tool configuration, not the workflow's own code, and
that the run did not write before reading it. Written files are outputs; written-then-read
are intermediates. Secrets are flagged, never listed, copied or hashed.

`DataCollector.note` watches the event stream on its way to the resolver (one pass over the
trace); `DataCollector.draft` then classifies, hashes and names the inputs. The entries and
the draft are defined in draft.py; the URLs are drafted in urls.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ...backpack.data import MAX_CLIMB, DataEntry, beside, climb
from ...events import Accept, Access, Connect, Event
from .draft import MANAGER, TOOL, TRACER, DataDraft, PathUse, entry_name
from .hashing import Progress, sha256_file, sha256_folder
from .rules import CODE_SUFFIXES, DataRules, Owned, environment_owner, normalize_url
from .stores import store_as_named, stores_of
from .urls import UrlOutcomes, draft_remote

if TYPE_CHECKING:
    from ...roles import Roles

__all__ = ["MAX_CLIMB", "DataCollector", "DataDraft", "DataEntry", "DataRules", "climb",
           "draft_data", "environment_owner"]

ARCHIVE_SUFFIXES = {".tar.gz": "untar", ".tgz": "untar", ".tar.bz2": "untar",
                    ".tar.xz": "untar", ".tar": "untar", ".zip": "unzip"}

class _PathState:
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


class DataCollector:
    """Collects the run's file, directory and network use as events stream past."""

    def __init__(self, rules: DataRules, owned: Owned, notebook_dir: str, cwd: str,
                 responses: Iterable[Mapping[str, Any]] | None = None) -> None:
        """`responses`: the kernel side's `response` records; None if it logged none."""
        self.rules, self.owned = rules, owned
        self.outcomes = UrlOutcomes(responses)
        self.notebook_dir = os.path.normpath(notebook_dir)
        self.cwd = os.path.normpath(cwd)
        self.paths: dict[str, _PathState | None] = {}
        self.listed: dict[str, dict[int, PathUse] | None] = {}  # None: not a data folder
        self.urls: dict[str, dict[int, PathUse]] = {}
        self.connects: dict[str, str | None] = {}  # "ip:port" -> host name looked up
        self.served: set[tuple[str, str]] = set()  # (ip, port) a process of the run accepted on
        self.url_cells: dict[str, set[int]] = {}  # normalized URL -> the cells that asked

    def cell_uses(self) -> dict[str, tuple[set[int], set[int]]]:
        """Each data path (not system, environment or tool state) -> (cells that read it,
        cells that wrote it): the per-cell data facts of audit/cells.yml."""
        return {path: (state.read_in, state.written_in) for path, state in self.paths.items()
                if state is not None and not state.secret
                and (state.read_in or state.written_in)}

    def note(self, event: Event) -> None:
        """Watch one event (any kind; only Access, Connect and Accept matter)."""
        if isinstance(event, Connect):
            self._connect(event)
            return
        if isinstance(event, Accept):
            ip, _, port = event.address.rpartition(":")
            self.served.add((ip.strip("[]"), port))
            return
        if not isinstance(event, Access):
            return
        path = event.real or event.path
        if event.mode == "d":
            self._listing(event, path)
            return
        state = self.paths.get(path, _UNSEEN)
        if state is _UNSEEN:
            state = self.paths[path] = self._classify(path, event.path, event.real)
        if state is None:
            return
        use = PathUse(event.t, event.pid, event.cell, self._as_named(event))
        if event.mode == "w":
            state.writes.setdefault(event.pid, use)
            if event.cell is not None:
                state.written_in.add(event.cell)
        else:
            state.reads.setdefault(event.pid, use)
            if event.cell is not None:
                state.read_in.add(event.cell)
            if event.mode == "r":
                state.plain_read = True
                state.plain_reads.setdefault(event.pid, use)

    def _as_named(self, event: Access) -> str:
        """The path as the code named it when that was relative to the notebook's folder (the
        kernel's working directory), so data.yml can keep '../data/x.csv'; else absolute."""
        given = event.given
        if given and os.path.normpath(os.path.join(self.cwd, given)) == event.path:
            return given
        return event.path

    def _classify(self, path: str, named: str, real: str | None) -> _PathState | None:
        rules = self.rules
        if rules.is_system(path) or rules.is_system(named) or self.owned(named, real):
            return None
        if rules.is_secret(path) or rules.is_secret(named):
            return _PathState(secret=True)
        if rules.is_tool_state(path) or rules.is_tool_state(named):
            return None
        return _PathState(secret=False)

    def _listing(self, event: Access, path: str) -> None:
        uses = self.listed.get(path, _UNSEEN)
        if uses is _UNSEEN:
            data = not (self.rules.never_data(path + "/") or self.owned(event.path, event.real))
            uses = self.listed[path] = {} if data else None
        if uses is not None:
            uses.setdefault(event.pid,
                            PathUse(event.t, event.pid, event.cell, self._as_named(event)))

    def _connect(self, event: Connect) -> None:
        if event.datagram:
            return  # a UDP connect sends nothing (a local-IP probe): no remote input
        if event.url:
            url = normalize_url(event.url)
            if url:
                self.urls.setdefault(url, {}).setdefault(
                    event.pid, PathUse(event.t, event.pid, event.cell, event.url))
                if event.cell is not None:
                    self.url_cells.setdefault(url, set()).add(event.cell)
        elif event.host or event.address not in self.connects:
            self.connects[event.address] = event.host or self.connects.get(event.address)

    # -- the draft ------------------------------------------------------------------------

    def draft(self, roles: Roles | Mapping[int, str], *, workflow: Iterable[str] = (),
              started: float | None = None, progress: Progress | None = None,
              checksum_remote: bool = False) -> DataDraft:
        """Classify what was seen, then hash and name the inputs.

        `roles`: an `auditor.roles.Roles`, or a mapping pid -> role for tests. Manager use
        outside cells is kernel machinery and does not count; a tool counts as the role of
        the process that ran it (`gzip -d input.gz` reads an input). `started`: when the run
        began (files opened for update and modified since then are outputs).
        """
        role_of = _role_lookup(roles)
        draft = DataDraft()
        skip = frozenset(os.path.normpath(p) for p in workflow)
        candidates: dict[str, PathUse] = {}
        written_after: list[tuple[float, str]] = []  # intermediates: (first write, path)
        # Files the run wrote: (write, path, read).
        saved: list[tuple[PathUse, str, PathUse | None]] = []
        # Folders the run used (parents of paths it opened), for the gone ones: a folder
        # opened without O_DIRECTORY (shutil.rmtree does) and removed since is no input.
        folders = {os.path.dirname(p) for p in self.paths} | set(self.listed)
        for path, state in sorted(self.paths.items()):
            if state is None or path in skip:
                continue
            read, write = _first_read_and_write(state, role_of)
            if write is not None and (read is None or write.t <= read.t):
                saved.append((write, path, read))
            if read is None:
                if write is not None:
                    self._produced(draft.outputs, draft, path)
                continue
            if write is not None and write.t <= read.t:
                self._produced(draft.intermediates, draft, path)
                written_after.append((write.t, path))
                continue
            if state.secret:
                draft.secrets.append(path)
            elif os.path.isdir(path) or self._own_code(path):
                continue
            elif not os.path.lexists(path) and (path in folders or self._scratch(path)):
                draft.scratch += path not in folders  # temp space outside the notebook's
            elif not state.plain_read and not os.path.exists(path):
                draft.scratch += 1  # only opened for update, gone now: made and removed
            elif not state.plain_read and _modified_since(path, started):
                # Opened for update (sqlite opens so even to read) and changed by the run.
                draft.outputs.append(path)
                draft.warnings.append(f"{path}: opened for update and changed during the "
                                      "run; listed as an output, not an input (add it to "
                                      "data/data.yml by hand if the notebook needs its "
                                      "earlier content)")
            else:
                candidates[path] = read
                if write is not None:  # read, then appended to or rewritten by the run
                    draft.warnings.append(_overwritten(path, read, write))
        names: set[str] = set()
        self._stores(draft, candidates, role_of, names, progress)
        self._folders(draft, candidates, role_of, names, progress)
        self._hashed_inputs(draft, candidates, role_of, names, written_after, progress)
        firsts = {url: _first(uses, role_of) for url, uses in self.urls.items()}
        draft_remote(draft, firsts, self.connects, self.outcomes, role_of, names, progress,
                     checksum_remote, lambda use, base: self._saved_copy(use, base, saved,
                                                                         written_after),
                     served=self.served)
        for group in (draft.outputs, draft.intermediates, draft.secrets, draft.remote,
                      draft.unread_urls):
            group.sort()
        return draft

    def _hashed_inputs(self, draft: DataDraft, candidates: dict[str, PathUse],
                       role_of: Callable[[int], str], names: set[str],
                       written_after: list[tuple[float, str]],
                       progress: Progress | None) -> None:
        """The input files left after stores and folders: named, sized and hashed; an archive
        the run unpacked (something written after it was read) gets its post_fetch step."""
        for path, read in sorted(candidates.items()):
            entry = self._entry(path, read, role_of, names)
            entry.checksum = sha256_file(path, progress)
            entry.expected_size = _size(path) if entry.checksum else None
            if entry.checksum is None:
                draft.warnings.append(f"{path}: read by the run but gone before it could be "
                                      "hashed; listed without size or checksum")
            suffix = next((s for s in ARCHIVE_SUFFIXES if path.endswith(s)), None)
            if suffix and any(t >= read.t for t, _ in written_after):
                entry.post_fetch = {"operation": ARCHIVE_SUFFIXES[suffix]}
            draft.inputs.append(entry)

    def _saved_copy(self, use: PathUse, base: str, saved: list[tuple[PathUse, str, PathUse | None]],
                    written_after: list[tuple[float, str]]) -> tuple[str, str | None] | None:
        """Where the notebook saved what it downloaded (urlretrieve(url, 'data/x.tar.gz')):
        the first file named like the URL that the same process wrote after asking for it,
        under the notebook's folder; and how to unpack it when the run read what it extracted
        next to it. flo-run then puts the download where a notebook that skips downloading
        what it already has finds it."""
        found = [(write, path, read) for write, path, read in saved
                 if os.path.basename(path) == base and write.pid == use.pid
                 and write.t >= use.t and (_under(path, self.cwd) or self._beside(path))]
        if not found:
            return None
        _, path, read = min(found, key=lambda item: item[0].t)
        suffix = next((s for s in ARCHIVE_SUFFIXES if path.endswith(s)), None)
        unpacked = suffix is not None and read is not None and any(
            t >= read.t and _under(p, os.path.dirname(path)) for t, p in written_after)
        return (os.path.relpath(path, self.cwd),
                ARCHIVE_SUFFIXES[suffix] if unpacked and suffix is not None else None)

    def _produced(self, group: list[str], draft: DataDraft, path: str) -> None:
        if self._scratch(path) or not os.path.lexists(path):
            draft.scratch += 1  # temp space outside the notebook's, or made and removed
        else:
            group.append(path)

    def _scratch(self, path: str) -> bool:
        """Temporary space that is not the notebook's project (a project may live in /tmp)."""
        return self.rules.is_temp(path) and not (_under(path, self.notebook_dir)
                                                 or self._beside(path))

    def _own_code(self, path: str) -> bool:
        return path.endswith(CODE_SUFFIXES) and _under(path, self.notebook_dir)

    def _stores(self, draft: DataDraft, candidates: dict[str, PathUse], role_of: Callable,
                names: set[str], progress: Progress | None) -> None:
        """Files read inside a chunked store (zarr) become one entry for the whole store."""
        for root, members in sorted(stores_of(candidates, self.cwd).items()):
            digest = sha256_folder(root, progress)
            if digest is None:
                draft.warnings.append(f"{root}: changed while it was hashed; its files are "
                                      "listed one by one")
                continue
            first_path = min(members, key=lambda m: candidates[m].t)
            first = candidates[first_path]
            named = store_as_named(root, first_path, first.used_as)
            entry = self._entry(root, PathUse(first.t, first.pid, first.cell, named), role_of,
                                names, is_dir=True)
            entry.checksum, entry.files, entry.expected_size = digest
            for member in members:
                del candidates[member]
            draft.inputs.append(entry)

    def _folders(self, draft: DataDraft, candidates: dict[str, PathUse], role_of: Callable,
                 names: set[str], progress: Progress | None) -> None:
        """A listed folder whose every file the run read becomes one entry."""
        taken: list[str] = []
        for folder, uses in sorted(self.listed.items(), key=lambda kv: len(kv[0])):
            listing = _first(uses, role_of) if uses else None
            if listing is None or any(_under(folder, t) for t in taken):
                continue
            members = _all_read(folder, candidates)
            if not members:
                continue
            digest = sha256_folder(folder, progress)
            if digest is None:
                draft.warnings.append(f"{folder}: changed while it was hashed; its files are "
                                      "listed one by one")
                continue
            first = min((candidates[m] for m in members), key=lambda u: u.t)
            entry = self._entry(folder, PathUse(first.t, first.pid, first.cell, listing.used_as),
                                role_of, names, is_dir=True)
            entry.checksum, entry.files, entry.expected_size = digest
            for member in members:
                del candidates[member]
            taken.append(folder)
            draft.inputs.append(entry)

    def _entry(self, path: str, use: PathUse, role_of: Callable, names: set[str],
               is_dir: bool = False) -> DataEntry:
        used = os.path.normpath(os.path.join(self.cwd, use.used_as))
        relative = os.path.relpath(used, self.cwd)
        if _under(used, self.cwd) or (not os.path.isabs(use.used_as)
                                      and climb(relative) <= MAX_CLIMB):
            target = relative  # as the notebook names it, '../shared.csv' included
        elif self._beside(used):
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

    def _beside(self, path: str) -> bool:
        return beside(path, self.cwd)


_UNSEEN: Any = object()



def _role_lookup(roles: Roles | Mapping[int, str]) -> Callable[[int], str]:
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


def _first_read_and_write(state: _PathState, role_of: Callable[[int], str]
                          ) -> tuple[PathUse | None, PathUse | None]:
    """The first read and the first write of a path that count (`_first`)."""
    read = _first(state.reads, role_of)
    write = _first(state.writes, role_of)
    if write is not None and read is not None and read.t < write.t:
        # Only opened for update before it was truncated (HDF5 probes an existing
        # file O_RDWR, then recreates it): the old content was never read.
        plain = _first(state.plain_reads, role_of)
        if plain is None or write.t <= plain.t:
            read = plain
    return read, write


def _first(uses: Mapping[int, PathUse], role_of: Callable[[int], str]) -> PathUse | None:
    """The earliest use that counts: not the tracer's, not the manager's between cells."""
    best = None
    for use in uses.values():
        role = role_of(use.pid)
        if role == TRACER or (role == MANAGER and use.cell is None):
            continue
        if best is None or use.t < best.t:
            best = use
    return best


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


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


def _overwritten(path: str, read: PathUse, write: PathUse) -> str:
    """The warning for an input the run read and later wrote (often an audit run in a folder
    an earlier run left dirty): data.yml holds what the next run will not read."""
    def where(use: PathUse) -> str:
        return f"cell {use.cell}" if use.cell is not None else "outside any cell"

    return (f"{path}: read in {where(read)}, then written by the run in {where(write)}; "
            "data.yml records its content after the run, not what was read; if an earlier "
            "run left it there, audit again in a clean copy of the notebook's folder")


def _modified_since(path: str, started: float | None) -> bool:
    try:
        return started is not None and os.stat(path).st_mtime >= started
    except OSError:
        return False


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def draft_data(events: Iterable[Event], roles: Roles | Mapping[int, str], *, owned: Owned,
               notebook_dir: str, cwd: str, rules: DataRules, workflow: Iterable[str] = (),
               started: float | None = None, progress: Progress | None = None,
               checksum_remote: bool = False,
               responses: Iterable[Mapping[str, Any]] | None = None) -> DataDraft:
    """Collect from `events` and draft in one call (for callers holding a list of events)."""
    collector = DataCollector(rules, owned, notebook_dir, cwd, responses)
    for event in events:
        collector.note(event)
    return collector.draft(roles, workflow=workflow, started=started, progress=progress,
                           checksum_remote=checksum_remote)
