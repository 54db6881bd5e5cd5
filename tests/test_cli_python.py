"""`--python` as users type it: a path relative to where they stand, or a missing one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat


def test_relative_python_is_taken_from_the_callers_folder(tmp_path: Path) -> None:
    folder = tmp_path / "nb"
    folder.mkdir()
    cell = nbformat.v4.new_code_cell("import sys; print(sys.prefix)")
    nb = nbformat.v4.new_notebook(cells=[cell])
    nbformat.write(nb, folder / "probe.ipynb")
    # The kernel starts in the notebook's folder; the interpreter path is relative to ours.
    relative = os.path.relpath(sys.executable, tmp_path)
    done = subprocess.run([sys.executable, "-m", "auditor", "nb/probe.ipynb", "-o", "bp",
                           "--python", relative, "--backend", "hooks"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    env = (tmp_path / "bp" / "software" / "environment.yml").read_text()
    assert "python=" + ".".join(map(str, sys.version_info[:3])) in env


def test_missing_python_is_one_line_exit_two(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    nbformat.write(nb, tmp_path / "probe.ipynb")
    done = subprocess.run([sys.executable, "-m", "auditor", "probe.ipynb", "--python",
                           "no/such/python"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "flo-audit: error: --python no/such/python: no such interpreter; give the path of a "
        "python that has ipykernel installed"]
    assert not (tmp_path / "probe-backpack").exists()


def test_commands_the_notebook_runs_come_from_the_kernels_environment(tmp_path: Path) -> None:
    """`!python ...` (and `!pip`, console scripts) find the --python environment first on
    PATH, as in an activated environment, whatever else PATH holds."""
    cell = nbformat.v4.new_code_cell("!python -c 'import sys; print(\"prefix=\" + sys.prefix)'")
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "shell.ipynb")
    elsewhere = tmp_path / "elsewhere"  # a decoy `python` first on the caller's PATH
    elsewhere.mkdir()
    (elsewhere / "python").write_text("#!/bin/sh\necho prefix=decoy\n")
    (elsewhere / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{elsewhere}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "auditor", "shell.ipynb", "-o", "bp",
                           "--python", sys.executable, "--backend", "hooks"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(tmp_path / "bp" / "audit" / "executed.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert printed.strip() == f"prefix={sys.prefix}"
