"""The cluster-manager process of the slurm engine, run by the worker environment's python.

It owns a `dask_jobqueue.SLURMCluster`, so the Dask scheduler lives here and its dask and
distributed are the workers' (the engine has checked them against the manager's). It scales the
cluster adaptively, writes the scheduler file once `minimum` workers have registered, and on
SIGTERM or SIGINT (or when flo-run itself dies) closes the cluster, which scancels every job it
submitted. Standalone on purpose: the worker environment does not have flo-backpack installed.

Usage: python jobqueue_manager.py CONFIG.json   (written by provisioner/engines/jobqueue.py)
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

#: How often the main loop looks at the workers, the stop flag and flo-run's pid.
TICK_S = 0.2


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
    cluster = dask_jobqueue.SLURMCluster(**config["cluster"])
    try:
        print(f"job script:\n{cluster.job_script()}", flush=True)
        cluster.adapt(minimum=config["minimum"], maximum=config["maximum"])
        written = False
        while not stop.wait(TICK_S):
            if os.getppid() != parent:  # flo-run is gone: nobody will ask us to stop
                print("flo-run exited; closing the cluster", flush=True)
                break
            if not written and len(cluster.scheduler.workers) >= config["minimum"]:
                _write_scheduler_file(Path(config["scheduler_file"]), cluster)
                written = True
    finally:
        cluster.close(timeout=config.get("close_timeout", 20))
        print("cluster closed", flush=True)
    return 0


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
