"""The batch-system engine on a real single-node SLURM (Debian's slurm-wlm + munge).

Few and fast: the set-up script leaves an idle node, a dask-jobqueue worker runs a task inside
a SLURM job with the worker environment's python, and stopping cancels every job submitted.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def worker_python(tmp_path_factory) -> Path:
    """A worker environment with its own interpreter path: a venv whose site-packages chains
    to this one's (so it has distributed) but whose sys.executable is its own."""
    prefix = tmp_path_factory.mktemp("worker-env") / "env"
    subprocess.run([sys.executable, "-m", "uv", "venv", "-q", "--python", sys.executable,
                    str(prefix)], check=True, timeout=120)
    [site] = prefix.glob("lib/python*/site-packages")
    here = next(p for p in sys.path if p.endswith("site-packages"))
    (site / "_flo_test_parent.pth").write_text(here + "\n")
    return prefix / "bin" / "python"


def test_engine_runs_tasks_in_slurm_jobs_and_stop_cancels_them(
        slurm: Slurm, worker_python: Path, tmp_path: Path) -> None:
    from distributed import Client

    from provisioner.engines import EngineSpec, get_engine

    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=worker_python,
                      workers=1, max_workers=2, threads=1,  # no manager: no version check
                      memory_mb=512, disk_mb=100, start_timeout=90)
    cluster = get_engine("slurm").start(spec)
    try:
        jobs = slurm.jobs(cluster.job_name)
        assert jobs and set(jobs.values()) == {"RUNNING"}
        script = (spec.run_dir / "logs" / "slurm-manager.log").read_text()
        assert "--mem=512M" in script and "--tmp=100M" in script and "-t " not in script
        with Client(cluster.scheduler_address, timeout=30) as client:
            ctx = client.submit(task_context_function(), pure=False).result(timeout=60)
    finally:
        survivors = cluster.stop()
    assert ctx["job"] in jobs
    assert ctx["python"] == str(worker_python) and ctx["cwd"] == str(spec.run_dir)
    assert survivors == []
    assert slurm.jobs(cluster.job_name) == {}  # stop() waited for squeue to let go
    assert cluster.scheduler_process.poll() is not None and cluster.worker_pids == []
    assert list((spec.run_dir / "logs").glob(f"{cluster.job_name}-*.err"))


@pytest.mark.slow
def test_flo_run_execute_on_slurm(slurm: Slurm, tmp_path: Path) -> None:
    import json

    import nbformat
    from test_envs import PY311, make_backpack

    if not PY311.exists():
        pytest.skip("needs ~/.pyenv/versions/3.11.7")
    versions = {n: importlib.metadata.version(n) for n in ("dask", "distributed", "cloudpickle")}
    bp = make_backpack(tmp_path / "bp", "3.11.7", [f"{n}=={v}" for n, v in versions.items()])
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os, sys\nfrom distributed import Client\nclient = Client()\n"
        "where = client.submit(lambda: (os.environ.get('SLURM_JOB_ID'), sys.executable),"
        " pure=False).result()\nprint(repr(where))")]
    nbformat.write(nb, bp / "workflow" / "analysis.ipynb")
    out = tmp_path / "out.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "provisioner.cli", str(bp), "--execute", "--engine", "slurm",
         "-o", str(out), "--json", "--scratch-dir", str(tmp_path / "scratch")],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    report = json.loads(done.stdout)
    assert report["cluster"]["engine"] == "slurm" and report["cluster"]["jobs"]
    printed = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"]
    job, python = eval(printed)  # the repr of a (str, str) tuple printed by the notebook
    assert job in report["cluster"]["jobs"]
    assert python == str(Path(report["envs"]["worker"]["path"]) / "bin" / "python")
    assert slurm.jobs(report["cluster"]["job_name"]) == {}


def test_a_worker_job_scancelled_mid_run_is_named_and_replaced(
        slurm: Slurm, worker_python: Path, tmp_path: Path) -> None:
    import time

    from distributed import Client

    from provisioner.engines import EngineSpec, get_engine

    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=worker_python, workers=2,
                      max_workers=2, threads=1, memory_mb=512, start_timeout=120)
    cluster = get_engine("slurm").start(spec)
    try:
        with Client(cluster.scheduler_address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            first = sorted(cluster.jobs())
            assert len(first) == 2
            futures = client.map(lambda x: (__import__("time").sleep(0.5), x * x)[1],
                                 range(40), pure=False)
            time.sleep(2)
            subprocess.run(["scancel", first[0]], check=True, timeout=30)
            results = client.gather(futures)
            slurm.wait_for("a replacement job", lambda: len(cluster.record().get(
                "submitted", [])) == 3, timeout=60)
        lost = cluster.lost_workers()
    finally:
        cluster.stop()
    assert results == [x * x for x in range(40)]
    assert len(lost) == 1 and f"(job {first[0]})" in lost[0], lost
    assert slurm.jobs(cluster.job_name) == {}
