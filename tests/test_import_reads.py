"""Under ptrace, the import system's reads are the kernel side's to record (kernels/
flo_kernel.py `_quiet_reads`): a whole audit finds what it found when the tracer saw them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import flo_audit_argv

from auditor.record.ptrace import PtraceTracer

pytestmark = pytest.mark.slow


def _notebook(folder: Path, cells: list[str]) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path = folder / "reads.ipynb"
    nbformat.write(notebook, path)
    return path


def _audit(folder: Path, backend: str, out: str) -> tuple[int, dict]:
    done = subprocess.run([*flo_audit_argv(), "reads.ipynb", "-o", out, "--backend", backend,
                           "--json"], cwd=folder, capture_output=True, text=True, timeout=600)
    return done.returncode, json.loads(done.stdout)


def _opened(record: Path) -> set[str]:
    return {entry["path"] for entry in map(json.loads, (record / "hooks.jsonl").open())
            if entry.get("ev") == "opened"}


def test_a_kernel_killed_mid_cell_keeps_what_the_cell_imported(tmp_path: Path) -> None:
    """The kernel dies (SIGKILL) in the cell right after importing a local helper, with its
    hook log buffered: the helper is still the workflow's, found from the `opened` record
    alone (the trace has no read of it), and the cell is said to use it."""
    (tmp_path / "helper_one.py").write_text("ONE = 1\n")
    (tmp_path / "helper_two.py").write_text("TWO = 2\n")
    _notebook(tmp_path, ["import helper_one", "import helper_two\nimport os\n"
                         "os.kill(os.getpid(), 9)"])
    code, summary = _audit(tmp_path, "ptrace", "out")
    assert code == 1 and summary["status"] == "kernel-died", summary
    record = tmp_path / "out" / "audit"
    helper = str(tmp_path / "helper_two.py")
    assert helper in _opened(record)
    assert not [e for e in PtraceTracer().events(record)
                if e.kind == "access" and getattr(e, "path", "") == helper]
    assert (tmp_path / "out" / "workflow" / "helper_two.py").read_text() == "TWO = 2\n"
    files = {cell["index"]: cell.get("files", []) for cell in summary["cells"]}
    assert files == {0: [str(tmp_path / "helper_one.py")], 1: [helper]}


def test_ptrace_with_quiet_reads_finds_what_strace_finds(tmp_path: Path) -> None:
    """The same notebook (a local package, a pure-Python distribution and a compiled one,
    and an import in a forked child; data read through IPython's open, builtins.open, io.open
    and pathlib, a read that fails, a file written then read back, a function that opens
    files pickled by value as Dask does) audited by strace, which sees every read
    itself, and by ptrace, which leaves those reads to the kernel side: the same pins, the
    same workflow files, the same files per cell, the same data inputs and outputs."""
    (tmp_path / "inputs").mkdir()
    for name in ("table.csv", "notes.txt", "raw.bin"):
        (tmp_path / "inputs" / name).write_text(f"{name}\n")
    (tmp_path / "localpkg").mkdir()
    (tmp_path / "localpkg" / "__init__.py").write_text("from .part import PART\n")
    (tmp_path / "localpkg" / "part.py").write_text("PART = 'p'\n")
    _notebook(tmp_path, [
        "import localpkg\nimport yaml",
        "import os\nchild = os.fork()\nif child == 0:\n    import packaging.version\n"
        "    os._exit(0)\nos.waitpid(child, 0)",
        "import psutil\npsutil.Process().name()",
        "import io, pathlib\nrows = open('inputs/table.csv').read()\n"
        "notes = pathlib.Path('inputs/notes.txt').read_text()\n"
        "raw = io.open('inputs/raw.bin', 'rb').read()\n"
        "import builtins, cloudpickle\ndef count(name):\n    return len(open(name).read())\n"
        "copied = cloudpickle.loads(cloudpickle.dumps(count))('inputs/table.csv')\n"
        "again = builtins.open('inputs/raw.bin', 'rb').read()\n"
        "try:\n    open('inputs/absent.csv')\nexcept FileNotFoundError:\n    pass\n"
        "with open('made.txt', 'w') as f:\n    f.write(rows)\nmade = open('made.txt').read()",
    ])
    runs = {backend: _audit(tmp_path, backend, f"out-{backend}") for backend in ("strace",
                                                                                 "ptrace")}
    assert {backend: code for backend, (code, _) in runs.items()} == {"strace": 0, "ptrace": 0}
    quiet = _opened(tmp_path / "out-ptrace" / "audit")
    assert {str(tmp_path / "localpkg" / "part.py"), str(tmp_path / "inputs" / "table.csv"),
            str(tmp_path / "inputs" / "raw.bin")} <= quiet

    def found(summary: dict) -> tuple:
        pins = sorted((p["name"], p["version"], p["reason"], tuple(p.get("cells") or ()))
                      for p in summary["packages"])
        cells = {c["index"]: (sorted(c.get("files", [])), sorted(c.get("packages", [])))
                 for c in summary["cells"]}
        data = {key: summary["data"].get(key) for key in ("inputs", "outputs", "intermediates")}
        return pins, cells, data

    assert found(runs["ptrace"][1]) == found(runs["strace"][1])
    assert found(runs["ptrace"][1])[2]["inputs"] and found(runs["ptrace"][1])[2]["intermediates"]
    for name in ("software/environment.yml", "software/requirements.txt", "data/data.yml"):
        texts = [(tmp_path / f"out-{b}" / name).read_text().splitlines()
                 for b in ("strace", "ptrace")]
        assert [line for line in texts[0] if not line.startswith("#")] == [
            line for line in texts[1] if not line.startswith("#")]
    assert sorted(p.name for p in (tmp_path / "out-ptrace" / "workflow").rglob("*.py")) == [
        "__init__.py", "part.py"]
