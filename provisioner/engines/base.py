"""The one interface engines share: `Engine.start(EngineSpec) -> Cluster`, found by name.

An engine gives the notebook's kernel (the manager) a Dask scheduler to connect to, with workers
running in the worker environment. The base classes do the bookkeeping every engine needs: the
version check between manager and worker environments, free loopback ports, log files in the
run folder, long-running processes in their own sessions, and teardown through the process tree
of `auditor.common.tree` (every process carries the run's token, so stragglers are found).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil

from auditor.common.errors import FloError
from auditor.common.interpreter import activated
from auditor.common.process import launch
from auditor.common.tree import TOKEN_VARIABLE, ProcessTree

from ..site import SiteProfile

#: Distributions whose versions must agree between the manager and the workers: tasks and
#: results travel pickled (cloudpickle) between the client (dask, distributed) and the workers.
MUST_MATCH = ("dask", "distributed", "cloudpickle")

#: Variables put into the kernel's environment. `Client()` with no argument reads
#: DASK_SCHEDULER_ADDRESS (dask config `scheduler-address`); DASK_SCHEDULER_FILE is for code that
#: wants `Client(scheduler_file=os.environ["DASK_SCHEDULER_FILE"])` and for tools.
ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
FILE_VARIABLE = "DASK_SCHEDULER_FILE"


class EngineError(FloError):
    """The engine could not start (or be checked); the message names the step and the cause."""


class VersionMismatch(EngineError):
    """Manager and worker environments disagree on a package that must match."""


@dataclass
class EngineSpec:
    """What to start: workers from `worker_python`'s environment, sized from compute.yml."""

    run_dir: Path
    worker_python: Path
    manager_python: Path | None = None  # for the version check; None skips it
    workers: int = 1  # started now (min-workers, or --workers)
    max_workers: int = 1  # adaptive upper bound
    threads: int = 1  # per worker (compute.yml cores)
    memory_mb: int = 0  # per worker (compute.yml memory); 0 = no limit
    disk_mb: int = 0  # per worker (compute.yml disk), for batch engines; 0 = not asked
    host: str = "127.0.0.1"
    port: int = 0  # the scheduler's port; 0 = one the OS picks
    start_timeout: float = 120.0
    token: str = ""  # marks every process started, for teardown
    env: Mapping[str, str] = field(default_factory=dict)  # extra variables for every process
    workdir: Path | None = None  # where the notebook runs (and workers start): run_dir if None
    site: SiteProfile = field(default_factory=SiteProfile)  # batch engines: queue, walltime...


def env_prefix(python: Path) -> Path:
    """The environment folder of `ENV/bin/python` (not resolved: venv pythons are symlinks)."""
    return Path(python).absolute().parent.parent


def installed_versions(prefix: Path, names: Sequence[str]) -> dict[str, str | None]:
    """Versions of `names` installed in environment `prefix`, read from its dist-info folders
    (no interpreter start); None for a name that is not installed."""
    wanted = {_canonical(n): n for n in names}
    found: dict[str, str | None] = {n: None for n in names}
    for site in sorted(prefix.glob("lib/python*/site-packages")):
        for info in site.glob("*.dist-info"):
            name, _, version = info.name[: -len(".dist-info")].partition("-")
            if _canonical(name) in wanted:
                found[wanted[_canonical(name)]] = version
    return found


def check_versions(manager: Path, worker: Path) -> dict[str, str | None]:
    """Raise `VersionMismatch` when the two environments differ in a `MUST_MATCH` package or
    lack one; returns the agreed versions."""
    have_m = installed_versions(manager, MUST_MATCH)
    have_w = installed_versions(worker, MUST_MATCH)
    problems = []
    for name in MUST_MATCH:
        if have_m[name] != have_w[name]:
            problems.append(f"{name} {have_m[name] or 'missing'} in the manager environment "
                            f"({manager}) vs {have_w[name] or 'missing'} in the worker "
                            f"environment ({worker})")
        elif have_m[name] is None and name != "cloudpickle":
            problems.append(f"{name} is missing from both environments")
    if problems:
        raise VersionMismatch("; ".join(problems) + ": pin the same versions in "
                              "software/environment.yml and software/worker-environment.yml")
    return have_m


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _ended(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"exited with status {returncode}"


def free_port(host: str) -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str,
             failed: Callable[[], str | None] = lambda: None, interval: float = 0.1,
             changed: Callable[[], object] | None = None, recheck: float = 1.0) -> T:
    """Poll `condition` until it returns something truthy; `failed` returning a message stops
    early (a process died). Raises `EngineError` naming `what` on timeout. With `changed` (a
    cheap look, e.g. `file_state` of a log), `condition` is asked only when that look gives a
    new value, or `recheck` seconds after it last was: an event seen within `interval` at the
    cost of a stat, not of the condition's HTTP request."""
    deadline = time.monotonic() + timeout
    seen: object = object()
    asked = 0.0
    while True:
        now = time.monotonic()
        look = changed() if changed is not None else None
        if changed is None or look != seen or now - asked >= recheck:
            seen, asked = look, now
            value = condition()
            if value:
                return value
        if (reason := failed()) is not None:
            raise EngineError(f"{what}: {reason}")
        if now > deadline:
            raise EngineError(f"{what}: not done after {timeout:g} s; see the logs in the "
                              "run folder (--keep keeps it)")
        time.sleep(interval)


def file_state(path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of `path`, None when absent: a `changed` look for `wait_for`."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns


class Cluster:
    """A started engine: where its scheduler listens, its processes, and how to stop them."""

    def __init__(self, spec: EngineSpec, tree: ProcessTree) -> None:
        self.spec = spec
        self.tree = tree
        self.scheduler_address = ""
        self.scheduler_file = spec.run_dir / "scheduler.json"
        self.dashboard_address: str | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        self.scheduler_process: subprocess.Popen[bytes] | None = None
        self.notes: list[str] = []
        self.stopping = threading.Event()  # helper threads (scaling) end when it is set
        self.threads: list[threading.Thread] = []
        #: What is left of starting once the scheduler address is known (the workers
        #: registering), done by `wait_ready`; None when there is nothing left.
        self.pending: Callable[[], None] | None = None
        self.launched_at = time.monotonic()
        self.ready_seconds: float | None = None  # launch to ready
        self._ready_lock = threading.Lock()
        self._logs: list = []

    def wait_ready(self) -> None:
        """Block until the engine is ready (its workers registered); bounded by the engine's
        start timeout, and ended early by teardown. Raises `EngineError` as a start would."""
        with self._ready_lock:
            pending, self.pending = self.pending, None
            if pending is not None:
                pending()
            if self.ready_seconds is None:
                self.ready_seconds = time.monotonic() - self.launched_at

    @property
    def worker_pids(self) -> list[int]:
        """Every process of the running workers: each `dask worker` (nanny) and what it
        started. A worker that exited is left out: its pid may belong to another process now."""
        pids = []
        for proc in self.worker_processes:
            if proc.poll() is not None:
                continue
            try:
                root = psutil.Process(proc.pid)
                pids += [root.pid, *(c.pid for c in root.children(recursive=True))]
            except psutil.Error:
                continue
        return pids

    def lost_workers(self) -> list[str]:
        """The workers that ended on their own while the run went on (killed, crashed), one
        line each; asked before teardown, which ends the rest."""
        return [f"worker {i} (pid {proc.pid}) {_ended(proc.returncode)}"
                for i, proc in enumerate(self.worker_processes)
                if i not in self.stopped_on_purpose() and proc.poll() is not None]

    def stopped_on_purpose(self) -> set[int]:
        """Indices of workers the engine itself stopped (scale-down): never lost."""
        return set()

    def environment(self) -> dict[str, str]:
        """The variables that make an unmodified `Client()` in the kernel connect here."""
        return {ADDRESS_VARIABLE: self.scheduler_address,
                FILE_VARIABLE: str(self.scheduler_file), TOKEN_VARIABLE: self.spec.token}

    def launch(self, argv: Sequence[str | os.PathLike[str]], log_name: str,
               cwd: Path | None = None, env: Mapping[str, str] | None = None,
               unset: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Start a long-running process in its own session, output to logs/<log_name>, with the
        run's token in its environment so teardown finds it and all it starts; `unset`: more
        of flo-run's variables it must not inherit."""
        logs = self.spec.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / log_name, "wb")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        # The environment's own python decides its paths; an outer scheduler is not ours.
        dropped = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", ADDRESS_VARIABLE, FILE_VARIABLE,
                   *unset)
        env = {**{k: v for k, v in os.environ.items() if k not in dropped}, **self.spec.env,
               **(env or {}), TOKEN_VARIABLE: self.spec.token}
        args = [os.fspath(a) for a in argv]
        if os.path.basename(args[0]).startswith("python"):  # an env's python: as if activated
            env = activated(env, args[0])
        log.write(f"$ {shlex.join(args)}\n".encode())
        log.flush()
        # SIGTERM if flo-run dies: a nanny then stops its worker, a Jupyter server its kernels.
        proc = launch(args, die_with=signal.SIGTERM, stdout=log, stderr=subprocess.STDOUT,
                      cwd=cwd or self.spec.workdir or self.spec.run_dir, env=env,
                      what=f"starting {log_name.removesuffix('.log')}")
        self.tree.add_root(proc.pid)
        return proc

    def log_tail(self, log_name: str, lines: int = 3) -> str:
        try:
            text = (self.spec.run_dir / "logs" / log_name).read_text(errors="replace")
        except OSError:
            return ""
        kept = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("$")]
        return " | ".join(kept[-lines:])

    def stop(self) -> list[psutil.Process]:
        """Stop workers and scheduler (and anything they started); returns survivors."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=10)
        survivors = self.tree.stop_all()
        for proc in [*self.worker_processes, *filter(None, [self.scheduler_process])]:
            try:
                proc.wait(timeout=5)  # reap: no zombies left behind
            except subprocess.TimeoutExpired:
                pass
        for log in self._logs:
            log.close()
        return survivors

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def to_dict(self) -> dict:
        return {"scheduler_address": self.scheduler_address,
                "scheduler_file": str(self.scheduler_file),
                "dashboard": self.dashboard_address, "workers": len(self.worker_processes),
                "worker_pids": self.worker_pids, "notes": self.notes,
                "ready_seconds": None if self.ready_seconds is None
                else round(self.ready_seconds, 3)}


class Engine:
    """A way to get a scheduler and workers. Subclasses write `_start`; `start` makes sure a
    failure while starting leaves no process behind."""

    name = ""
    cluster_class: type[Cluster] = Cluster  # an engine may add its own teardown
    checks_versions = True  # manager and worker environments must agree on Dask
    #: Workers of this engine run in the worker environment; False: flo-run does not build it.
    uses_worker_environment = True

    def start(self, spec: EngineSpec) -> Cluster:
        """A ready cluster: `launch`, then `Cluster.wait_ready`."""
        cluster = self.launch(spec)
        try:
            cluster.wait_ready()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def launch(self, spec: EngineSpec) -> Cluster:
        """A cluster whose scheduler address is known (`Cluster.environment` is final), its
        workers maybe still registering: the kernel can start meanwhile, and
        `Cluster.wait_ready` finishes. A failure stops what was started."""
        if spec.manager_python is not None and self.checks_versions:
            check_versions(env_prefix(spec.manager_python), env_prefix(spec.worker_python))
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        tree = ProcessTree(spec.token or f"flo-run-{os.getpid()}-{time.time_ns()}")
        spec.token = tree.token
        cluster = self.cluster_class(spec, tree)
        try:
            self._start(spec, cluster)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start(self, spec: EngineSpec, cluster: Cluster) -> None:
        """Start the engine; what can go on while the kernel starts goes in
        `cluster.pending`."""
        raise NotImplementedError


_ENGINES: dict[str, type[Engine]] = {}


def register(cls: type[Engine]) -> type[Engine]:
    _ENGINES[cls.name] = cls
    return cls


def get_engine(name: str) -> Engine:
    """The engine registered under `name` ("dask-local")."""
    if name not in _ENGINES:
        raise FloError(f"unknown engine {name!r}; known: {', '.join(sorted(_ENGINES))}")
    return _ENGINES[name]()
