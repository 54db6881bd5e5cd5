"""Manager and worker traces, end to end: real pools, real Dask, real strace, the real CLI.

Each workers_* fixture starts workers one way (Dask LocalCluster, multiprocessing spawn and
fork, ProcessPoolExecutor on forkserver, joblib/loky, `--workers` for a plain Client()).
tabulate is used only by the manager and PyYAML only inside tasks, so the split between
environment.yml and worker-environment.yml is checked both ways. The generic checks of
test_fixtures_audit.py (exit status, manager pins, closure) run on these fixtures too.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import RECORD_SUFFIX, AuditRun, Environment, flo_audit_argv
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

SPLIT_CASES = ["workers_dask_local", "workers_mp_spawn", "workers_mp_fork",
               "workers_process_pool", "workers_joblib", "workers_connect"]


def worker_environment(run: AuditRun) -> Environment:
    path = run.path("software/worker-environment.yml")
    assert path.is_file(), f"no software/worker-environment.yml\n{run.describe()}"
    return Environment.load(path)


def roles_report(run: AuditRun) -> dict:
    return run.load_json("audit/summary.json")["roles"]


@pytest.mark.parametrize("name", SPLIT_CASES)
def test_worker_environment_split(name: str, audit_runs: Callable[..., AuditRun]) -> None:
    """Worker-only packages in, manager-only packages out, pinned like the manager's copy."""
    run = audit_runs(name)
    assert run.returncode == 0, run.describe()
    workers = worker_environment(run)
    names = workers.names()
    expect = run.scenario.expect
    missing = {canonicalize_name(n) for n in expect["worker_include"]} - names
    assert not missing, f"worker packages missing: {sorted(missing)}\n{workers.raw}"
    wrongly = {canonicalize_name(n) for n in expect["worker_exclude"]} & names
    assert not wrongly, f"manager-only packages in the worker file: {sorted(wrongly)}"
    manager = {canonicalize_name(r.name): str(r.specifier) for r in run.environment.pip}
    for req in workers.pip:  # same versions as the manager's copy (Dask refuses skew)
        key = canonicalize_name(req.name)
        if key in manager:
            assert str(req.specifier) == manager[key], (req, manager[key])
    assert workers.python == run.environment.python
    report = roles_report(run)
    assert "tabulate" in report["manager"]["packages"]
    assert "tabulate" not in report["worker"]["packages"]
    assert "PyYAML" in report["worker"]["packages"]
    assert report["worker"]["processes"] >= 2 and report["worker"]["workers_seen"] >= 2, report


def test_worker_tool_in_apt_txt(audit_runs: Callable[..., AuditRun]) -> None:
    """A task that runs gzip: its Debian package is in apt.txt, under the worker role."""
    run = audit_runs("workers_dask_local")
    apt = run.path("software/apt.txt").read_text(encoding="utf-8").splitlines()
    assert "gzip" in apt, apt
    summary = run.load_json("audit/summary.json")
    assert "worker" in summary["apt"]["gzip"]["roles"], summary["apt"]
    assert "gzip" in summary["roles"]["worker"]["apt"]
    assert "gzip" not in summary["roles"]["manager"]["apt"]
    assert "/usr/bin/gzip" in summary["roles"]["worker"]["tools"]
    assert not any(line.startswith(("libc6", "python")) for line in apt), apt


def test_compute_measured(audit_runs: Callable[..., AuditRun]) -> None:
    """A task holding ~300 MB gives memory >= 300; every value says how it was derived."""
    run = audit_runs("workers_dask_local")
    text = run.path("compute/compute.yml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert set(config) == {"vine_factory_config"}
    values = config["vine_factory_config"]
    assert set(values) == {"min-workers", "max-workers", "cores", "memory", "disk"}
    assert values["memory"] >= run.scenario.expect["min_worker_memory"], text
    assert 1 <= values["min-workers"] <= values["max-workers"] <= 2, text
    assert values["cores"] >= 1 and values["disk"] >= 1024
    assert "peak RSS" in text and "x1.67" in text and "samples" in text
    # as a Dask memory limit, the measured peak stays under the 60% spill threshold
    peak = run.load_json("audit/summary.json")["compute"]["measurements"]["peak_rss_mb"]
    assert peak > 0 and values["memory"] * 0.6 >= peak and values["memory"] >= 1024
    samples = run.path("audit/samples.jsonl").read_text(encoding="utf-8").splitlines()
    assert samples and {"t", "pid", "rss", "cpu"} <= set(json.loads(samples[0]))


def test_disk_is_the_peak_of_files_written(audit_runs: Callable[..., AuditRun],
                                           tmp_path: Path) -> None:
    """A task fills ~60 MB in its working directory and deletes it: the peak is kept; the
    1 MB file it leaves is measured once (audit/written.json), so derive gives the same disk."""
    run = audit_runs("workers_disk")
    assert run.returncode == 0, run.describe()
    compute = run.load_json("audit/summary.json")["compute"]
    floor = run.scenario.expect["min_worker_disk_mb"]
    assert compute["measurements"]["disk_mb"] >= floor, compute
    text = run.path("compute/compute.yml").read_text(encoding="utf-8")
    disk = yaml.safe_load(text)["vine_factory_config"]["disk"]
    assert disk >= floor * 2, text  # x2 headroom, rounded up
    assert "working or local directory" in text and "peak of files open for writing" in text
    written = run.load_json("audit/written.json")
    kept = {Path(p).name: size for p, size in written.items()}
    assert kept == run.scenario.expect["kept_files"], written
    out = tmp_path / "again"
    done = subprocess.run([*flo_audit_argv(), "derive", str(run.out), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "compute/compute.yml").read_text() == text


def test_disk_floor_when_nothing_written(audit_runs: Callable[..., AuditRun]) -> None:
    """Dask workers that write no files (their scratch space holds only an empty lock file)."""
    run = audit_runs("workers_dask_local")
    compute = run.load_json("audit/summary.json")["compute"]
    assert compute["disk"] == 1024 and compute["measurements"]["disk_mb"] < 1, compute


def test_dask_worker_exit_ends_the_audit(audit_runs: Callable[..., AuditRun]) -> None:
    """os._exit(3) in a LocalCluster worker: KilledWorker (allowed-failures 0), no hang; the
    status is in the summary and the backpack is marked incomplete."""
    run = audit_runs("workers_dask_exit")
    assert run.returncode == 1, run.describe()
    summary = run.load_json("audit/summary.json")
    assert summary["status"] == "worker-died" and not summary["complete"], summary["status"]
    crashed = summary["roles"]["worker"]["crashed"]
    assert [c["exit"] for c in crashed] == [run.scenario.expect["crashed_exit"]], crashed
    assert "exited with status 3" in run.stdout and "INCOMPLETE" in run.stdout
    executed = run.path("audit/executed.ipynb").read_text(encoding="utf-8")
    assert "worker lost: KilledWorker" in executed


def test_derive_recomputes_worker_outputs(audit_runs: Callable[..., AuditRun],
                                          tmp_path: Path) -> None:
    """The samples and every trace file are in audit/: derive writes the same files."""
    run = audit_runs("workers_connect")
    out = tmp_path / "again"
    done = subprocess.run([*flo_audit_argv(), "derive", str(run.out), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for relative in ("software/worker-environment.yml", "compute/compute.yml",
                     "software/environment.yml"):
        assert (out / relative).read_text() == run.path(relative).read_text(), relative


def test_workers_option_traces_each_worker(audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("workers_connect")
    session = run.load_json("audit/session.json")
    pool = session["pool"]
    assert pool["address"].startswith("tcp://127.0.0.1:")
    workers = [p for p in pool["processes"] if p["role"] == "worker"]
    assert len(workers) == 2 and all(not p["during_run"] for p in workers), pool
    for member in pool["processes"]:
        suffix = RECORD_SUFFIX[run.backend]
        assert run.path(f"audit/trace-{member['name']}{suffix}").is_file(), member
    processes = run.load_json("audit/summary.json")["processes"]["processes"]
    sides = {p["pid"]: p["side"] for p in processes}
    assert all(sides.get(p["pid"]) == "worker" for p in workers), processes
    scheduler = next(p for p in pool["processes"] if p["name"] == "scheduler")
    assert sides.get(scheduler["pid"]) == "manager"
    assert "used the --workers pool" in roles_report(run)["worker"]["note"]


def test_idle_workers(audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("workers_idle")
    assert run.returncode == 0, run.describe()
    note = roles_report(run)["worker"]["note"]
    assert "idle" in note and "never connected" in note, note
    assert "idle" in run.stdout


def test_no_worker_no_worker_file(audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("lazy_import")
    assert not run.path("software/worker-environment.yml").exists()
    assert "no worker ran" in roles_report(run)["worker"]["note"]
    compute = run.path("compute/compute.yml").read_text(encoding="utf-8")
    assert "no worker ran" in compute


def test_worker_crash_marks_incomplete(audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("workers_crash")
    assert run.returncode == 1, run.describe()
    summary = run.load_json("audit/summary.json")
    assert summary["status"] == "worker-died" and not summary["complete"]
    crashed = summary["roles"]["worker"]["crashed"]
    assert [c["exit"] for c in crashed] == [run.scenario.expect["crashed_exit"]], crashed
    assert "SIGKILL" in run.stdout and "INCOMPLETE" in run.stdout


def test_busy_port_is_not_a_failure(tmp_path: Path) -> None:
    """The scheduler's first port is taken: the pool starts on another one."""
    from auditor.record.base import get_tracer
    from auditor.record.workers import WorkerPool

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pool = WorkerPool(1, sys.executable, get_tracer("hooks")(), tmp_path, tmp_path,
                          {"PATH": "/usr/bin:/bin"}, first_port=port)
        try:
            address = pool.start()
        finally:
            pool.stop()
    assert address.startswith("tcp://127.0.0.1:") and not address.endswith(f":{port}")
    assert all(p.exit is not None for p in pool.processes)
