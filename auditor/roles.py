"""Roles from the process tree: which traced process was the manager, a worker or a tool.

DESIGN.md rule 3. The kernel process (and its threads) is the manager. The Python processes
a pool starts to run tasks (multiprocessing and concurrent.futures spawn children, loky,
Dask workers; forked children that never exec) are workers, recognised by how they are
started (`WORKER_MARKERS`). Any other exec'd program is a tool, a Python one included
(`!python x.py`, a console script like csvstat); a `#!` script counts by its interpreter.
The tracer, the kernel's parent, and anything else outside the kernel's tree are excluded as
"tracer".

Helpers are Python processes a pool starts that run no task: multiprocessing's (and loky's)
resource tracker, the forkserver itself (its forked children are workers), a Dask scheduler.
They are on the manager side and never make a package a worker package. Processes flo-audit
started itself (`--workers`: the Dask workers and scheduler, each traced on its own) are
given as `roots` with their role; their descendants are theirs. A tool is on the side of the
process that ran it (`Roles.side`): a `gzip` a task ran is a worker tool.

A worker started after the last cell's end mark ran no cell's tasks: it is churn of the
run's end (a pool refilling itself while it is stopped), kept in `late` and left out of
`worker_roots`, so it counts neither as a worker that ran tasks nor in compute.yml.

`RoleTracker.watch` observes the event stream as it passes to the resolver, so roles cost
no second pass over a long trace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .events import CellMark, Event, Exec, Exit, Spawn

MANAGER = "manager"
WORKER = "worker"
TOOL = "tool"
TRACER = "tracer"
HELPER = "helper"
ROLES = (MANAGER, WORKER, TOOL)
SIDES = (MANAGER, WORKER)

#: Words in a Python process's argv that make it a pool helper rather than a task runner.
HELPER_MARKERS = ("multiprocessing.resource_tracker", "multiprocessing.semaphore_tracker",
                  "multiprocessing.forkserver", "loky.backend.resource_tracker",
                  "distributed.cli.dask_scheduler")
#: Words in a Python process's argv that make it a pool's task runner: multiprocessing's spawn
#: (ProcessPoolExecutor's too, Dask's nanny-started workers), loky's workers, Dask workers
#: and ipyparallel engines. Any other Python program the notebook runs is a tool.
WORKER_MARKERS = ("--multiprocessing-fork", "multiprocessing.spawn",
                  "loky.backend.popen_loky_posix", "distributed.cli.dask_worker",
                  "dask-worker", "dask worker", "ipyparallel.engine", "ipengine")
PROCESS_KINDS = frozenset({"spawn", "exec", "exit", "cell"})

_PYTHON_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)*)?[a-z]?(-dbg)?$")


def is_python_interpreter(path: str, argv: list[str] | None = None) -> bool:
    """True when `path` (an exec'd file) runs a Python interpreter, directly or via `#!`."""
    if _PYTHON_NAME.match(os.path.basename(path)):
        return True
    interpreter = _shebang(path)
    if interpreter is None:
        return False
    program, _, rest = interpreter.partition(" ")
    if os.path.basename(program) == "env":
        # "#!/usr/bin/env [-S] python3 -u": the first word that is not an option.
        words = [w for w in rest.split() if not w.startswith("-") and "=" not in w]
        program = words[0] if words else ""
    return bool(_PYTHON_NAME.match(os.path.basename(program)))


def _shebang(path: str) -> str | None:
    try:
        with open(path, "rb") as script:
            head = script.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    return head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()


@dataclass
class Roles:
    """The role of every traced process, its parent, and how each one ended."""

    kernel_pid: int | None
    role: dict[int, str] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    threads: set[int] = field(default_factory=set)
    exits: dict[int, int] = field(default_factory=dict)
    binary: dict[int, str] = field(default_factory=dict)
    roots: dict[int, str] = field(default_factory=dict)
    exit_t: dict[int, float] = field(default_factory=dict)
    #: Task-running processes started after the last cell had ended (see the module doc).
    late: set[int] = field(default_factory=set)

    def of(self, pid: int) -> str:
        """Role of `pid`; a pid never seen in a Spawn is taken to be the manager's."""
        return self.role.get(pid, MANAGER)

    def counts(self) -> dict[str, int]:
        """Processes per role (threads are not processes); the tracer is left out."""
        counts = dict.fromkeys(ROLES, 0)
        for pid, role in self.role.items():
            if role != TRACER and pid not in self.threads:
                counts[role] = counts.get(role, 0) + 1
        return counts

    def side(self, pid: int) -> str | None:
        """"manager" or "worker": a tool belongs to the side of the process that ran it,
        a helper to the manager's; None for the tracer."""
        steps = 0
        role = self.of(pid)
        while role == TOOL and pid in self.parent and steps < 10_000:
            pid = self.parent[pid]
            role = self.of(pid)
            steps += 1
        if role == TRACER:
            return None
        return WORKER if role == WORKER else MANAGER

    def from_pool(self, pid: int) -> bool:
        """Whether `pid` is (or descends from) a process flo-audit started (`--workers`)."""
        steps = 0
        while pid not in self.roots and pid in self.parent and steps < 10_000:
            pid, steps = self.parent[pid], steps + 1
        return pid in self.roots

    def processes(self, side: str) -> list[int]:
        """The processes (not threads) on `side`."""
        return sorted(pid for pid in self.role
                      if pid not in self.threads and self.side(pid) == side)

    def worker_roots(self) -> list[int]:
        """Task-running processes whose parent is not one: one per pool worker (those
        started after the last cell left out)."""
        return sorted(pid for pid, role in self.role.items()
                      if role == WORKER and pid not in self.threads and pid not in self.late
                      and self.role.get(self.parent.get(pid, -1)) != WORKER)

    def to_json(self) -> dict:
        return {"kernel_pid": self.kernel_pid, "counts": self.counts(),
                "processes": [{"pid": pid, "role": role, "side": self.side(pid),
                               "parent": self.parent.get(pid),
                               "binary": self.binary.get(pid), "exit": self.exits.get(pid)}
                              for pid, role in sorted(self.role.items())
                              if pid not in self.threads]}


class RoleTracker:
    """Collects Spawn/Exec/Exit events from a stream, then assigns roles."""

    def __init__(self, kernel_pid: int | None, tracer_pid: int | None = None,
                 roots: dict[int, str] | None = None) -> None:
        self.kernel_pid = kernel_pid
        self.tracer_pid = tracer_pid
        #: Processes flo-audit started outside the kernel's tree, with their role.
        self.roots = dict(roots or {})
        self._parent: dict[int, int] = {}
        self._threads: set[int] = set()
        self._last_exec: dict[int, Exec] = {}
        self._exits: dict[int, int] = {}
        self._exit_t: dict[int, float] = {}
        self._seen: set[int] = set()
        self._spawn_t: dict[int, float] = {}
        self._last_mark: CellMark | None = None

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        """Pass `events` through unchanged, noting the process-tree ones."""
        seen, note = self.seen, self.note
        for event in events:
            seen.add(event.pid)
            if event.kind in PROCESS_KINDS:
                note(event)
            yield event

    @property
    def seen(self) -> set[int]:
        """Every pid events came from (callers fusing their own loop add to it)."""
        return self._seen

    def note(self, event: Event) -> None:
        """Record one Spawn, Exec or Exit event."""
        if isinstance(event, Spawn):
            self._spawn(event)
        elif isinstance(event, Exec):
            self._last_exec[event.pid] = event
        elif isinstance(event, Exit):
            self._exits[event.pid] = event.status
            self._exit_t[event.pid] = event.t
        elif isinstance(event, CellMark):
            self._last_mark = event

    def feed(self, events: Iterable[Event]) -> None:
        for _ in self.watch(events):
            pass

    def _spawn(self, event: Spawn) -> None:
        self._parent[event.child] = event.pid
        self._seen.add(event.child)
        self._spawn_t[event.child] = event.t
        if event.thread:
            self._threads.add(event.child)

    def roles(self) -> Roles:
        result = Roles(self.kernel_pid, parent=dict(self._parent), threads=set(self._threads),
                       exits=dict(self._exits), roots=dict(self.roots),
                       exit_t=dict(self._exit_t))
        excluded = self._outside_kernel_tree()
        # Parents first, so a fork can take its parent's role.
        for pid in sorted(self._seen, key=self._depth):
            result.role[pid] = TRACER if pid in excluded else self._role(pid, result)
        for pid, event in self._last_exec.items():
            result.binary[pid] = event.path
        result.late = self._late(result)
        return result

    def _late(self, result: Roles) -> set[int]:
        """Task runners started after the last cell's end mark (none if a cell never ended)."""
        mark = self._last_mark
        if mark is None or mark.phase != "end":
            return set()
        return {pid for pid, role in result.role.items()
                if role == WORKER and pid not in self._threads and pid not in self.roots
                and self._spawn_t.get(pid, 0.0) > mark.t}

    def _outside_kernel_tree(self) -> set[int]:
        """The tracer and the kernel's ancestors: processes that are not the notebook's."""
        excluded = {self.tracer_pid} if self.tracer_pid is not None else set()
        pid = self.kernel_pid
        while pid is not None and pid in self._parent:
            pid = self._parent[pid]
            if pid in excluded:
                break
            excluded.add(pid)
        if self.kernel_pid is not None:
            # Anything whose ancestry is known and does not reach the kernel (e.g. a
            # launcher's other children) is outside the notebook's tree too.
            for pid in list(self._seen):
                if pid != self.kernel_pid and pid in self._parent \
                        and not self._descends_from_kernel(pid):
                    excluded.add(pid)
        excluded.discard(self.kernel_pid)
        return excluded

    def _descends_from_kernel(self, pid: int) -> bool:
        """True for the kernel's descendants and those of the processes in `roots`."""
        steps = 0
        if pid in self.roots:
            return True
        while pid in self._parent and steps < 10_000:
            pid = self._parent[pid]
            if pid == self.kernel_pid or pid in self.roots:
                return True
            steps += 1
        return False

    def _depth(self, pid: int) -> int:
        depth = 0
        while pid in self._parent and depth < 10_000:
            pid = self._parent[pid]
            depth += 1
        return depth

    def _role(self, pid: int, result: Roles) -> str:
        # A thread shares its thread-group leader's role (the kernel's threads are the manager).
        leader = pid
        while leader in self._threads and leader in self._parent:
            leader = self._parent[leader]
        if leader == self.kernel_pid:
            return MANAGER
        if leader in self.roots:
            return self.roots[leader]
        exec_event = self._last_exec.get(leader)
        if exec_event is None:
            # Forked without exec: a copy of a Python process (multiprocessing "fork", a
            # forkserver's children), or a pid the tracer saw without its Spawn (hooks-only
            # runs). A copy of a tool (a shell's subshell) is a tool; a scheduler's, a helper.
            parent = result.role.get(self._parent.get(leader, -1))
            if parent in (TOOL, TRACER) or (parent == HELPER and not self._forkserver(leader)):
                return parent
            if leader in self._parent:
                return WORKER
            return MANAGER if self.kernel_pid is None else WORKER
        if not is_python_interpreter(exec_event.path, exec_event.argv):
            return TOOL
        command = " ".join(exec_event.argv)
        if any(m in command for m in HELPER_MARKERS):
            return HELPER
        # A Python program the notebook ran (`!python x.py`, a console script) is a tool.
        return WORKER if any(m in command for m in WORKER_MARKERS) else TOOL

    def _forkserver(self, pid: int) -> bool:
        parent = self._last_exec.get(self._parent.get(pid, -1))
        return parent is not None and "multiprocessing.forkserver" in " ".join(parent.argv)


def assign_roles(events: Iterable[Event], kernel_pid: int | None,
                 tracer_pid: int | None = None, roots: dict[int, str] | None = None) -> Roles:
    """Roles of all processes in `events` (a convenience for callers holding a list)."""
    tracker = RoleTracker(kernel_pid, tracer_pid, roots)
    tracker.feed(events)
    return tracker.roles()

