"""Dask on this machine: `dask scheduler` and `dask worker` processes from the worker environment.

The scheduler runs from the worker environment too (its versions equal the manager's after the
check, and it must talk to the workers). It listens on loopback (or `host`) on a port the OS
picks; the address comes back through the scheduler file in the run folder, which the workers
read too. Readiness is asked over the scheduler's own HTTP endpoint (/json/counts.json), so
flo-run never imports distributed itself.

Adaptive scaling: a plain scheduler has no cluster manager to ask for workers, so this engine
plays that part in a small way: it starts `min-workers` and, while running, polls the
scheduler's adaptive target (`desired_workers`, what distributed's Adaptive would ask for) and
starts more workers up to `max-workers`. It never scales down: retiring a worker safely needs
the scheduler to move its data first, which a process manager outside Dask cannot ask for.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

from .base import Cluster, Engine, EngineError, EngineSpec, register, wait_for

SCHEDULER_MODULE = "distributed.cli.dask_scheduler"
WORKER_MODULE = "distributed.cli.dask_worker"
#: How often the scale-up watcher asks the scheduler for its adaptive target.
ADAPT_INTERVAL_S = 1.0


@register
class DaskLocal(Engine):
    name = "dask-local"

    def _start(self, spec: EngineSpec, cluster: Cluster) -> None:
        if spec.workers < 1:
            raise EngineError("the engine needs at least one worker; set min-workers in "
                              "compute/compute.yml or pass --workers N")
        cluster.scheduler_file.unlink(missing_ok=True)
        cluster.scheduler_process = cluster.launch(
            [spec.worker_python, "-m", SCHEDULER_MODULE, "--host", spec.host, "--port", "0",
             "--dashboard-address", f"{spec.host}:0", "--scheduler-file",
             cluster.scheduler_file, "--no-show"], "scheduler.log")
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
                        "starting the Dask scheduler", scheduler_died)
        cluster.scheduler_address = info["address"]
        port = (info.get("services") or {}).get("dashboard")
        if port:
            cluster.dashboard_address = f"http://{spec.host}:{port}"
        else:
            raise EngineError("the Dask scheduler has no HTTP endpoint to ask for its workers; "
                              "check the scheduler log in the run folder")
        self.wait_for_workers(cluster, spec.workers, spec.start_timeout)
        if spec.max_workers > spec.workers:
            cluster.threads.append(_ScaleUp(spec, cluster))
            cluster.threads[-1].start()
            cluster.notes.append(f"adaptive: {spec.workers} worker(s) now, more started up to "
                                 f"{spec.max_workers} when the scheduler asks; no scale-down")

    @staticmethod
    def wait_for_workers(cluster: Cluster, count: int, timeout: float) -> int:
        """Wait until `count` workers are registered with the scheduler (bounded)."""
        def dead_worker() -> str | None:
            for i, proc in enumerate(cluster.worker_processes):
                if proc.poll() is not None:
                    return (f"worker {i} exited with status {proc.returncode}: "
                            f"{cluster.log_tail(f'worker-{i}.log')}")
            if cluster.scheduler_process and cluster.scheduler_process.poll() is not None:
                return f"the scheduler exited: {cluster.log_tail('scheduler.log')}"
            return None

        def registered() -> int:
            counts = _counts(cluster)
            return counts["workers"] if counts and counts["workers"] >= count else 0

        return wait_for(registered, timeout, f"waiting for {count} Dask worker(s) to register "
                        f"with {cluster.scheduler_address}", dead_worker, interval=0.1)


def _start_worker(spec: EngineSpec, cluster: Cluster) -> None:
    index = len(cluster.worker_processes)
    argv = [spec.worker_python, "-m", WORKER_MODULE, "--scheduler-file", cluster.scheduler_file,
            "--nthreads", str(spec.threads), "--nworkers", "1", "--host", spec.host,
            "--name", f"flo-worker-{index}", "--no-dashboard",
            "--local-directory", spec.run_dir / "dask-worker-space"]
    argv += ["--memory-limit", f"{spec.memory_mb}MB" if spec.memory_mb else "0"]
    cluster.worker_processes.append(cluster.launch(argv, f"worker-{index}.log"))


def _counts(cluster: Cluster) -> dict | None:
    try:
        with urllib.request.urlopen(f"{cluster.dashboard_address}/json/counts.json",
                                    timeout=5) as answer:
            return json.loads(answer.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, or being written
        return None
    return doc if isinstance(doc, dict) and doc.get("address") else None


class _ScaleUp(threading.Thread):
    """Start workers when the scheduler's adaptive target exceeds what runs, up to the bound."""

    def __init__(self, spec: EngineSpec, cluster: Cluster) -> None:
        super().__init__(name="flo-dask-scale-up", daemon=True)
        self.spec, self.cluster = spec, cluster
        self.stopped = cluster.stopping

    def run(self) -> None:
        while not self.stopped.wait(ADAPT_INTERVAL_S):
            counts = _counts(self.cluster)
            if not counts:
                continue
            wanted = min(int(counts.get("desired_workers") or 0), self.spec.max_workers)
            while len(self.cluster.worker_processes) < wanted and not self.stopped.is_set():
                _start_worker(self.spec, self.cluster)
