"""The batch-system engine on a real single-node SLURM (Debian's slurm-wlm + munge).

Few and fast: the set-up script leaves an idle node, a dask-jobqueue worker runs a task inside
a SLURM job with the worker environment's python, and stopping cancels every job submitted.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest_slurm import SETUP, Slurm


def test_setup_leaves_an_idle_node_and_is_a_no_op_when_up(slurm: Slurm) -> None:
    sinfo = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True,
                           text=True, timeout=30, check=True).stdout.split()
    assert sinfo[0] == slurm.node and sinfo[1] in {"idle", "mixed", "allocated"}
    again = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 0
    assert "SLURM is up" in again.stderr and "installing" not in again.stderr
    assert "wrote" not in again.stderr  # an unchanged host keeps its slurm.conf


def task_context_function():
    """A task that reports where it runs; made in a function so it is pickled by value
    (the workers cannot import this test module)."""
    def task_context() -> dict[str, str]:
        import os
        import sys
        return {"job": os.environ.get("SLURM_JOB_ID", ""), "python": sys.executable,
                "cwd": os.getcwd()}
    return task_context


def test_plain_slurmcluster_runs_a_task_inside_a_job(slurm: Slurm, tmp_path) -> None:
    jobqueue = pytest.importorskip("dask_jobqueue")
    from distributed import Client

    name = f"flo-smoke-{os.getpid()}"
    cluster = jobqueue.SLURMCluster(
        cores=1, memory="256MiB", processes=1, python=sys.executable, job_name=name,
        log_directory=str(tmp_path), job_extra_directives=[f"--chdir={tmp_path}"],
        scheduler_options={"host": "127.0.0.1"})
    try:
        cluster.scale(1)
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=60)
            jobs = slurm.jobs(name)
            assert jobs, "the worker job is not in squeue"
            ctx = client.submit(task_context_function(), pure=False).result(timeout=60)
    finally:
        cluster.close()
    assert ctx["job"] in jobs
    assert ctx["python"] == sys.executable and ctx["cwd"] == str(tmp_path)
    slurm.wait_for("our smoke job gone from squeue", lambda: not slurm.jobs(name))
