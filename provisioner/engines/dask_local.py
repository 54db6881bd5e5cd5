"""Dask on this machine: `dask scheduler` and `dask worker` processes from the worker environment.

The scheduler runs from the worker environment too (its versions equal the manager's after the
check, and it must talk to the workers). It listens on loopback (or `host`) on a port the OS
picks; the address comes back through the scheduler file in the run folder, which the workers
read too. flo-run talks to the scheduler only over its own HTTP endpoint (/json/counts.json for
readiness), so it never imports distributed itself.

Adaptive scaling: a plain scheduler has no cluster manager to ask for workers, so this engine
plays that part. It starts `min-workers` and, while running, polls the scheduler's adaptive
target (`desired_workers`, what distributed's Adaptive would ask for). Above the running count
it starts workers up to `max-workers`; below it for `scale_down_after` seconds it asks the
scheduler to retire the surplus (never below `min-workers`) through the scheduler's HTTP API
(/api/v1/retire_workers, enabled for adaptive clusters): the scheduler picks idle workers
(`workers_to_close`) and moves their data to the others before it lets them go. flo-run then
stops those worker processes, as the "external job scheduler" `retire_workers` expects, and
reaps them, so teardown and the worker count stay right.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from auditor.common.tree import ProcessTree

from .base import (
    Cluster,
    Engine,
    EngineError,
    EngineSpec,
    env_prefix,
    file_state,
    register,
    wait_for,
)

log = logging.getLogger("flo.engine")

SCHEDULER_MODULE = "distributed.cli.dask_scheduler"
WORKER_MODULE = "distributed.cli.dask_worker"
WORKER_NAME = "flo-worker-{}"
#: The scheduler's HTTP API (adaptive_target, retire_workers) is off by default; adaptive
#: clusters add it to the worker environment's own default routes (`scheduler_routes`).
API_ROUTE = "distributed.http.scheduler.api"
ROUTES_VARIABLE = "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"
#: Not inherited by scheduler and workers, so they cache bytecode in the worker environment.
COMPILED = ("PYTHONDONTWRITEBYTECODE",)


def scheduler_routes(python: Path) -> list[str]:
    """The default scheduler HTTP routes of the distributed installed beside `python` (read
    from its distributed.yaml, no interpreter start), plus the API route."""
    for config in sorted(env_prefix(python).glob("lib/python*/site-packages/distributed/"
                                                  "distributed.yaml")):
        with open(config, encoding="utf-8") as handle:
            defaults = yaml.safe_load(handle) or {}
        routes = defaults.get("distributed", {}).get("scheduler", {}).get("http", {})
        found = list(routes.get("routes") or [])
        if found:
            return [*found, API_ROUTE] if API_ROUTE not in found else found
    raise EngineError(f"cannot find distributed's default configuration beside {python}; "
                      "reinstall distributed in the worker environment")


class DaskLocalCluster(Cluster):
    """A dask-local cluster: worker i is `worker_processes[i]`, named flo-worker-i; the list
    only grows, and workers retired by scale-down are remembered so they are not crashes."""

    def __init__(self, spec: EngineSpec, tree: ProcessTree) -> None:
        super().__init__(spec, tree)
        self.retired: set[int] = set()  # indices of workers stopped on purpose (and reaped)

    def running_workers(self) -> list[int]:
        """Indices of the worker processes still running and not retired."""
        return [i for i, proc in enumerate(self.worker_processes)
                if i not in self.retired and proc.poll() is None]

    def forget_worker(self, index: int) -> None:
        """Reap a retired worker's process and drop it from the process tree's roots (its
        pid may be reused by an unrelated process later)."""
        proc = self.worker_processes[index]
        proc.wait()
        self.retired.add(index)
        if proc.pid in self.tree.roots:
            self.tree.roots.remove(proc.pid)

    def stopped_on_purpose(self) -> set[int]:
        return self.retired

    def to_dict(self) -> dict:
        return {**super().to_dict(), "workers": len(self.running_workers()),
                "retired_workers": len(self.retired)}


@register
class DaskLocal(Engine):
    name = "dask-local"
    cluster_class = DaskLocalCluster
    #: Seconds between two looks at the scheduler's adaptive target.
    adapt_interval = 2.0
    #: Seconds the target must stay below the running count before workers are retired
    #: (a pause between two computations must not cost their workers).
    scale_down_after = 30.0
    #: Seconds a retired worker's process gets to exit after SIGTERM before it is killed.
    exit_grace = 10.0
    #: Seconds the scheduler gets to move the retiring workers' data.
    retire_timeout = 300.0

    def _start(self, spec: EngineSpec, cluster: Cluster) -> None:
        assert isinstance(cluster, DaskLocalCluster)
        if spec.workers < 1:
            raise EngineError("the engine needs at least one worker; set min-workers in "
                              "compute/compute.yml or pass --workers N")
        adaptive = spec.max_workers > spec.workers
        cluster.scheduler_file.unlink(missing_ok=True)
        # Scheduler and workers write bytecode into the cached environment (Python's own
        # __pycache__), even where flo-run runs with PYTHONDONTWRITEBYTECODE: importing
        # distributed from source costs about 0.6 s a process, three processes a run.
        cluster.scheduler_process = cluster.launch(
            [spec.worker_python, "-m", SCHEDULER_MODULE, "--host", spec.host,
             "--port", str(spec.port), "--dashboard-address", f"{spec.host}:0", "--scheduler-file",
             cluster.scheduler_file, "--no-show"], "scheduler.log",
            env={ROUTES_VARIABLE: json.dumps(scheduler_routes(spec.worker_python))}
            if adaptive else None, unset=COMPILED)
        scheduler = cluster.scheduler_process
        # Workers wait for the scheduler file themselves: starting them now overlaps their
        # imports with the scheduler's.
        for _ in range(spec.workers):
            _start_worker(spec, cluster)

        def scheduler_died() -> str | None:
            if scheduler.poll() is None:
                return None
            return (f"the scheduler exited with status {scheduler.returncode}: "
                    f"{cluster.log_tail('scheduler.log')}")

        info = wait_for(lambda: _read_json(cluster.scheduler_file), spec.start_timeout,
                        "starting the Dask scheduler", scheduler_died, interval=0.01,
                        changed=lambda: file_state(cluster.scheduler_file))
        cluster.scheduler_address = info["address"]
        port = (info.get("services") or {}).get("dashboard")
        if port:
            cluster.dashboard_address = f"http://{spec.host}:{port}"
        else:
            raise EngineError("the Dask scheduler has no HTTP endpoint to ask for its workers; "
                              "check the scheduler log in the run folder")
        # The address is known: the kernel may start while the workers register.
        cluster.pending = lambda: self._ready(spec, cluster, adaptive)

    def _ready(self, spec: EngineSpec, cluster: DaskLocalCluster, adaptive: bool) -> None:
        self.wait_for_workers(cluster, spec.workers, spec.start_timeout)
        if adaptive:
            cluster.threads.append(_Adapt(self, spec, cluster))
            cluster.threads[-1].start()
            cluster.notes.append(
                f"adaptive: {spec.workers} to {spec.max_workers} worker(s), following the "
                f"scheduler's target; idle workers retired after {self.scale_down_after:g} s")

    @staticmethod
    def wait_for_workers(cluster: Cluster, count: int, timeout: float) -> int:
        """Wait until `count` workers are registered with the scheduler (bounded)."""
        retired: set[int] = getattr(cluster, "retired", set())

        def dead_worker() -> str | None:
            for i, proc in enumerate(cluster.worker_processes):
                if i not in retired and proc.poll() is not None:
                    return (f"worker {i} exited with status {proc.returncode}: "
                            f"{cluster.log_tail(f'worker-{i}.log')}")
            if cluster.scheduler_process and cluster.scheduler_process.poll() is not None:
                return f"the scheduler exited: {cluster.log_tail('scheduler.log')}"
            if cluster.stopping.is_set():
                return "the run is stopping"
            return None

        def registered() -> int:
            counts = _counts(cluster)
            return counts["workers"] if counts and counts["workers"] >= count else 0

        # The scheduler logs each worker it registers: its log growing is the event to ask
        # /json/counts.json on (and once a second whatever happens).
        return wait_for(registered, timeout, f"waiting for {count} Dask worker(s) to register "
                        f"with {cluster.scheduler_address}", dead_worker, interval=0.01,
                        changed=lambda: file_state(cluster.spec.run_dir / "logs" /
                                                   "scheduler.log"))


def _start_worker(spec: EngineSpec, cluster: Cluster) -> None:
    index = len(cluster.worker_processes)
    argv: list[str | Path] = [
        spec.worker_python, "-m", WORKER_MODULE, "--scheduler-file", cluster.scheduler_file,
        "--nthreads", str(spec.threads), "--nworkers", "1", "--host", spec.host,
        "--name", WORKER_NAME.format(index), "--no-dashboard",
        "--local-directory", spec.run_dir / "dask-worker-space"]
    argv += ["--memory-limit", f"{spec.memory_mb}MB" if spec.memory_mb else "0"]
    cluster.worker_processes.append(cluster.launch(argv, f"worker-{index}.log",
                                                  unset=COMPILED))


def _counts(cluster: Cluster) -> dict | None:
    try:
        with urllib.request.urlopen(f"{cluster.dashboard_address}/json/counts.json",
                                    timeout=5) as answer:
            return json.loads(answer.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _retire(cluster: Cluster, count: int, timeout: float) -> list[str]:
    """Ask the scheduler to retire `count` workers of its choosing (idle ones, data moved off
    first); returns the names of those it retired (none when their data had nowhere to go)."""
    request = urllib.request.Request(f"{cluster.dashboard_address}/api/v1/retire_workers",
                                     data=json.dumps({"n": count}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            retired = json.loads(answer.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        log.warning("retiring %d Dask worker(s) failed: %s", count, exc)
        return []
    return [str(identity.get("name")) for identity in retired.values()
            if isinstance(identity, dict)]


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or being written
        return None
    return doc if isinstance(doc, dict) and doc.get("address") else None


@dataclass
class Decision:
    """What the watcher does after one look: start `start` workers, or retire `retire`."""

    start: int = 0
    retire: int = 0
    below_since: float | None = None  # when the target first fell below the running count


def decide(target: int, running: int, low: int, high: int, below_since: float | None,
           now: float, cooldown: float) -> Decision:
    """Follow the scheduler's adaptive `target` within [low, high]: up at once, down only when
    the target stayed below `running` for `cooldown` seconds."""
    wanted = max(low, min(target, high))
    if wanted > running:
        return Decision(start=wanted - running)
    if wanted == running:
        return Decision()
    if below_since is None:
        return Decision(below_since=now)
    if now - below_since < cooldown:
        return Decision(below_since=below_since)
    return Decision(retire=running - wanted)


class _Adapt(threading.Thread):
    """Start workers when the scheduler's adaptive target exceeds what runs; retire the surplus
    when it stays below; reap retired workers' processes."""

    def __init__(self, engine: DaskLocal, spec: EngineSpec, cluster: DaskLocalCluster) -> None:
        super().__init__(name="flo-dask-adapt", daemon=True)
        self.engine, self.spec, self.cluster = engine, spec, cluster
        self.stopped = cluster.stopping
        self.leaving: dict[int, float] = {}  # worker index -> when to kill it if still running
        self.below_since: float | None = None

    def run(self) -> None:
        while not self.stopped.wait(self.engine.adapt_interval):
            self.reap()
            counts = _counts(self.cluster)
            if not counts:
                continue
            running = [i for i in self.cluster.running_workers() if i not in self.leaving]
            step = decide(int(counts.get("desired_workers") or 0), len(running),
                          self.spec.workers, self.spec.max_workers, self.below_since,
                          time.monotonic(), self.engine.scale_down_after)
            self.below_since = step.below_since
            # A worker that died on its own keeps its slot: restarting a crash in a loop
            # would hide it (the nanny already restarts a worker process that dies).
            crashed = (len(self.cluster.worker_processes) - len(self.cluster.retired)
                       - len(self.leaving) - len(running))
            for _ in range(max(0, step.start - crashed)):
                if self.stopped.is_set():
                    return
                _start_worker(self.spec, self.cluster)
            if step.retire:
                self.retire(step.retire, running)

    def retire(self, count: int, running: list[int]) -> None:
        """Retire `count` workers through the scheduler, then stop their processes."""
        names = {WORKER_NAME.format(i): i for i in running}
        retired = _retire(self.cluster, count, self.engine.retire_timeout)
        deadline = time.monotonic() + self.engine.exit_grace
        for name in retired:
            if name in names:
                index = names[name]
                self.leaving[index] = deadline
                # The scheduler has removed it; SIGTERM closes nanny and worker at once
                # instead of at the worker's next heartbeat.
                self.cluster.worker_processes[index].terminate()
        log.info("retired Dask worker(s) %s", ", ".join(retired) or "(none: data had nowhere "
                 "to go)")

    def reap(self) -> None:
        """Reap retired workers that exited; kill those past their grace period."""
        for index, deadline in list(self.leaving.items()):
            proc = self.cluster.worker_processes[index]
            if proc.poll() is not None:
                self.cluster.forget_worker(index)
                del self.leaving[index]
            elif time.monotonic() > deadline:
                _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and what it started (its own session, so its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
