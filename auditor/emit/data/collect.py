"""Draft data/data.yml from what the run read (DESIGN.md rule 8).

An input is a file the manager or a worker read that no environment or system package owns,
that is not pseudo-filesystem, cache or tool configuration, not the workflow's own code, and
that the run did not write before reading it. Written files are outputs; written-then-read
are intermediates. Secrets are flagged, never listed, copied or hashed.

`DataCollector.note` watches the event stream on its way to the resolver (one pass over the
trace); `DataCollector.draft` then runs the stages: one look at the disk (inputs.look), the
pure classification (classify.py), the inputs sized, hashed and named (inputs.hash_inputs),
the URLs drafted (urls.py). The entries and the draft are defined in draft.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ...backpack.data import MAX_CLIMB, DataEntry, climb
from ...events import Accept, Access, Connect, Event
from .classify import PathState, Place, classify, first, needs_look, role_lookup
from .draft import DataDraft, PathUse
from .hashing import Progress
from .inputs import hash_inputs, look
from .rules import DataRules, Owned, environment_owner, normalize_url
from .urls import UrlOutcomes, draft_remote

if TYPE_CHECKING:
    from ...roles import Roles

__all__ = ["MAX_CLIMB", "DataCollector", "DataDraft", "DataEntry", "DataRules", "climb",
           "draft_data", "environment_owner"]


class DataCollector:
    """Collects the run's file, directory and network use as events stream past."""

    def __init__(self, rules: DataRules, owned: Owned, notebook_dir: str, cwd: str,
                 responses: Iterable[Mapping[str, Any]] | None = None) -> None:
        """`responses`: the kernel side's `response` records; None if it logged none."""
        self.rules, self.owned = rules, owned
        self.outcomes = UrlOutcomes(responses)
        self.notebook_dir = os.path.normpath(notebook_dir)
        self.cwd = os.path.normpath(cwd)
        self.cwd_slash = self.cwd.rstrip("/") + "/"
        self.place = Place(rules, self.notebook_dir, self.cwd)
        self.paths: dict[str, PathState | None] = {}
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
            state = self.paths[path] = self._state_for(path, event.path, event.real)
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
        given, path = event.given, event.path
        if not given:
            return path
        if (path.endswith(given) and path[:-len(given)] == self.cwd_slash
                and "/." not in f"/{given}" and "//" not in given and given[-1] != "/"):
            return given  # cwd + "/" + given with nothing to normalise: most relative names
        if os.path.normpath(os.path.join(self.cwd, given)) == path:
            return given
        return path

    def _state_for(self, path: str, named: str, real: str | None) -> PathState | None:
        """A new path's state; None when it is no data (system, environment, tool state)."""
        rules, other = self.rules, named != path  # most paths are named as they are
        if rules.is_system(path) or (other and rules.is_system(named)) or self.owned(named, real):
            return None
        if rules.is_secret(path) or (other and rules.is_secret(named)):
            return PathState(secret=True)
        if rules.is_tool_state(path) or (other and rules.is_tool_state(named)):
            return None
        return PathState(secret=False)

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
        """Look at the disk once, classify what was seen (pure), then size, hash and name the
        inputs and draft the URLs.

        `roles`: an `auditor.roles.Roles`, or a mapping pid -> role for tests. Manager use
        outside cells is kernel machinery and does not count; a tool counts as the role of
        the process that ran it (`gzip -d input.gz` reads an input). `started`: when the run
        began (files opened for update and modified since then are outputs).
        """
        role_of = role_lookup(roles)
        skip = frozenset(os.path.normpath(p) for p in workflow)
        disk = look(needs_look(self.paths, skip))
        found = classify(self.paths, self.listed, role_of, disk, self.place, skip=skip,
                         started=started)
        draft = DataDraft(outputs=found.outputs, intermediates=found.intermediates,
                          secrets=found.secrets, scratch=found.scratch,
                          warnings=list(found.warnings))
        names: set[str] = set()
        hash_inputs(draft, found, self.listed, role_of, self.place, names, progress)
        firsts = {url: first(uses, role_of) for url, uses in self.urls.items()}
        draft_remote(draft, firsts, self.connects, self.outcomes, role_of, names, progress,
                     checksum_remote, lambda use, base: found.saved_copy(use, base, self.place),
                     served=self.served)
        for group in (draft.outputs, draft.intermediates, draft.secrets, draft.remote,
                      draft.unread_urls):
            group.sort()
        return draft


_UNSEEN: Any = object()


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
