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
