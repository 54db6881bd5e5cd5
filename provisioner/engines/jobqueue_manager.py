"""The cluster-manager process of the batch engines, run by the worker environment's python.

It owns a dask-jobqueue cluster (`SLURMCluster`, `PBSCluster`, ...: the config's `class`), so
the Dask scheduler lives here and its dask and distributed are the workers' (the engine has
checked them against the manager's). It scales the cluster adaptively, writes the scheduler
file once `minimum` workers have registered, and keeps jobs.json: every job submitted, those
held now, and those lost (a worker that registered, then left the scheduler while its job was
still wanted: cancelled, killed, out of time). A lost job is dropped from the cluster's plan so
adaptive scaling submits a replacement. On SIGTERM or SIGINT (or when flo-run itself dies) it
closes the cluster, which cancels every job it submitted with the system's own command.
Standalone on purpose: the worker environment does not have flo-backpack installed.

Usage: python jobqueue_manager.py CONFIG.json   (written by provisioner/engines/jobqueue.py)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

#: How often the main loop looks at the workers, the stop flag and flo-run's pid.
TICK_S = 0.2
#: Seconds a registered worker may be missing from the scheduler, its job still in the plan,
#: before it counts as lost (a retirement removes the job from the plan at once).
LOST_AFTER_S = 3.0


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    try:
        import dask_jobqueue
    except ImportError:  # not in the worker environment: use flo-run's copy (pure Python)
        sys.path.append(config["jobqueue_path"])
        import dask_jobqueue

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    parent = config["parent_pid"]
    cluster = getattr(dask_jobqueue, config.get("class", "SLURMCluster"))(**config["cluster"])
    jobs = JobBook(Path(config["jobs_file"]))
    try:
        print(f"job script:\n{cluster.job_script()}", flush=True)
        cluster.adapt(minimum=config["minimum"], maximum=config["maximum"])
        written = False
        while not stop.wait(TICK_S):
            if os.getppid() != parent:  # flo-run is gone: nobody will ask us to stop
                print("flo-run exited; closing the cluster", flush=True)
                break
            jobs.update(cluster)
            if not written and len(cluster.scheduler.workers) >= config["minimum"]:
                _write_scheduler_file(Path(config["scheduler_file"]), cluster)
                written = True
    finally:
        cluster.close(timeout=config.get("close_timeout", 20))
        print("cluster closed", flush=True)
    return 0


class JobBook:
    """jobs.json: the jobs submitted, held and lost, rewritten whole when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.submitted: list[str] = []
        self.lost: list[dict[str, str]] = []
        self.seen: set[str] = set()  # worker names that registered with the scheduler
        self.missing: dict[str, float] = {}  # name -> when it was first missing
        self.written: dict | None = None

    def update(self, cluster) -> None:
        now = time.monotonic()
        present = {str(w.name) for w in list(cluster.scheduler.workers.values())}
        self.seen |= present
        held = {}
        for name, job in list(cluster.workers.items()):
            job_id = getattr(job, "job_id", None)
            if job_id is None:
                continue
            held[str(name)] = str(job_id)
            if str(job_id) not in self.submitted:
                self.submitted.append(str(job_id))
        for name, job_id in held.items():
            if name not in self.seen or name in present or name not in cluster.worker_spec:
                self.missing.pop(name, None)
                continue
            since = self.missing.setdefault(name, now)
            if now - since >= LOST_AFTER_S:
                print(f"worker {name} (job {job_id}) left the scheduler; replacing it",
                      flush=True)
                self.lost.append({"worker": name, "job": job_id})
                self.seen.discard(name)
                self.missing.pop(name)
                cluster.loop.add_callback(_forget, cluster, name)
        state = {"submitted": self.submitted, "current": sorted(held.values()),
                 "lost": self.lost}
        if state != self.written:
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps(state), encoding="utf-8")
            os.replace(partial, self.path)
            self.written = json.loads(json.dumps(state))


async def _forget(cluster, name: str) -> None:
    """Drop a lost worker's job from the plan (on the cluster's loop: the plan is its state):
    the cluster cancels what is left of it, and adaptive scaling asks for a new one."""
    cluster.worker_spec.pop(name, None)
    await cluster._correct_state()


def _write_scheduler_file(path: Path, cluster) -> None:
    """Distributed's scheduler-file shape (what `Client(scheduler_file=...)` reads), plus the
    jobs submitted so far; written whole by a rename so a reader never sees half of it."""
    dashboard = cluster.scheduler.services.get("dashboard")
    info = {"type": "Scheduler", "address": cluster.scheduler_address,
            "services": {"dashboard": dashboard.port} if dashboard else {},
            "workers": len(cluster.scheduler.workers),
            "jobs": sorted(str(job.job_id) for job in cluster.workers.values()
                           if getattr(job, "job_id", None))}
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(info), encoding="utf-8")
    os.replace(partial, path)
    print(f"scheduler at {info['address']}; jobs {', '.join(info['jobs'])}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
