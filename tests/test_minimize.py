"""flo-audit --minimize / flo-audit minimize (issue 13): real audits, real re-runs in uv-built
environments, the kernel side in real interpreters (3.11: importers only; 3.12: calls too).

The fixture library flohost (fixtures/packages, installed editable by `make setup`) imports
floextra and floplug when they are installed; the minimize_plugin notebook needs floplug (it
registers the format a cell uses) and never calls floextra.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, Scenario, flo_audit_argv

from auditor.minimize import Trial as MinTrial
from auditor.minimize import drop_lines, pin_key, run_budget, search
from auditor.optional import guard_at

TIMEOUT_S = 900
PY312 = Path.home() / ".pyenv/versions/3.12.1/bin/python3.12"


def flo_audit(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    tmp.mkdir(exist_ok=True)
    return subprocess.run([*flo_audit_argv(), *args], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp)}, timeout=TIMEOUT_S)


def leftovers(tmp: Path) -> list[str]:
    found = [p.name for p in tmp.iterdir() if p.name.startswith(("flo-minimize-",
                                                                 "flo-verify-"))]
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            line = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(tmp) in line:
                found.append(f"{proc.pid}: {line[:160]}")
        except psutil.Error:
            continue
    return found


def audit_copy(tmp_path: Path) -> tuple[Path, Path]:
    scenario = Scenario("minimize_plugin")
    workdir = tmp_path / scenario.name
    shutil.copytree(scenario.folder, workdir)
    return workdir / scenario.workflow, tmp_path / "backpack"


@pytest.mark.slow
def test_minimize_drops_the_unused_optional_import_and_keeps_the_plugin(tmp_path: Path) -> None:
    notebook, out = audit_copy(tmp_path)
    done = flo_audit([str(notebook), "-o", str(out), "--minimize", "--json"], tmp_path / "tmp")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verify"]["verdict"] == "reproduced"
    minimize = result["minimize"]
    assert {c["name"] for c in minimize["candidates"]} == {"floextra", "floplug"}
    assert all("try/except ImportError" in c["guard"] for c in minimize["candidates"])
    assert [d["name"] for d in minimize["dropped"]] == ["floextra"]
    assert [k["name"] for k in minimize["kept"]] == ["floplug"]
    assert "KeyError" in minimize["kept"][0]["why"]  # the run without it failed
    runs = minimize["runs"]
    assert len(runs) == 2 <= minimize["run_budget"] == run_budget(2) == 3
    assert runs[0]["candidates"] == ["floextra", "floplug"] and not runs[0]["passed"]
    assert runs[1]["candidates"] == ["floextra"] and runs[1]["passed"]
    assert minimize["proof"]["run"] == 2
    assert minimize["pins_after"] == minimize["pins_before"] - 1
    for step in ("minimize: run 1 of at most 3", "minimize: run 2: every cell the same"):
        assert step in done.stderr, done.stderr

    environment = (out / "software/environment.yml").read_text()
    assert "floextra" not in environment.split("name:", 1)[1]  # only the comment names it
    assert "# Minimized by flo-audit --minimize: 1 dropped, proven by re-run 2" in environment
    assert "floplug @ file:" in environment
    assert "floextra" not in (out / "software/requirements.txt").read_text()
    summary = json.loads((out / "audit/summary.json").read_text())
    assert summary["minimize"]["proof"]["run"] == 2 and summary["verified"] is True
    record = json.loads((out / "audit/minimize.json").read_text())
    assert record["files"]["software/environment.yml"] == ["floextra"]
    assert not list(out.rglob("*.part"))
    assert leftovers(tmp_path / "tmp") == []

    # derive repeats the choice: the candidates from hooks.jsonl, the removal from the record
    again = flo_audit(["derive", str(out), "-o", str(tmp_path / "again"), "--json"],
                      tmp_path / "tmp")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again/software/environment.yml").read_text() == environment
    derived = json.loads(again.stdout)["minimize"]
    assert [c["name"] for c in derived["candidates"]] == \
        [c["name"] for c in minimize["candidates"]]


@pytest.mark.slow
def test_ctrl_c_during_a_trial_changes_nothing(tmp_path: Path) -> None:
    notebook, out = audit_copy(tmp_path)
    done = flo_audit([str(notebook), "-o", str(out)], tmp_path / "tmp")
    assert done.returncode == 0, done.stderr
    before = {p: p.read_bytes() for p in (out / "software").iterdir()}
    tmp = tmp_path / "tmp"
    proc = subprocess.Popen([*flo_audit_argv(), "minimize", str(out)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmp)})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    deadline, seen = time.monotonic() + TIMEOUT_S, []
    while not any("minimize run 1: verify: building" in ln for ln in seen):
        assert time.monotonic() < deadline and proc.poll() is None, seen
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert {p: p.read_bytes() for p in (out / "software").iterdir()} == before
    assert not (out / "audit/minimize.json").exists()
    assert not list(out.rglob("*.part"))
    assert leftovers(tmp) == []


# --------------------------------------------------------------- the kernel side's evidence

KERNEL_SCRIPT = """
import json, runpy, sys
sys.path.insert(0, sys.argv[1])
records = []
watch = runpy.run_path(sys.argv[2])["import_watch"](lambda ev, f: records.append((ev, f)))
import host
host.use()
watch()
print(json.dumps(records))
"""


def _kernel_side_records(python: str, tmp_path: Path) -> list[tuple[str, dict]]:
    lib = tmp_path / "lib"
    (lib / "host").mkdir(parents=True)
    (lib / "host/__init__.py").write_text(
        "import importlib\n\ndef _optional(name):\n    try:\n"
        "        return importlib.import_module(name)\n    except ImportError:\n"
        "        return None\n\nquiet = _optional('quiet')\nimport busy\n\n"
        "def use():\n    return busy.work()\n")
    (lib / "quiet.py").write_text("def never():\n    return 1\n")
    (lib / "busy.py").write_text("def work():\n    return 2\n")
    done = subprocess.run([python, "-c", KERNEL_SCRIPT, str(lib),
                           str(REPO / "kernels/flo_imports.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [(ev, f) for ev, f in json.loads(done.stdout)]


def test_importer_records_name_the_helper_and_its_caller(tmp_path: Path) -> None:
    records = _kernel_side_records(sys.executable, tmp_path)
    importers = {f["module"]: f for ev, f in records if ev == "importer"}
    quiet = importers["quiet"]
    assert quiet["by"] == "host"
    assert [frame[1:] for frame in quiet["frames"]] == [[5, "_optional"], [9, "<module>"]]
    assert importers["busy"]["frames"][0][1:] == [10, "<module>"]
    assert guard_at(quiet["frames"][0][0], 5) == \
        "guards it with try/except ImportError (line 4)"
    assert guard_at(importers["busy"]["frames"][0][0], 10) is None


def test_guards_are_kept_between_audits_while_the_source_is_unchanged(tmp_path: Path) -> None:
    """A library's guard is read once and answered from the kept file after; a source whose
    size or mtime differs is read again."""
    from auditor.optional import KeptGuards

    source = tmp_path / "lib.py"
    guarded = "try:\n    import extra\nexcept ImportError:\n    extra = None\n"
    source.write_text(guarded)
    kept = tmp_path / "cache" / "guards.json"
    first = KeptGuards(kept)
    phrase = "guards it with try/except ImportError (line 1)"
    assert first.at(str(source), 2) == phrase
    first.save()
    stamp = source.stat()
    unguarded = "if 1:\n    import extra\nelse:\n    extra = None\n"
    unguarded += "#" * (len(guarded) - len(unguarded) - 1) + "\n"  # the same size
    source.write_text(unguarded)  # the same size; its mtime put back: still the kept answer
    os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert KeptGuards(kept).at(str(source), 2) == phrase
    os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    assert KeptGuards(kept).at(str(source), 2) is None
    kept.write_text("{torn")
    assert KeptGuards(kept).at(str(source), 2) is None  # an unreadable file: read afresh


@pytest.mark.skipif(not PY312.exists(), reason="needs CPython 3.12 for sys.monitoring")
def test_calls_records_list_the_files_whose_functions_ran(tmp_path: Path) -> None:
    records = _kernel_side_records(str(PY312), tmp_path)
    called = {f for ev, fields in records if ev == "calls" for f in fields["files"]}
    assert str(tmp_path / "lib/busy.py") in called
    assert str(tmp_path / "lib/quiet.py") not in called  # imported, never called


# --------------------------------------------------------------- the stage alone, no runs

def test_guards_read_with_ast(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import contextlib\nimport importlib.util\n"
        "try:\n    import a\nexcept (ValueError, ModuleNotFoundError):\n    a = None\n"
        "with contextlib.suppress(ImportError):\n    import b\n"
        "if importlib.util.find_spec('c'):\n    import c\n"
        "try:\n    import d\nexcept KeyError:\n    pass\n"
        "import e\n")
    said = {line: guard_at(str(source), line) for line in (4, 8, 10, 12, 15)}
    assert said[4] == "guards it with try/except ImportError (line 3)"
    assert said[8] == "guards it with contextlib.suppress(ImportError) (line 7)"
    assert said[10] == "imports it only after a find_spec check (line 9)"
    assert said[12] is None and said[15] is None


def test_search_halves_within_the_budget_and_keeps_what_a_run_needs() -> None:
    def runner(needed: set[str]):
        calls: list[frozenset[str]] = []

        def run(removal: frozenset[str]) -> MinTrial:
            calls.append(removal)
            return MinTrial(removal, not (removal & needed), {"run": len(calls)})
        return run, calls

    keys = [f"p{i}" for i in range(8)]
    run, calls = runner({"p5"})
    found = search(keys, run)
    assert found.removed == frozenset(keys) - {"p5"} and found.needed == ["p5"]
    assert len(calls) <= run_budget(8) == 7
    assert found.proof is not None and found.proof.removed == found.removed

    run, calls = runner(set())
    assert search(keys, run).removed == frozenset(keys) and len(calls) == 1

    run, calls = runner(set(keys))  # every one needed: the budget stops the search
    found = search(keys, run)
    assert found.removed == frozenset() and len(calls) == 7 and found.untried


def test_drop_lines_removes_pins_from_both_spec_formats() -> None:
    environment = ("# Drafted\nname: x\ndependencies:\n  - python=3.11.7\n"
                   "  - conda-forge::numpy==2.1.3  # used\n  - pip\n  - pip:\n"
                   "      - pandas==2.2.3  # used in cell 1\n"
                   "      - floextra @ file:///src/floextra  # used in cell 1\n")
    out = drop_lines(environment, ["numpy", "floextra"], ["Minimized: 2 dropped"])
    assert out.splitlines()[:2] == ["# Drafted", "# Minimized: 2 dropped"]
    assert "numpy" not in out and "floextra" not in out and "pandas==2.2.3" in out
    assert "  - pip:" in out and "  - python=3.11.7" in out
    assert pin_key("pandas==2.2.3  # used") == "pandas"
    assert pin_key("# comment") is None
