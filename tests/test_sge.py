"""The sge engine on a real single-node Grid Engine (Debian's gridengine, .ci/sge-setup.sh):
a task runs inside an SGE job with the worker environment's python in the notebook's folder,
and stopping cancels every job with qdel."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest_sge import SETUP, sge_jobs

from provisioner.engines import EngineSpec, get_engine
from provisioner.site import SiteProfile


def task_context_function():
    def task_context() -> dict[str, str]:
        import os
        import sys
        return {"job": os.environ.get("JOB_ID", ""), "python": sys.executable,
                "cwd": os.getcwd(), "pe_slots": os.environ.get("NSLOTS", "")}
    return task_context


def test_setup_is_a_no_op_when_up(sge) -> None:
    import subprocess

    again = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "SGE is up" in again.stderr
    assert "installing" not in again.stderr


def test_engine_runs_tasks_in_sge_jobs_and_stop_qdels_them(sge, tmp_path: Path) -> None:
    from distributed import Client

    site = SiteProfile(path=Path("site.yml"), parallel_environment="smp",
                       job_prologue=("export FLO_PROLOGUE=ran",))
    spec = EngineSpec(run_dir=tmp_path / "run", workdir=tmp_path / "run" / "nb",
                      worker_python=Path(sys.executable), workers=1, max_workers=1, threads=2,
                      memory_mb=256, start_timeout=120, site=site)
    spec.workdir.mkdir(parents=True)
    cluster = get_engine("sge").start(spec)
    try:
        jobs = cluster.jobs()
        assert len(jobs) == 1 and set(jobs.values()) == {"r"}, jobs
        with Client(cluster.scheduler_address, timeout=30) as client:
            ctx = client.submit(task_context_function(), pure=False).result(timeout=60)
            prologue = client.submit(lambda: __import__("os").environ.get("FLO_PROLOGUE"),
                                     pure=False).result(timeout=60)
    finally:
        survivors = cluster.stop()
    [job] = jobs
    assert ctx == {"job": job, "python": sys.executable, "cwd": str(spec.workdir),
                   "pe_slots": "2"}
    assert prologue == "ran"
    assert survivors == [] and job not in sge_jobs() and cluster.jobs() == {}
    script = (spec.run_dir / "logs" / "sge-manager.log").read_text()
    assert "#$ -l mem_free=256M" in script and "#$ -pe smp 2" in script
