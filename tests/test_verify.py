"""flo-audit --verify / flo-audit verify (issue 13): real audits, environments built by uv from
PyPI pins in flo-run's cache, the notebook re-executed by flo-run's runner in a real kernel.

Each test verifies a copy of a shared audit's backpack (verify writes into summary.json). The
subprocesses get their own TMPDIR, so the throw-away folder (its environment cache too) can
be seen to go away.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import AuditRun, Scenario, flo_audit_argv

from auditor.backpack.session import read_session
from auditor.verify import (
    DIFFERS,
    FAILED,
    SAME,
    Normaliser,
    compare_notebooks,
    explain_file,
)

VERIFY_TIMEOUT_S = 600


def copy_backpack(run: AuditRun, tmp_path: Path) -> Path:
    assert run.returncode == 0, run.describe()
    copy = tmp_path / "backpack"
    shutil.copytree(run.out, copy)
    return copy


def verify(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run([*flo_audit_argv(), *args], capture_output=True, text=True, env=env,
                          timeout=VERIFY_TIMEOUT_S)


def leftovers(tmp: Path) -> list[str]:
    """Our throw-away folders left in TMPDIR, and live processes that name TMPDIR."""
    found = [p.name for p in tmp.glob("flo-verify-*")]
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(tmp) in line:
                found.append(f"{proc.pid}: {line[:160]}")
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_verify_reproduces_the_demo_in_a_throwaway_cache(
        audit_runs: Callable[..., AuditRun], tmp_path: Path) -> None:
    backpack = copy_backpack(audit_runs("import_names"), tmp_path)
    environment = (backpack / "software/environment.yml").read_bytes()
    done = verify(["verify", str(backpack), "--json"], tmp_path / "tmp")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "reproduced", result
    assert [c["outcome"] for c in result["cells"]] == [SAME] * 4
    assert result["rerun_status"] == "complete"
    assert not result["env_cache_kept"]
    assert result["envs"]["manager"]["builder"] == "uv"
    assert not result["envs"]["manager"]["from_cache"]  # fresh, from the backpack alone
    for step in ("building the manager environment", "running import_names.ipynb",
                 "comparing"):
        assert step in done.stderr, done.stderr
    summary = json.loads((backpack / "audit/summary.json").read_text())
    assert summary["verified"] is True and summary["verify"]["verdict"] == "reproduced"
    assert (backpack / "software/environment.yml").read_bytes() == environment
    assert not list((backpack / "audit").glob("*.part"))
    assert leftovers(tmp_path / "tmp") == []  # the cache and the run folder are gone


@pytest.mark.slow
def test_audit_verify_normalises_and_lists_what_really_differs(tmp_path: Path) -> None:
    """`flo-audit NB --verify`: a time, a PID, the folder, a temp folder, an address and a
    %time line differ in the raw outputs but not once normalised; a random number does."""
    scenario = Scenario("verify_outputs")
    workdir = tmp_path / scenario.name
    shutil.copytree(scenario.folder, workdir)
    out, cache = tmp_path / "backpack", tmp_path / "cache"
    done = verify([str(workdir / scenario.workflow), "-o", str(out), "--verify", "--keep",
                   "--cache-dir", str(cache), "--json"], tmp_path / "tmp")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["verify"]
    assert result["verdict"] == "reproduced with differences", result
    outcomes = {c["cell"]: c["outcome"] for c in result["cells"]}
    assert outcomes == {1: SAME, 2: SAME, 3: SAME, 4: DIFFERS}, result["cells"]
    diff = result["cells"][3]["diff"]
    assert len(diff) == 2 and diff[0].startswith("-[stdout] 0.") and diff[1].startswith("+")
    assert result["env_cache"] == str(cache) and any(cache.iterdir())
    kept = Path(result["kept"])
    audited = json.loads((out / "audit/executed.ipynb").read_text())["cells"][2]["outputs"]
    rerun = json.loads((kept / "rerun.ipynb").read_text())["cells"][2]["outputs"]
    assert audited != rerun  # the same cell really printed other values
    assert "0x7f" in json.dumps(audited) and str(workdir) in json.dumps(audited)
    shutil.rmtree(kept)


@pytest.mark.slow
def test_verify_names_the_distribution_the_trace_missed(
        audit_runs: Callable[..., AuditRun], tmp_path: Path) -> None:
    """The audit ran without plugins.txt, so tabulate (installed, unused) is not pinned; a
    plugins.txt added to the backpack's workflow/ later makes the re-run import it."""
    run = audit_runs("verify_missed_plugin")
    backpack = copy_backpack(run, tmp_path)
    assert run.environment.pip_entry("tabulate") is None
    (backpack / "workflow/plugins.txt").write_text("tabulate\n")
    done = verify(["verify", str(backpack)], tmp_path / "tmp")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "not reproduced" in done.stdout
    assert "ModuleNotFoundError" in done.stdout
    import tabulate  # the audited environment is this one (the fixture set-up)

    assert f"tabulate=={tabulate.__version__} in the audited environment" in done.stdout
    assert "never saw it imported" in done.stdout
    summary = json.loads((backpack / "audit/summary.json").read_text())
    assert summary["verified"] is False
    cell = summary["verify"]["cells"][1]
    assert cell["outcome"] == FAILED and cell["error"]["ename"] == "ModuleNotFoundError"
    assert leftovers(tmp_path / "tmp") == []


def test_verify_refuses_a_folder_that_is_not_a_backpack(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    done = verify(["verify", str(tmp_path / "notes")], tmp_path / "tmp")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a backpack written by flo-audit" in lines[0], done.stderr
    assert leftovers(tmp_path / "tmp") == []


@pytest.mark.slow
def test_ctrl_c_during_the_rerun_leaves_nothing(
        audit_runs: Callable[..., AuditRun], tmp_path: Path) -> None:
    backpack = copy_backpack(audit_runs("import_names"), tmp_path)
    summary = (backpack / "audit/summary.json").read_bytes()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([*flo_audit_argv(), "verify", str(backpack)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmp)})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + VERIFY_TIMEOUT_S
    seen = []
    while not any("running import_names.ipynb" in ln for ln in seen):
        assert time.monotonic() < deadline and proc.poll() is None, seen
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
    time.sleep(1)  # into the first cell (importing scikit-learn takes seconds)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert (backpack / "audit/summary.json").read_bytes() == summary
    assert not list((backpack / "audit").glob("*.part"))
    assert leftovers(tmp) == []


# --------------------------------------------------------------- the stage alone, no runs

def _cell(*outputs: dict, count: int | None = 1) -> dict:
    return {"cell_type": "code", "source": "x", "execution_count": count,
            "outputs": list(outputs)}


def _stream(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": text}


def test_normaliser_rewrites_what_differs_between_runs() -> None:
    norm = Normaliser.for_runs(notebook_dirs=["/home/ana/project", "/scratch/run-1/project"],
                               env_prefixes=["/home/ana/.venv", "/cache/envs/abc"])
    pairs = [
        ("<Probe at 0x7f6669fded50>", "<Probe at 0x7fe85cafc590>"),
        ("started 2026-12-06T20:33:23.603234", "started 2027-01-01 01:02:03"),
        ("pid 9834 on tcp://127.0.0.1:40123", "pid: 10167 on tcp://127.0.0.1:8786"),
        ("/home/ana/project/out.csv", "/scratch/run-1/project/out.csv"),
        ("/home/ana/.venv/lib/python3.11/site-packages/x.py:3: Warning",
         "/cache/envs/abc/lib/python3.11/site-packages/x.py:3: Warning"),
        ("scratch /tmp/tmpof04euw7 ok", "scratch /tmp/tmpgr5pnnbx ok"),
        ("Wall time: 21.1 ms, sys: 171 μs", "Wall time: 2.5 s, sys: 0 ns"),
    ]
    for left, right in pairs:
        assert left != right and norm(left) == norm(right), (norm(left), norm(right))
    assert norm("0.42543394183794014") != norm("0.20987670837732175")
    assert norm("answer 42 items") == "answer 42 items"


def test_compare_joins_stream_chunks_and_tells_status_from_outputs() -> None:
    norm = Normaliser.for_runs()
    audited = {"cells": [_cell(_stream("a\nb\n")), _cell(_stream("1\n")),
                         _cell({"output_type": "error", "ename": "KeyError", "evalue": "'k'"}),
                         _cell(count=None)]}
    rerun = {"cells": [_cell(_stream("a\n"), _stream("b\n")), _cell(_stream("2\n")),
                       _cell({"output_type": "error", "ename": "KeyError", "evalue": "'k'"}),
                       _cell(_stream("ran\n"))]}
    results = compare_notebooks(audited, rerun, norm)
    assert [r.outcome for r in results] == [SAME, DIFFERS, SAME, FAILED]
    assert results[1].diff == ["-[stdout] 1", "+[stdout] 2"]
    assert (results[3].audited, results[3].rerun) == ("not run", "ok")
    missing = compare_notebooks(audited, None, norm)
    assert [r.rerun for r in missing] == ["not run"] * 4


@pytest.mark.slow
def test_file_not_found_names_the_data_entry_or_says_the_audit_never_saw_it(
        audit_runs: Callable[..., AuditRun], tmp_path: Path) -> None:
    backpack = copy_backpack(audit_runs("verify_missed_plugin"), tmp_path)
    (backpack / "data/table.csv").write_text("n\n1\n")
    (backpack / "data/data.yml").write_text(
        "schema_version: 1.0\ndefault_profile: local_data\nprofiles:\n  local_data:\n"
        "    data:\n      - name: table\n        source_type: backpack\n"
        "        source: data/table.csv\n        target_location: inputs/table.csv\n")
    session = read_session(backpack / "audit")
    named = explain_file("inputs/table.csv", session=session, backpack=backpack)
    assert "data.yml entry 'table'" in named, named
    absolute = str(Path(session.cwd) / "inputs/table.csv")
    assert "entry 'table'" in explain_file(absolute, session=session, backpack=backpack)
    unseen = explain_file("other.csv", session=session, backpack=backpack)
    assert "the audit never saw other.csv read" in unseen, unseen


@pytest.mark.slow
def test_verify_deploys_workers_with_flo_runs_engine(
        audit_runs: Callable[..., AuditRun], tmp_path: Path) -> None:
    """A notebook that connects to a cluster (audited with --workers 2): the re-run gets a
    manager and a worker environment and real Dask workers from flo-run's dask-local engine."""
    backpack = copy_backpack(audit_runs("workers_connect"), tmp_path)
    done = verify(["verify", str(backpack), "--json"], tmp_path / "tmp")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "reproduced", result
    assert set(result["envs"]) == {"manager", "worker"}
    assert "starting 1 Dask worker(s) (dask-local)" in done.stderr
    assert result["phases"]["engine start"] > 0
    assert leftovers(tmp_path / "tmp") == []


@pytest.mark.slow
def test_a_pin_that_cannot_install_is_not_reproduced_and_named(
        audit_runs: Callable[..., AuditRun], tmp_path: Path) -> None:
    backpack = copy_backpack(audit_runs("verify_missed_plugin"), tmp_path)
    spec = backpack / "software/environment.yml"
    spec.write_text(spec.read_text().replace("  - pip:\n", "  - pip:\n      - tabulate==0.0.0\n"))
    done = verify(["verify", str(backpack), "--json"], tmp_path / "tmp")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["verdict"] == "not reproduced"
    assert result["explanation"].startswith("flo-run could not deploy the backpack")
    assert "tabulate==0.0.0" in result["explanation"], result["explanation"]
    assert all(c["rerun"] == "not run" for c in result["cells"])
    assert json.loads((backpack / "audit/summary.json").read_text())["verified"] is False
    assert leftovers(tmp_path / "tmp") == []
