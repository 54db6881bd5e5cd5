"""Stop every process a recording started, however the run ended.

The kernel runs in its own session under a tracer, and the notebook may start more
processes (Dask workers, multiprocessing pools, daemons that leave the tree). So processes
are remembered while they run (a watcher thread snapshots the descendants of the roots), and
the kernel's environment carries a token that every descendant inherits, so stragglers that
were reparented to init are still found at the end. Teardown first freezes them: SIGSTOP to
each, parents before children (by start time), so no pool can see its worker die and start
another (a Dask nanny restarts a worker it did not stop; multiprocessing.Pool refills itself),
then SIGKILL. The tracer is spared: it records the kills and exits once its tracees are gone.
Then SIGTERM (and SIGCONT, for tracees left stopped) to whatever is left and to their process
groups, a bounded wait, and SIGKILL for the rest. Killing strace alone would leave its tracees
running, which is why tracees are signalled themselves rather than through the tracer.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from collections.abc import Collection, Iterable

import psutil

log = logging.getLogger("flo.record")

#: Environment variable set in the kernel's environment; its value identifies one recording.
TOKEN_VARIABLE = "FLO_BACKPACK_RECORDING"
#: How long the freeze waits for every process to be stopped before killing them.
FREEZE_WAIT_S = 1.0
_STOPPED = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE,
                      psutil.STATUS_DEAD})
_EXITED = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


class ProcessTree:
    """The processes started for one recording: roots, their descendants, and token holders."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.roots: list[int] = []
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._soon = threading.Event()
        self._watcher: threading.Thread | None = None

    def add_root(self, pid: int) -> None:
        """Watch `pid` and everything it starts."""
        with self._lock:
            if pid not in self.roots:
                self.roots.append(pid)
        self.snapshot()

    def snapshot(self) -> None:
        """Remember the roots and their current descendants (cheap: `descendant_pids`)."""
        with self._lock:
            roots = list(self.roots)
        processes = []
        for pid in [*roots, *descendant_pids(roots)]:
            try:
                processes.append(psutil.Process(pid))
            except psutil.Error:
                continue
        self._remember(processes)

    def start_watching(self, interval: float = 0.25) -> None:
        """Snapshot in the background, so processes that leave the tree are still known."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, args=(interval,),
                                             name="flo-process-watch", daemon=True)
            self._watcher.start()

    def snapshot_soon(self) -> None:
        """Snapshot now, on the watcher's thread when it runs (its next tick comes at once),
        so the caller does not wait for the /proc reads; without a watcher, here."""
        if self._watcher is None:
            self.snapshot()
        else:
            self._soon.set()

    def _watch(self, interval: float) -> None:
        while True:
            self._soon.wait(interval)
            self._soon.clear()
            if self._stop.is_set():
                return
            self.snapshot()

    def _remember(self, processes: Iterable[psutil.Process]) -> None:
        with self._lock:
            for proc in processes:
                try:
                    self.seen.setdefault((proc.pid, proc.create_time()), proc)
                except psutil.Error:
                    continue

    def living(self) -> list[psutil.Process]:
        """Every process of this recording still running (zombies excluded)."""
        self.snapshot()
        self._remember(self._token_holders())
        with self._lock:
            candidates = list(self.seen.values())
        alive = []
        me = os.getpid()
        for proc in candidates:
            try:
                if proc.pid != me and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                continue
        return alive

    def _token_holders(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(TOKEN_VARIABLE) == self.token:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def stop_all(self, grace: float = 3.0, rounds: int = 3,
                 spare: Collection[int] = ()) -> list[psutil.Process]:
        """Freeze and kill everything but `spare` (the tracer), then terminate, then kill what
        is left, the tracer included; returns survivors (normally none)."""
        self._stop.set()
        self._soon.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        frozen = [proc for proc in self.living() if proc.pid not in spare]
        if frozen:
            _freeze(frozen)
            for proc in frozen:
                _send(proc, signal.SIGKILL)
            _wait_gone(frozen, grace)
        survivors: list[psutil.Process] = []
        for _ in range(rounds):  # a dying process may still fork: look again after each round
            procs = self.living()
            if not procs:
                return []
            _signal_all(procs, signal.SIGTERM)
            _signal_all(procs, signal.SIGCONT)
            survivors = _wait_gone(procs, grace)
            if survivors:
                _signal_all(survivors, signal.SIGKILL)
                survivors = _wait_gone(survivors, grace)
        survivors = self.living()
        for proc in survivors:
            log.warning("process %d (%s) could not be stopped", proc.pid, _name(proc))
        return survivors


def descendant_pids(roots: Iterable[int]) -> list[int]:
    """Every living descendant of `roots` (roots excluded), parents before their children.

    Reads /proc/PID/task/TID/children (Linux 3.5+, CONFIG_PROC_CHILDREN) of the tree's own
    processes only: about 0.1 ms for a kernel and its workers, where a parent map reads the
    stat file of every process on the machine (psutil's children(recursive=True): 1.3 ms
    each time on a machine running 80 processes, paid after every cell and every tick of
    the watcher and the sampler). Without those files, psutil's way.
    """
    roots = list(roots)
    if not _PROC_CHILDREN:
        return _descendants_by_ppid(roots)
    found: list[int] = []
    seen = set(roots)
    pending = list(roots)
    while pending:
        pid = pending.pop(0)
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # gone
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as listed:
                    children = listed.read().split()
            except OSError:
                continue  # the thread (or the process) ended meanwhile
            for child in map(int, children):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    pending.append(child)
    return found


def _descendants_by_ppid(roots: list[int]) -> list[int]:
    found: list[int] = []
    for pid in roots:
        try:
            found.extend(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return list(dict.fromkeys(found))


_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait (bounded) until every process has exited; returns those still running. A zombie
    has exited: waiting for it to vanish would wait for its parent (often init, which reaps
    when it likes: 1.4 s a teardown here), so exits are seen through pidfds, which become
    readable at the exit itself; our own children are reaped later by their `Popen`."""
    deadline = time.monotonic() + timeout
    fds: dict[int, psutil.Process] = {}
    try:
        for proc in procs:
            try:
                fds[os.pidfd_open(proc.pid)] = proc
            except ProcessLookupError:  # gone and reaped already
                continue
            except (AttributeError, OSError):  # no pidfds here: look at states instead
                return _poll_gone(procs, deadline)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending = dict(fds)
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                pending.pop(fd, None)
        return [proc for proc in pending.values() if _status(proc) not in _EXITED]
    finally:
        for fd in fds:
            os.close(fd)


def _poll_gone(procs: list[psutil.Process], deadline: float) -> list[psutil.Process]:
    pending = list(procs)
    while pending:
        pending = [proc for proc in pending if _status(proc) not in _EXITED]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return pending


def _freeze(procs: list[psutil.Process]) -> None:
    """SIGSTOP each process, oldest (so parents) first, and wait (bounded) until all are
    stopped: under a tracer the stop takes effect only once the tracer has passed it on."""
    procs = sorted(procs, key=_started)
    for proc in procs:
        _send(proc, signal.SIGSTOP)
    deadline = time.monotonic() + FREEZE_WAIT_S
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [proc for proc in pending if _status(proc) not in _STOPPED]
        if pending:
            time.sleep(0.01)


def _send(proc: psutil.Process, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except psutil.Error:
        pass


def _started(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return 0.0


def _status(proc: psutil.Process) -> str:
    try:
        return proc.status()
    except psutil.Error:
        return psutil.STATUS_DEAD


def _signal_all(procs: list[psutil.Process], signum: int) -> None:
    own_group = os.getpgrp()
    groups = set()
    for proc in procs:
        try:
            groups.add(os.getpgid(proc.pid))
            proc.send_signal(signum)
        except (psutil.Error, OSError):
            continue
    # Process groups catch children forked after the last snapshot; never signal our own.
    for group in groups - {own_group, 0, 1}:
        try:
            os.killpg(group, signum)
        except OSError:
            continue


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "?"
