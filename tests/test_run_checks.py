"""flo-run says no before it deploys, and builds only what it uses.

- A workflow that will not load (a corrupted notebook) stops `flo-run --execute` with exit 2
  and one line before data, environments or engine: nothing lands in the cache.
- Interactive mode on a `.py` workflow without jupytext in the manager spec: one line, nothing
  built.
- A kernel that cannot start (a real venv without ipykernel) is one `KernelStartFailed` line
  naming the environment and its kernel log; no executed notebook is written.
- Engine `notebook` starts no workers of ours: the worker environment is not built, and the
  summary says so.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import nbformat
import pytest

from provisioner import runner

REPO = Path(__file__).resolve().parents[1]
FLO_RUN = [sys.executable, "-m", "provisioner.cli"]
PY311 = Path.home() / ".pyenv/versions/3.11.7/bin/python"
needs_py311 = pytest.mark.skipif(not PY311.exists() and not sys.version.startswith("3.11.7"),
                                 reason="needs a Python 3.11.7")


def flo_run(args: list[str], tmp: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    argv = [*FLO_RUN, *args, "--cache-dir", str(tmp / "cache"),
            "--scratch-dir", str(tmp / "scratch")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=tmp)


def backpack(root: Path, workflow: str, text: str, worker_pins: list[str] | None = None) -> Path:
    """A hand-written backpack whose manager spec pins nothing but Python (the environment is
    the interpreter plus ipykernel: quick to build)."""
    for sub in ("workflow", "software", "compute"):
        (root / sub).mkdir(parents=True)
    (root / "workflow" / workflow).write_text(text)
    (root / "software" / "environment.yml").write_text(
        "name: t\ndependencies:\n  - python=3.11.7\n")
    if worker_pins is not None:
        pins = "".join(f"      - {p}\n" for p in worker_pins)
        (root / "software" / "worker-environment.yml").write_text(
            f"name: w\ndependencies:\n  - python=3.11.7\n  - pip\n  - pip:\n{pins}")
    (root / "compute" / "compute.yml").write_text(
        "vine_factory_config:\n  min-workers: 1\n  max-workers: 1\n  cores: 1\n"
        "  memory: 1024\n  disk: 2000\n")
    return root


def built_envs(tmp: Path) -> list[str]:
    cache = tmp / "cache"
    return sorted(p.name for p in cache.iterdir() if p.is_dir()) if cache.exists() else []


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_corrupted_notebook_stops_execute_before_anything_is_built(tmp_path: Path) -> None:
    text = json.dumps(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("print(1)")]))
    bp = backpack(tmp_path / "corrupt", "corrupt.ipynb", text[: len(text) // 2])  # cut short
    done = flo_run([str(bp), "--execute"], tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_line(done)
    assert "invalid backpack" in line and "workflow/corrupt.ipynb" in line, line
    assert "not JSON" in line, line
    assert built_envs(tmp_path) == [], "no environment was built"
    assert not list((tmp_path / "scratch").glob("run-*")), "the run folder is removed"
    assert not list(tmp_path.glob("*-executed.ipynb")), "no notebook written"


def test_interactive_script_without_jupytext_says_so_before_building(tmp_path: Path) -> None:
    bp = backpack(tmp_path / "script", "script.py", "# %%\nprint(1)\n")
    done = flo_run([str(bp)], tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_line(done)
    assert "interactive mode needs a notebook" in line and "--execute" in line, line
    assert "script.py" in line and "jupytext" in line, line
    assert built_envs(tmp_path) == []


def test_output_must_be_a_notebook(tmp_path: Path) -> None:
    bp = backpack(tmp_path / "script", "script.py", "print(1)\n")
    done = flo_run([str(bp), "--execute", "-o", "out.py"], tmp_path)
    assert done.returncode == 2 and ".ipynb" in one_line(done), done.stderr
    assert built_envs(tmp_path) == []


def test_kernel_that_cannot_start_names_env_and_log_and_writes_nothing(tmp_path: Path) -> None:
    env = tmp_path / "no-ipykernel"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    python = env / "bin" / "python"
    probe = subprocess.run([python, "-m", "ipykernel_launcher", "--help"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0, "the hand-made venv must not be able to start a kernel"
    script = tmp_path / "work.py"
    script.write_text("# %%\nprint('never')\n")
    out, log = tmp_path / "out.ipynb", tmp_path / "logs" / "kernel.log"
    with pytest.raises(runner.KernelStartFailed) as info:
        runner.execute(script, out, python=python, cwd=tmp_path, kernel_log=log, timeout=60)
    message = str(info.value)
    assert "\n" not in message
    assert str(env) in message and str(log) in message, message
    assert "ipykernel_launcher" in message, "the kernel's own last line says why"
    assert info.value.environment == env and info.value.exit_code == 1
    assert not out.exists(), "no output notebook for a kernel that never ran"
    assert "No module named ipykernel_launcher" in log.read_text()


@needs_py311
def test_engine_notebook_builds_only_the_manager_environment(tmp_path: Path) -> None:
    bp = backpack(tmp_path / "own", "own.ipynb", nbformat.writes(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)")])),
        worker_pins=["tabulate==0.9.0"])
    out = tmp_path / "own-run.ipynb"
    done = flo_run([str(bp), "--execute", "--engine", "notebook", "-o", str(out), "--json"],
                   tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["status"] == "complete"
    assert set(result["envs"]) == {"manager"}, result["envs"]
    assert result["skipped_envs"] == {"worker": "engine notebook starts no workers"}
    assert len(built_envs(tmp_path)) == 1, built_envs(tmp_path)
    assert any("software/worker-environment.yml" in n and "not built" in n
               for n in result["notes"]), result["notes"]
    printed = "".join(o.get("text", "") for o in nbformat.read(out, as_version=4)
                      .cells[0].outputs).strip()
    assert printed == result["envs"]["manager"]["path"]

    table = flo_run([str(bp), "--execute", "--engine", "notebook", "-o", str(out)], tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    assert "skipped: engine notebook starts no workers" in table.stdout, table.stdout
    assert len(built_envs(tmp_path)) == 1


@needs_py311
def test_interactive_script_opens_as_a_paired_notebook_with_jupytext(tmp_path: Path) -> None:
    """With jupytext in the manager spec, JupyterLab opens a paired notebook of the script:
    the audit's cells (markdown and code), served as a notebook."""
    bp = backpack(tmp_path / "paired", "paired.py",
                  "# %% [markdown]\n# Title\n\n# %%\nx = 1\n\n# %%\nprint(x + 1)\n")
    (bp / "software" / "environment.yml").write_text(
        "name: t\ndependencies:\n  - python=3.11.7\n  - pip\n  - pip:\n"
        "      - jupytext==1.16.4\n")
    argv = [*FLO_RUN, str(bp), "--cache-dir", str(tmp_path / "cache"), "--scratch-dir",
            str(tmp_path / "scratch")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        url = None
        for line in proc.stdout:  # flo-run prints the URL line, then waits for Ctrl-C
            if line.startswith("JupyterLab: "):
                url = line.split(" ", 1)[1].strip()
                break
        assert url is not None, f"flo-run exited {proc.wait()}: {proc.stderr.read()[-3000:]}"
        base, token = url.split("/lab/tree/paired.ipynb?token=")
        with urllib.request.urlopen(f"{base}/api/contents/paired.ipynb?token={token}",
                                    timeout=30) as answer:
            model = json.loads(answer.read())
        assert model["type"] == "notebook"
        cells = [(c["cell_type"], c["source"]) for c in model["content"]["cells"]]
        assert cells == [("markdown", "Title"), ("code", "x = 1"), ("code", "print(x + 1)")]
        # jupytext serves the script itself as that notebook: the pair is live
        with urllib.request.urlopen(f"{base}/api/contents/paired.py?type=notebook&"
                                    f"token={token}", timeout=30) as answer:
            script = json.loads(answer.read())
        assert [(c["cell_type"], c["source"]) for c in script["content"]["cells"]] == cells
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130, proc.stderr.read()[-3000:]


def test_strict_validation_reads_scripts_as_they_will_run(tmp_path: Path) -> None:
    from provisioner import api

    bp = backpack(tmp_path / "script", "main.py", "# %%\nimport helpers\nprint(helpers.X)\n")
    (bp / "workflow" / "helpers.py").write_text("X = 1\n")
    ambiguous = api.validate(bp, strict=True)
    assert not ambiguous.valid and "exactly one" in str(ambiguous.problems[0])
    (bp / "audit").mkdir()  # the audit names the workflow among the helper modules
    (bp / "audit" / "summary.json").write_text(json.dumps({"schema": 1, "status": "complete",
                                                            "notebook": "/elsewhere/main.py"}))
    checked = api.validate(bp, strict=True)
    assert checked.valid, checked.problems
    assert checked.workflow == bp.absolute() / "workflow" / "main.py"

    (bp / "workflow" / "main.py").write_text("# %%\nprint(\n")
    broken = api.validate(bp, strict=True)
    if sys.version_info[:2] == (3, 11):  # the spec's Python: a syntax error is a problem
        [problem] = broken.problems
        assert problem.file == "workflow/main.py" and problem.key == "line 2", problem
    else:  # another Python may parse it otherwise: only a warning
        assert broken.valid and "line 2" in broken.warnings[-1]
    (bp / "workflow" / "main.py").write_bytes(b"print('\xff')\n")
    [problem] = api.validate(bp, strict=True).problems
    assert problem.file == "workflow/main.py" and "UTF-8" in problem.expected, problem


@pytest.mark.parametrize("drawn", ["1inoeoq0", "3ifh68e5", "7or_a2b9"])
def test_run_folder_path_reads_back_through_dask_config_without_a_warning(
        tmp_path, monkeypatch, drawn) -> None:
    """dask reads DASK_SCHEDULER_FILE (the run folder's scheduler.json) with ast.literal_eval:
    a random part like "1in..." made Python print a SyntaxWarning into the notebook's output.
    The draws are ones that warned with the old name; tempfile's draw is fixed to them."""
    import ast
    import tempfile
    import warnings

    from provisioner import run

    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter([drawn]))
    folder = run.new_run_folder(tmp_path)
    assert folder.parent == tmp_path and folder.name.endswith(drawn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ast.literal_eval(str(folder / "scheduler.json"))
        except (SyntaxError, ValueError):
            pass  # dask keeps the text as it is, as it should
    assert not caught, [str(w.message) for w in caught]
