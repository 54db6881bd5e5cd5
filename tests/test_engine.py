"""The dask-local engine on real processes (the test venv's own distributed), the manager/worker
version check on hand-built environment prefixes, and parameter injection."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import psutil
import pytest

from auditor.common.tree import TOKEN_VARIABLE
from provisioner.engines import EngineError, EngineSpec, VersionMismatch, check_versions, get_engine
from provisioner.engines.dask_local import DaskLocal
from provisioner.runner import INJECTED_TAG, execute, inject_parameters, parse_value

PYTHON = Path(sys.executable)  # the test venv has distributed: no environment build needed
NO_DISTRIBUTED = Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python"


def fake_env(prefix: Path, **versions: str) -> Path:
    site = prefix / "lib" / "python3.11" / "site-packages"
    for name, version in versions.items():
        (site / f"{name}-{version}.dist-info").mkdir(parents=True)
    return prefix


def token_holders(token: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TOKEN_VARIABLE) == token:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def cluster_info(scheduler_file: Path) -> dict:
    """Ask the scheduler, as a client would, what workers it has."""
    code = ("import json, sys; from distributed import Client\n"
            "with Client(scheduler_file=sys.argv[1], timeout=30) as c:\n"
            "    info = c.scheduler_info()\n"
            "    print(json.dumps([[w['nthreads'], w['memory_limit'], w['host']]"
            " for w in info['workers'].values()]))")
    done = subprocess.run([PYTHON, "-c", code, scheduler_file], capture_output=True, text=True,
                          timeout=90, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_versions_must_match(tmp_path: Path) -> None:
    manager = fake_env(tmp_path / "m", dask="2026.8.0", distributed="2026.8.0",
                       cloudpickle="3.1.3")
    same = fake_env(tmp_path / "w1", dask="2026.8.0", distributed="2026.8.0",
                    cloudpickle="3.1.3")
    other = fake_env(tmp_path / "w2", dask="2026.8.0", distributed="2026.8.0",
                     cloudpickle="3.0.0")
    assert check_versions(manager, same)["distributed"] == "2026.8.0"
    with pytest.raises(VersionMismatch) as caught:
        check_versions(manager, other)
    message = str(caught.value)
    assert "cloudpickle 3.1.3" in message and "3.0.0" in message
    assert "dask " not in message, "only the differing package is named"


def test_version_mismatch_stops_before_any_process(tmp_path: Path) -> None:
    manager = fake_env(tmp_path / "m", dask="1.0", distributed="1.0", cloudpickle="1.0")
    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=PYTHON,
                      manager_python=manager / "bin" / "python", token="flo-test-mismatch")
    with pytest.raises(VersionMismatch, match="distributed 1.0 in the manager"):
        get_engine("dask-local").start(spec)
    assert not (tmp_path / "run" / "logs").exists(), "nothing may start after a mismatch"


def test_scheduler_and_workers_from_compute_spec(tmp_path: Path) -> None:
    token = f"flo-test-engine-{time.time_ns()}"
    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=PYTHON, manager_python=PYTHON,
                      workers=2, max_workers=2, threads=2, memory_mb=700, token=token)
    cluster = get_engine("dask-local").start(spec)
    try:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        scheduler = json.loads(cluster.scheduler_file.read_text())
        assert scheduler["address"] == cluster.scheduler_address
        workers = cluster_info(cluster.scheduler_file)
        assert len(workers) == 2
        assert all(w == [2, 700 * 10**6, "127.0.0.1"] for w in workers), workers
        assert cluster.environment()["DASK_SCHEDULER_ADDRESS"] == cluster.scheduler_address
        pids = set(cluster.worker_pids)
        assert {p.pid for p in cluster.worker_processes} <= pids and len(pids) >= 4, \
            "each worker is a nanny plus the worker process it starts"
        assert set(token_holders(token)) >= pids
    finally:
        survivors = cluster.stop()
    assert survivors == [] and token_holders(token) == []


def test_scheduler_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    if not NO_DISTRIBUTED.exists():
        pytest.skip("needs ~/.pyenv/versions/3.12.1 (a python without distributed)")
    token = f"flo-test-broken-{time.time_ns()}"
    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=NO_DISTRIBUTED, token=token,
                      start_timeout=60)
    with pytest.raises(EngineError, match="scheduler exited with status 1.*distributed"):
        get_engine("dask-local").start(spec)
    assert token_holders(token) == []


def test_launch_leaves_the_workers_to_wait_ready(tmp_path: Path) -> None:
    """`launch` returns once the scheduler address is known (the kernel starts meanwhile);
    `wait_ready` returns only when every worker is registered."""
    token = f"flo-test-launch-{time.time_ns()}"
    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=PYTHON, manager_python=PYTHON,
                      workers=2, max_workers=2, token=token)
    cluster = get_engine("dask-local").launch(spec)
    try:
        assert cluster.environment()["DASK_SCHEDULER_ADDRESS"].startswith("tcp://127.0.0.1:")
        assert cluster.pending is not None and cluster.ready_seconds is None
        cluster.wait_ready()
        with urllib.request.urlopen(f"{cluster.dashboard_address}/json/counts.json",
                                    timeout=10) as answer:
            assert json.loads(answer.read())["workers"] == 2
        assert cluster.pending is None and cluster.ready_seconds is not None
    finally:
        assert cluster.stop() == []
    assert token_holders(token) == []


def test_teardown_ends_a_wait_for_workers(tmp_path: Path) -> None:
    """A wait for workers that will never come (Ctrl-C while the kernel waits for them) ends
    with teardown, not at the start timeout."""
    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=PYTHON, manager_python=PYTHON,
                      token=f"flo-test-stop-wait-{time.time_ns()}")
    cluster = get_engine("dask-local").launch(spec)
    ended: list[str] = []

    def wait() -> None:
        try:
            DaskLocal.wait_for_workers(cluster, 3, timeout=300)
        except EngineError as exc:
            ended.append(str(exc))

    waiting = threading.Thread(target=wait, daemon=True)
    waiting.start()
    assert cluster.stop() == []
    waiting.join(timeout=60)
    assert not waiting.is_alive() and ended, "teardown ends the wait"


def test_no_cell_runs_before_before_cells_returns(tmp_path: Path) -> None:
    mark = tmp_path / "engine-ready"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"import os\nprint(os.path.exists({str(mark)!r}))")]
    source = tmp_path / "nb.ipynb"
    nbformat.write(notebook, source)
    out = tmp_path / "out.ipynb"
    done = execute(source, out, python=PYTHON, cwd=tmp_path, timeout=120,
                   before_cells=mark.touch)
    assert done.status == "complete"
    assert nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].strip() == "True"

    def no_workers() -> None:
        raise EngineError("waiting for 1 Dask worker(s) to register: worker 0 exited")

    out.unlink()
    with pytest.raises(EngineError, match="worker 0 exited"):
        execute(source, out, python=PYTHON, cwd=tmp_path, timeout=120, before_cells=no_workers)
    assert not out.exists(), "an engine that never got ready: no notebook written"


def test_scale_up_to_max_workers_when_the_scheduler_asks(tmp_path: Path) -> None:
    token = f"flo-test-adapt-{time.time_ns()}"
    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=PYTHON, workers=1, max_workers=2,
                      threads=1, token=token)
    cluster = get_engine("dask-local").start(spec)
    try:
        assert len(cluster.worker_processes) == 1
        # Enough queued work that the scheduler's adaptive target exceeds one worker.
        code = ("import time, sys; from distributed import Client\n"
                "with Client(scheduler_file=sys.argv[1], timeout=30) as c:\n"
                "    futures = c.map(time.sleep, [0.5] * 60, pure=False)\n"
                "    deadline = time.monotonic() + 60\n"
                "    while len(c.scheduler_info()['workers']) < 2:\n"
                "        assert time.monotonic() < deadline, 'no second worker in 60 s'\n"
                "        time.sleep(0.2)\n"
                "    c.cancel(futures)\n")
        done = subprocess.run([PYTHON, "-c", code, cluster.scheduler_file], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert len(cluster.worker_processes) == 2
    finally:
        cluster.stop()
    assert token_holders(token) == []


def test_parameters_after_the_tagged_cell_or_at_the_top() -> None:
    nb = nbformat.v4.new_notebook()
    tagged = nbformat.v4.new_code_cell("alpha = 1")
    tagged.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), tagged, nbformat.v4.new_code_cell("x")]
    values = {"alpha": parse_value("0.5"), "name": parse_value("hello world"),
              "sizes": parse_value("[1, 2]"), "flag": parse_value("True")}
    assert inject_parameters(nb, values) == 2
    cell = nb.cells[2]
    assert cell.metadata["tags"] == [INJECTED_TAG]
    namespace: dict = {}
    exec(cell.source, namespace)
    assert (namespace["alpha"], namespace["name"], namespace["sizes"], namespace["flag"]) == \
        (0.5, "hello world", [1, 2], True)
    assert inject_parameters(nb, {"alpha": 2}) == 2 and len(nb.cells) == 4, "replaced, not added"

    plain = nbformat.v4.new_notebook()
    plain.cells = [nbformat.v4.new_code_cell("x = 1")]
    assert inject_parameters(plain, {"x": 3}) == 0 and "x = 3" in plain.cells[0].source
    assert inject_parameters(plain, {}) == -1
