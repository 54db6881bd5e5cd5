"""`flo-audit --workers N`: a Dask scheduler and N workers on loopback, each under the tracer.

For notebooks written for a cluster they do not start (a plain `Client()` reads
`DASK_SCHEDULER_ADDRESS`). The scheduler and workers run the kernel's interpreter
(`python -m distributed.cli.dask_scheduler` / `dask_worker`), each traced into its own record
file (`trace-scheduler.*`, `trace-worker-K.*`), so the tracer's `events` merges them with the
kernel's. Their pids go into session.json (`pool`): derive gives the workers the worker role
and the scheduler the manager side. Workers run without a nanny: one traced process per
worker, and a worker that dies is not silently restarted, so its exit status is what the
record shows; `WorkerWatch` ends the cell that waited for it (status worker-died).

The scheduler's port is picked free (bound to port 0, then released); if another process
takes it first, the scheduler fails to bind and is started again on a new one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from ..common.errors import RecordError
from ..common.interpreter import require_module
from ..common.process import launch
from ..common.stale import owned_folder
from .base import Tracer

log = logging.getLogger("flo.record")

ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
HOST = "127.0.0.1"
#: Bounded waits: the scheduler importing distributed under a tracer takes a few seconds.
SCHEDULER_START_S = 120.0
PORT_ATTEMPTS = 5
STOP_GRACE_S = 5.0


@dataclass
class PoolProcess:
    """One process of the pool: the tracer's Popen and the traced process's pid."""

    name: str  # "scheduler" or "worker-K"
    role: str  # "helper" (the scheduler) or "worker"
    popen: subprocess.Popen[bytes]
    stderr: IO[bytes]
    pid: int | None = None
    exit: int | None = None
    during_run: bool = False  # ended before teardown began: it crashed or quit on its own

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "pid": self.pid,
                "tracer_pid": self.popen.pid, "exit": self.exit, "during_run": self.during_run}


@dataclass
class WorkerPool:
    """The scheduler and workers started for one recording; `stop` ends them all."""

    count: int
    python: str
    tracer: Tracer
    record_dir: Path
    cwd: Path
    env: dict[str, str]
    first_port: int | None = None  # tried first (tests); None: a free port
    address: str | None = None
    processes: list[PoolProcess] = field(default_factory=list)
    scratch: str | None = None

    def start(self) -> str:
        """Start the scheduler (waiting until it listens), then the workers; the address."""
        require_module(self.python, "distributed", "--workers (Dask workers)")
        self.scratch = str(owned_folder("flo-workers-"))
        port = self.first_port or free_port()
        for attempt in range(PORT_ATTEMPTS):
            scheduler = self._launch("scheduler", "helper", [
                "-m", "distributed.cli.dask_scheduler", "--host", HOST, "--port", str(port),
                "--no-dashboard"])
            if self._wait_listening(scheduler, port):
                break
            self.processes.remove(scheduler)
            log.debug("scheduler did not start on port %d (attempt %d)", port, attempt + 1)
            port = free_port()
        else:
            raise RecordError(f"the Dask scheduler did not start after {PORT_ATTEMPTS} tries; "
                              f"see {self.record_dir / 'scheduler.stderr'}")
        self.address = f"tcp://{HOST}:{port}"
        for number in range(1, self.count + 1):
            local = os.path.join(self.scratch, f"worker-{number}")
            os.makedirs(local, exist_ok=True)
            self._launch(f"worker-{number}", "worker", [
                "-m", "distributed.cli.dask_worker", self.address, "--no-nanny",
                "--nthreads", "1", "--name", f"worker-{number}", "--host", HOST,
                "--no-dashboard", "--local-directory", local])
        return self.address

    def pids(self) -> list[int]:
        """The traced processes (not their tracers), for the sampler and session.json."""
        return [p.pid for p in self.processes if p.pid is not None]

    def _launch(self, name: str, role: str, args: list[str]) -> PoolProcess:
        argv = [self.python, *args]
        wrapped = self.tracer.wrap(list(argv), self.record_dir, stem=f"trace-{name}")
        stderr = open(self.record_dir / f"{name}.stderr", "wb")  # noqa: SIM115
        log.debug("starting %s", name)
        popen = launch(wrapped, cwd=self.cwd, env=self.env, stdout=stderr, stderr=stderr,
                       die_with=self.tracer.death_signal(f"trace-{name}"),
                       what=f"starting the --workers {name}")
        member = PoolProcess(name, role, popen, stderr)
        member.pid = popen.pid if wrapped == argv else _traced_child(popen, argv)
        self.processes.append(member)
        return member

    def _wait_listening(self, scheduler: PoolProcess, port: int) -> bool:
        deadline = time.monotonic() + SCHEDULER_START_S
        while time.monotonic() < deadline:
            if scheduler.popen.poll() is not None:
                scheduler.stderr.close()
                return False
            if _listens(scheduler.pid or scheduler.popen.pid, port):
                return True
            time.sleep(0.1)  # polling for the listening socket, bounded by the deadline
        raise RecordError(f"the Dask scheduler did not listen on {HOST}:{port} within "
                          f"{SCHEDULER_START_S:g} s; see {self.record_dir / 'scheduler.stderr'}")

    def dead_worker(self) -> PoolProcess | None:
        """A worker that has failed on its own (noted as during the run), else None; one that
        exited 0 was asked to close (`client.shutdown()`, a retirement) and is only noted."""
        for member in self.processes:
            if member.role == "worker" and member.exit is None and member.popen.poll() is not None:
                member.exit, member.during_run = member.popen.returncode, True
                if member.exit != 0:
                    return member
        return None

    def stop(self) -> None:
        """Note who already ended (crashed), then end workers and scheduler; safe to repeat."""
        for member in self.processes:
            if member.exit is None and member.popen.poll() is not None:
                member.exit, member.during_run = member.popen.returncode, True
        # The traced process itself gets SIGTERM, so its tracer records how it ended.
        for member in sorted(self.processes, key=lambda p: p.role == "helper"):
            if member.exit is None:
                _terminate(member)
        for member in self.processes:
            member.stderr.close()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "workers": self.count,
                "processes": [p.to_json() for p in self.processes]}


class WorkerWatch:
    """Watches the pool's workers while cells run. No nanny restarts a worker that dies, so a
    cell waiting for its task would wait until --timeout: on the first death the kernel is
    interrupted (SIGINT, as Jupyter's interrupt does) and `dead` names the worker."""

    def __init__(self, pool: WorkerPool, kernel_pid: int, interval: float = 0.25) -> None:
        self.pool, self.kernel_pid, self.interval = pool, kernel_pid, interval
        self.dead: PoolProcess | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="flo-worker-watch",
                                        daemon=True)
        self._thread.start()

    def message(self) -> str:
        dead = self.dead
        if dead is None:
            return ""
        return (f"{dead.name} (pid {dead.pid}) exited with status {dead.exit} while the cell "
                "ran; --workers runs no nanny to restart it, so the cell was interrupted")

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            dead = self.pool.dead_worker()
            if dead is not None:
                self.dead = dead
                try:
                    os.kill(self.kernel_pid, signal.SIGINT)
                except OSError:
                    pass
                return


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _listens(pid: int, port: int) -> bool:
    """Whether `pid` itself listens on `port` (another process holding it does not count)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in connections)


def _traced_child(popen: subprocess.Popen[bytes], argv: list[str],
                  wait: float = 30.0) -> int | None:
    """The process running `argv` under the tracer, waited for a bounded time.

    Not simply the tracer's first child: strace forks a probe child before its tracee.
    """
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            children = psutil.Process(popen.pid).children(recursive=True)
        except psutil.Error:
            return None
        for child in children:
            try:
                if child.cmdline()[1:] == argv[1:]:
                    return child.pid
            except psutil.Error:
                continue
        if popen.poll() is not None:
            return None
        time.sleep(0.02)  # the tracee execs right after the tracer starts; bounded by `wait`
    return None


def _terminate(member: PoolProcess) -> None:
    target = member.pid or member.popen.pid
    try:
        os.kill(target, signal.SIGTERM)
    except OSError:
        pass
    try:
        member.exit = member.popen.wait(timeout=STOP_GRACE_S)
        return
    except subprocess.TimeoutExpired:
        pass
    for pid in (target, member.popen.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        member.exit = member.popen.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %s) could not be stopped", member.name, target)


def kernel_python(kernel_name: str, python: str | None) -> str:
    """The interpreter the kernel runs: `--python`, or the kernelspec's argv[0]."""
    if python:
        return python
    from jupyter_client.kernelspec import KernelSpecManager

    argv0 = KernelSpecManager().get_kernel_spec(kernel_name).argv[0]
    if os.path.isabs(argv0):
        return argv0
    # As jupyter_client launches it: a bare "python" means the interpreter running us.
    major, minor = sys.version_info[:2]
    if argv0 in ("python", f"python{major}", f"python{major}.{minor}"):
        return sys.executable
    found = shutil.which(argv0)
    if found is None:
        raise RecordError(f"kernel {kernel_name!r} runs {argv0!r}, which is not on PATH; "
                          "pass --python")
    return found
