"""flo-run BP end to end through the CLI: environments built from the backpack alone (uv, real
PyPI pins), a real Dask scheduler and workers, a real kernel, real JupyterLab.

One environment cache serves the whole module, and the hand-written backpacks share their
manager spec, so the suite builds four environments at most (import_names; the Dask manager;
the Dask worker; the Dask manager with JupyterLab).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

FLO_RUN = [sys.executable, "-m", "provisioner.cli"]
RUN_TIMEOUT_S = 900
DASK_PINS = ["dask==2026.8.0", "distributed==2026.8.0", "cloudpickle==3.1.3"]
needs_py311 = pytest.mark.skipif(
    not (Path.home() / ".pyenv/versions/3.11.7/bin/python").exists()
    and not sys.version.startswith("3.11.7"), reason="needs a Python 3.11.7")


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("flo-run")
    return {"cache": base / "cache", "scratch": base / "scratch", "base": base}


def flo_run(args: list[str], places: dict[str, Path], *, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
    argv = [*FLO_RUN, *args, "--cache-dir", str(places["cache"]),
            "--scratch-dir", str(places["scratch"])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          cwd=cwd or places["base"])


def result_of(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.stdout.strip(), f"no JSON result (exit {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def leftovers(*roots: Path) -> list[str]:
    """Processes whose command line mentions a folder of this test (envs, run folders)."""
    found = []
    marks = [str(r) for r in roots]
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(m in line for m in marks):
                found.append(f"{proc.pid}: {line[:200]}")
        except psutil.Error:
            continue
    return found


def write_env(path: Path, pins: list[str]) -> None:
    lines = "".join(f"      - {p}\n" for p in pins)
    path.write_text(f"name: t\ndependencies:\n  - python=3.11.7\n  - pip\n  - pip:\n{lines}")


def hand_backpack(root: Path, cells: list[str], *, worker_pins: list[str] | None = None,
                  min_workers: int = 1, parameters: str | None = None) -> Path:
    """A backpack written by hand in the Floability layout."""
    for sub in ("workflow", "software", "compute"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    if parameters is not None:
        tagged = nbformat.v4.new_code_cell(parameters)
        tagged.metadata["tags"] = ["parameters"]
        nb.cells.append(tagged)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, root / "workflow" / f"{root.name}.ipynb")
    write_env(root / "software" / "environment.yml", DASK_PINS)
    if worker_pins is not None:
        write_env(root / "software" / "worker-environment.yml", worker_pins)
    (root / "compute" / "compute.yml").write_text(
        "vine_factory_config:\n"
        f"  min-workers: {min_workers}\n  max-workers: {min_workers}\n"
        "  cores: 1\n  memory: 1024\n  disk: 2000\n")
    return root


def stream_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


@needs_py311
def test_audited_backpack_runs_and_second_run_reuses_envs(audit_runs, places) -> None:
    audited = audit_runs("import_names")
    assert audited.returncode == 0, audited.describe()
    out = places["base"] / "import_names-run.ipynb"

    first = result_of(flo_run([str(audited.out), "--execute", "-o", str(out), "--json"],
                              places))
    assert first["status"] == "complete", first
    executed = nbformat.read(out, as_version=4)
    reference = nbformat.read(audited.path("audit/executed.ipynb"), as_version=4)
    pairs = zip(executed.cells, reference.cells, strict=True)
    code = [(a, b) for a, b in pairs if a.cell_type == "code"]
    assert code and all(stream_text(a) == stream_text(b) for a, b in code), \
        "deterministic cells must print what they printed under flo-audit"
    # the audit saw no worker: engine notebook, and no worker environment of ours
    assert set(first["envs"]) == {"manager"}, first["envs"]
    assert first["skipped_envs"] == {"worker": "engine notebook starts no workers"}

    second = result_of(flo_run([str(audited.out), "--execute", "-o", str(out), "--json"],
                               places))
    assert second["status"] == "complete"
    assert second["envs"]["manager"]["from_cache"]
    assert second["envs"]["manager"]["path"] == first["envs"]["manager"]["path"]
    assert leftovers(places["cache"], places["scratch"]) == []
    assert not any(places["scratch"].glob("run-*")), "run folders are removed without --keep"


#: A plain script (no `# %%`: one cell) using what fixtures/notebooks/py_workflow uses, so both
#: backpacks pin the same packages and share one environment.
PLAIN_SCRIPT = """import yaml
from more_itertools import chunked

batches = list(chunked(range(7), 3))
print(yaml.safe_dump({'batches': batches}), end='')
print(__file__)
"""


def audit_script(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auditor", str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


@needs_py311
def test_percent_format_script_runs_as_the_audit_ran_it(audit_runs, places) -> None:
    """A `.py` workflow (`# %%` cells, one markdown) audited by flo-audit, then executed by
    flo-run: an executed notebook whose cells are the audit's, printing what they printed."""
    audited = audit_runs("py_workflow")
    assert audited.returncode == 0, audited.describe()
    assert (audited.out / "workflow" / "py_workflow.py").is_file()
    out = places["base"] / "py_workflow-run.ipynb"
    result = result_of(flo_run([str(audited.out), "--execute", "-o", str(out), "--json"],
                               places))
    assert result["status"] == "complete", result
    executed = nbformat.read(out, as_version=4)
    reference = nbformat.read(audited.path("audit/executed.ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in executed.cells] == \
        [(c.cell_type, c.source) for c in reference.cells], "the same cells, numbered alike"
    assert [c.cell_type for c in executed.cells] == ["markdown", "code", "code"]
    assert stream_text(executed.cells[2]) == "batches:\n- - 0\n  - 1\n  - 2\n- - 3\n  - 4\n" \
        "  - 5\n- - 6\n\n"
    assert stream_text(executed.cells[2]) == stream_text(reference.cells[2])
    assert leftovers(places["cache"], places["scratch"]) == []


@needs_py311
def test_plain_script_runs_as_one_cell_into_the_default_output(places) -> None:
    """A `.py` workflow without `# %%` markers is one cell, under flo-audit and flo-run alike;
    without -o the executed notebook is ./NAME-executed.ipynb; `__file__` is set as under the
    audit (to the script's copy in the run folder)."""
    source = places["base"] / "plain-src" / "plain.py"
    source.parent.mkdir()
    source.write_text(PLAIN_SCRIPT)
    bp = places["base"] / "plain-bp"
    audited = audit_script(source, bp)
    assert audited.returncode == 0, audited.stdout[-2000:] + audited.stderr[-2000:]
    cwd = places["base"] / "plain-cwd"
    cwd.mkdir()
    result = result_of(flo_run([str(bp), "--execute", "--json"], places, cwd=cwd))
    assert result["status"] == "complete", result
    assert result["output"] == str(cwd / "plain-executed.ipynb")
    executed = nbformat.read(cwd / "plain-executed.ipynb", as_version=4)
    assert [c.cell_type for c in executed.cells] == ["code"]
    assert executed.cells[0].source == PLAIN_SCRIPT.rstrip("\n")
    *dumped, file = stream_text(executed.cells[0]).splitlines()
    assert dumped == ["batches:", "- - 0", "  - 1", "  - 2", "- - 3", "  - 4", "  - 5", "- - 6"]
    assert Path(file).name == "plain.py" and Path(file) != source
    assert file.startswith(str(places["scratch"])), "the copy in the run folder"
    assert leftovers(places["cache"], places["scratch"]) == []


@needs_py311
def test_plain_client_runs_on_workers_of_the_worker_env(places) -> None:
    bp = hand_backpack(places["base"] / "client", [
        "import json, os, sys\nfrom distributed import Client\n\nclient = Client()\n"
        "def where(i):\n    import os, sys\n    return os.getpid(), sys.prefix\n\n"
        "found = client.gather(client.map(where, range(n_tasks), pure=False))\n"
        "print(json.dumps({'tasks': found, 'kernel': [os.getpid(), sys.prefix],\n"
        "                  'address': os.environ['DASK_SCHEDULER_ADDRESS']}))",
        # commands run by the kernel and by tasks come from their own environments
        "import subprocess\nprobe = ['python', '-c', 'import sys; print(sys.prefix)']\n"
        "def shell(_):\n    import subprocess\n"
        "    return subprocess.run(probe, capture_output=True, text=True).stdout.strip()\n"
        "print(json.dumps([subprocess.run(probe, capture_output=True, text=True).stdout.strip(),"
        " client.submit(shell, 0, pure=False).result()]))",
    ], worker_pins=[*DASK_PINS, "tabulate==0.9.0"], min_workers=2, parameters="n_tasks = 2")
    out = places["base"] / "client-run.ipynb"
    done = flo_run([str(bp), "--execute", "-o", str(out), "-p", "n_tasks", "8", "--json"],
                   places)
    result = result_of(done)
    assert result["status"] == "complete", result
    seen = json.loads(stream_text(nbformat.read(out, as_version=4).cells[2]))
    worker_env = result["envs"]["worker"]["path"]
    manager_env = result["envs"]["manager"]["path"]
    assert worker_env != manager_env
    assert len(seen["tasks"]) == 8, "the -p value reached the notebook as an int"
    assert {prefix for _, prefix in seen["tasks"]} == {worker_env}
    assert seen["kernel"][1] == manager_env, "the kernel runs in the manager environment"
    worker_pids = set(result["cluster"]["worker_pids"])
    assert {pid for pid, _ in seen["tasks"]} <= worker_pids
    assert seen["kernel"][0] not in worker_pids
    assert seen["address"] == result["cluster"]["scheduler_address"]
    on_path = json.loads(stream_text(nbformat.read(out, as_version=4).cells[3]))
    assert on_path == [manager_env, worker_env], "PATH starts with each role's environment"
    assert result["cluster"]["workers"] == 2
    assert leftovers(places["cache"], places["scratch"]) == []


@needs_py311
def test_floability_layout_with_data_profiles_validates_and_runs(places) -> None:
    bp = hand_backpack(places["base"] / "floability", [
        "import hashlib\nfrom pathlib import Path\n\n"
        "text = Path('inputs/measurements.csv').read_text()\n"
        "print(sum(int(line.split(',')[1]) for line in text.splitlines()[1:]))",
    ])
    payload = "name,value\na,1\nb,2\nc,39\n"
    (bp / "data").mkdir()
    (bp / "data" / "measurements.csv").write_text(payload)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    (bp / "data" / "data.yml").write_text(
        "schema_version: 1.0\ndefault_profile: local_data\nprofiles:\n"
        "  local_data:\n    policy: {retry_attempts: 2, timeout: 30}\n    data:\n"
        "      - name: measurements\n        source_type: backpack\n"
        "        source: data/measurements.csv\n"
        "        target_location: inputs/measurements.csv\n"
        f"        expected_size: {len(payload)}\n        checksum: sha256:{digest}\n"
        "  remote:\n    data: []\n")
    (bp / "compute" / "compute.yml").write_text(
        "vine_factory_config:\n  min-workers: 1\n  max-workers: 3\n  cores: 2\n"
        "  memory: 2048\n  disk: 4000\n")
    check = subprocess.run([*FLO_RUN, "validate", str(bp), "--json"], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0 and json.loads(check.stdout)["valid"], check.stdout
    out = places["base"] / "floability-run.ipynb"
    done = flo_run([str(bp), "--execute", "-o", str(out), "--json"], places)
    result = result_of(done)
    assert result["status"] == "complete", result
    assert stream_text(nbformat.read(out, as_version=4).cells[0]).strip() == "42"
    assert leftovers(places["cache"], places["scratch"]) == []


@needs_py311
def test_failing_cell_writes_the_notebook_and_names_the_cell(places) -> None:
    bp = hand_backpack(places["base"] / "fails", [
        "x = 1", "raise ValueError('deliberate failure')", "print('never')"])
    out = places["base"] / "fails-run.ipynb"
    done = flo_run([str(bp), "--execute", "-o", str(out)], places)
    assert done.returncode == 1, done.stderr
    assert "cell 1 raised ValueError: deliberate failure" in done.stderr, done.stderr
    executed = nbformat.read(out, as_version=4)
    errors = [o for o in executed.cells[1].outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "ValueError"
    assert executed.cells[2].get("outputs") == [], "cells after the failure did not run"
    assert leftovers(places["cache"], places["scratch"]) == []


@needs_py311
def test_interactive_lab_answers_and_ctrl_c_stops_everything(places) -> None:
    bp = hand_backpack(places["base"] / "lab", ["print(1)"])
    argv = [*FLO_RUN, str(bp), "--cache-dir", str(places["cache"]), "--scratch-dir",
            str(places["scratch"])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=places["base"])
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    url = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while url is None:
            assert proc.poll() is None, f"flo-run exited {proc.returncode}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no JupyterLab URL printed in time"
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith("JupyterLab: "):
                url = line.split(" ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and "token=" in url
        base, token = url.split("/lab/tree/lab.ipynb?token=")  # it opens the notebook itself
        with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=10) as answer:
            assert answer.status == 200 and "kernels" in json.loads(answer.read())
        with urllib.request.urlopen(f"{base}/api/contents/lab.ipynb?token={token}&content=0",
                                    timeout=10) as answer:
            assert json.loads(answer.read())["type"] == "notebook"
        assert leftovers(places["scratch"]), "Jupyter and the workers run in the run folder"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130, proc.stderr.read()
    assert leftovers(places["cache"], places["scratch"]) == []


def test_invalid_backpack_fails_before_any_environment_work(places) -> None:
    bad = places["base"] / "empty"
    bad.mkdir()
    before = sorted(places["cache"].iterdir()) if places["cache"].exists() else []
    done = flo_run([str(bad), "--execute"], places)
    assert done.returncode == 2 and "invalid backpack" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, "one line that says what to do"
    after = sorted(places["cache"].iterdir()) if places["cache"].exists() else []
    assert after == before, "validation runs before any environment is built"
    assert not any(places["scratch"].glob("run-*")), "the run folder is removed"


def token_holders(flo_run_pid: int) -> list[str]:
    """Processes carrying the cleanup token of the engine started by flo-run `flo_run_pid`."""
    from auditor.common.tree import TOKEN_VARIABLE

    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            token = proc.environ().get(TOKEN_VARIABLE, "")
            if (token.startswith(f"flo-run-{flo_run_pid}-")
                    and proc.info["status"] != psutil.STATUS_ZOMBIE):
                found.append(f"{proc.pid}: {' '.join(proc.cmdline())[:200]}")
        except psutil.Error:
            continue
    return found


@needs_py311
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_execute_stops_promptly_on_a_signal_mid_cell(places, signum) -> None:
    """A signal while a cell runs: exit 130 within seconds, one line, the notebook written as
    far as it ran, and no kernel, worker or scheduler left. The SIGTERM case starts flo-run
    with SIGINT ignored, as a non-interactive shell starts a background job."""
    name = f"stopped-{signum.name.lower()}"
    marker = places["base"] / f"{name}.json"
    marker.unlink(missing_ok=True)
    bp = hand_backpack(places["base"] / name, [
        "import json, os\nfrom distributed import Client\n\nclient = Client()\n"
        "workers = list(client.run(os.getpid).values())\nprint(len(workers))",
        f"import pathlib, time\npart = pathlib.Path({str(marker)!r} + '.part')\n"
        "part.write_text(json.dumps({'kernel': os.getpid(), 'workers': workers}))\n"
        f"part.rename({str(marker)!r})\ntime.sleep(600)",
        "print('never')"])
    out = places["base"] / f"{name}-run.ipynb"
    argv = [*FLO_RUN, str(bp), "--execute", "-o", str(out), "--cache-dir",
            str(places["cache"]), "--scratch-dir", str(places["scratch"])]
    sigint = signal.SIG_IGN if signum == signal.SIGTERM else signal.SIG_DFL  # not inherited
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=places["base"],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not marker.exists():
            assert proc.poll() is None, f"flo-run exited {proc.returncode}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the sleeping cell never started"
            time.sleep(0.2)
        started = json.loads(marker.read_text())
        assert started["workers"] and token_holders(proc.pid), "kernel and workers run"
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # the test failed: still let flo-run stop what it started
            proc.terminate()
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert time.monotonic() - sent < 30
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"flo-run: interrupted ({signum.name}); the kernel, workers and "
                           "scheduler were stopped"), err
    assert str(out) in last and "Traceback" not in err, err
    executed = nbformat.read(out, as_version=4)
    assert stream_text(executed.cells[0]).strip() == "1", "cells before the signal kept"
    assert executed.cells[2].get("outputs") == [], "nothing ran after the signal"
    gone = [pid for pid in [started["kernel"], *started["workers"]] if psutil.pid_exists(pid)
            and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert gone == [], "kernel and workers are stopped"
    assert token_holders(proc.pid) == []
    assert leftovers(places["cache"], places["scratch"]) == []
    assert not any(places["scratch"].glob("run-*")), "the run folder is removed"


def test_notebook_that_starts_its_own_cluster_is_not_pointed_at_ours(places) -> None:
    """`Client(n_workers=...)` refuses its keywords when DASK_SCHEDULER_ADDRESS is set: a
    backpack whose audit saw the notebook start its own workers runs with engine notebook."""
    folder = places["base"] / "own-cluster"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "import sys\nfrom dask.distributed import Client",
        "client = Client(n_workers=1, threads_per_worker=1, processes=True,"
        " dashboard_address=None)",
        "where = client.submit(lambda: sys.prefix, pure=False).result()\nprint(where)",
        "client.close()")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, folder / "own.ipynb")
    bp = places["base"] / "own-bp"
    audited = subprocess.run([sys.executable, "-m", "auditor", str(folder / "own.ipynb"), "-o",
                              str(bp)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert audited.returncode == 0, audited.stderr
    out = places["base"] / "own-run.ipynb"
    result = result_of(flo_run([str(bp), "--execute", "-o", str(out), "--json"], places))
    assert result["status"] == "complete", result
    assert any(n.startswith("engine notebook") for n in result["notes"]), result["notes"]
    assert not result["cluster"]["scheduler_address"]
    printed = stream_text(nbformat.read(out, as_version=4).cells[2]).strip()
    assert printed == str(Path(result["envs"]["manager"]["path"])), \
        "the notebook's own workers run in the manager environment"
    assert leftovers(places["cache"], places["scratch"]) == []


def test_auto_engine_follows_the_audit() -> None:
    from auditor.backpack.summary import Summary
    from provisioner.run import choose_engine, flagged_secrets

    def summary(**parts: object) -> Summary:
        return Summary.from_json({"schema": 1, "status": "complete", **parts})

    own = summary(roles={"worker": {"processes": 3, "started_by": "notebook"}})
    pool = summary(roles={"worker": {"processes": 4, "started_by": "flo-audit --workers"}})
    assert choose_engine("auto", own) == "notebook"
    assert choose_engine("auto", pool) == "dask-local"
    assert choose_engine("auto", None) == "dask-local"  # hand-written: no audit
    idle = summary(roles={"worker": {"processes": 0, "started_by": None}})
    flagged = summary(data={"secrets": [{"path": "/home/u/.aws/credentials", "note": "..."}],
                            "signed_urls": [{"url": "https://b.s3.example/x.csv"}]})
    line = flagged_secrets(flagged)
    assert line is not None and "2 secret(s)" in line and ".aws/credentials" in line
    assert flagged_secrets(own) is None
    assert choose_engine("auto", idle) == "notebook"  # audited: no worker ran
    assert choose_engine("slurm", own) == "slurm"  # asked for: obeyed


def test_data_named_above_the_notebook_is_found_by_kernel_and_workers(places) -> None:
    """A notebook in project/notebooks/ reading '../data/shared.csv' (kernel and Dask tasks):
    the audit keeps the relative target, and flo-run runs the notebook one folder down in the
    run folder so that the same relative path reaches the fetched copy."""
    project = places["base"] / "climbing"
    (project / "data").mkdir(parents=True)
    (project / "notebooks").mkdir()
    (project / "data" / "shared.csv").write_text("a\nb\nc\n")
    (project / "src" / "helpers").mkdir(parents=True)  # the project's code, beside notebooks/
    (project / "src" / "helpers" / "__init__.py").write_text("def triple(x):\n    return 3 * x\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "from distributed import Client\nclient = Client()",
        "import sys\nsys.path.insert(0, '../src')\nfrom helpers import triple\nprint(triple(3))",
        "print(len(open('../data/shared.csv').read().split()))",
        "def count(_):\n    return len(open('../data/shared.csv').read().split())\n"
        "print(client.gather(client.map(count, range(2), pure=False)))",
        "client.close()",
        "import os\nos.makedirs('../results', exist_ok=True)\n"
        "open('../results/summary.txt', 'w').write('done')")])
    nbformat.write(nb, project / "notebooks" / "climb.ipynb")
    bp = places["base"] / "climb-bp"
    audited = subprocess.run([sys.executable, "-m", "auditor", str(project / "notebooks" /
                              "climb.ipynb"), "-o", str(bp), "--workers", "1"],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert audited.returncode == 0, audited.stdout[-2000:] + audited.stderr[-2000:]
    data = yaml.safe_load((bp / "data" / "data.yml").read_text())
    targets = {e["target_location"] for e in data["profiles"][data["default_profile"]]["data"]}
    assert targets == {"../data/shared.csv", "../src"}, data

    out = places["base"] / "climb-run.ipynb"
    result = result_of(flo_run([str(bp), "--execute", "-o", str(out), "--json", "--keep"],
                               places))
    assert result["status"] == "complete", result
    run_dir, notebook_dir = Path(result["run_dir"]), Path(result["notebook_dir"])
    # one folder down, named as the notebook's was; its output above it stays in the run
    assert notebook_dir == run_dir / "notebooks" and (run_dir / "data" / "shared.csv").is_file()
    assert (run_dir / "results" / "summary.txt").read_text() == "done"
    assert not (places["scratch"] / "results").exists(), "nothing written outside the run"
    executed = nbformat.read(out, as_version=4)
    assert stream_text(executed.cells[1]).strip() == "9", "the project's code is found"
    assert stream_text(executed.cells[2]).strip() == "3"
    assert stream_text(executed.cells[3]).strip() == "[3, 3]", "workers read it too"
    assert leftovers(places["cache"], places["scratch"]) == []


def _still_running(pids: list[int], within: float) -> list[str]:
    """The processes of `pids` left after a bounded wait for their parent-death signal."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid}: {' '.join(proc.cmdline())[:200]}")
            except psutil.Error:
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@needs_py311
def test_sigkill_mid_cell_leaves_nothing_running_and_the_next_run_sweeps(places) -> None:
    """SIGKILL runs no teardown: kernel, scheduler, workers and the workers' own processes die
    by their parent-death signal, and the next flo-run removes the run folder left behind."""
    marker = places["base"] / "sigkill.json"
    marker.unlink(missing_ok=True)
    bp = hand_backpack(places["base"] / "sigkill", [
        "import json, os\nfrom distributed import Client\n\nclient = Client()\n"
        "workers = list(client.run(os.getpid).values())",
        f"import pathlib, time\npart = pathlib.Path({str(marker)!r} + '.part')\n"
        "part.write_text(json.dumps({'kernel': os.getpid(), 'workers': workers}))\n"
        f"part.rename({str(marker)!r})\ntime.sleep(600)"])
    scratch = places["base"] / "sigkill-scratch"  # this test's run folders only
    tmp = places["base"] / "sigkill-tmp"  # and its temporary folder (the kernelspec's)
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp)}
    argv = [*FLO_RUN, str(bp), "--execute", "-o", str(places["base"] / "sigkill-run.ipynb"),
            "--cache-dir", str(places["cache"]), "--scratch-dir", str(scratch)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=places["base"], env=env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not marker.exists():
            assert proc.poll() is None, f"flo-run exited {proc.returncode}: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the sleeping cell never started"
            time.sleep(0.2)
        started = json.loads(marker.read_text())
        descendants = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert started["kernel"] in descendants and set(started["workers"]) <= set(descendants)
        assert len(descendants) >= 4, "kernel, scheduler, nanny and worker run under flo-run"
    finally:
        proc.kill()
        proc.communicate()
    assert _still_running(descendants, 10) == [], "nothing flo-run started outlives it"
    left = list(scratch.glob("run-*"))
    assert len(left) == 1, "SIGKILL leaves the run folder"
    assert len(list(tmp.glob("flo-run-kernelspec-*"))) == 1, "and the kernelspec folder"

    quick = hand_backpack(places["base"] / "after-sigkill", ["print(1)"])
    done = subprocess.run([*FLO_RUN, str(quick), "--execute", "-o",
                           str(places["base"] / "after-sigkill-run.ipynb"), "--cache-dir",
                           str(places["cache"]), "--scratch-dir", str(scratch)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          cwd=places["base"], env=env)
    assert done.returncode == 0, done.stderr
    assert list(scratch.glob("run-*")) == [], "the next run removes the killed run's folder"
    assert list(tmp.glob("flo-run-kernelspec-*")) == [], "and its kernelspec folder"
