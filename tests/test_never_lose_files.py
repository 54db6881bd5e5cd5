"""`-o` and `--force` never cost a user a file (DESIGN.md rule 12): a backpack replaces only a
backpack, never the notebook's folder, a folder above it or the current one, `$HOME` or `/`,
and never a folder holding an input the run read. Each refusal is one line, exit 2."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_errors import VALID_CELL, notebook_json

REPO = Path(__file__).resolve().parents[1]


def flo_audit(cwd: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "auditor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), folders included as empty names."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        out[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "/"
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """tmp/home/work/project/nb/{nb.ipynb, input.csv, lib/h.py} plus unrelated files above."""
    home = tmp_path / "home"
    nb_dir = home / "work" / "project" / "nb"
    (nb_dir / "lib").mkdir(parents=True)
    (nb_dir / "nb.ipynb").write_text(notebook_json([VALID_CELL]), encoding="utf-8")
    (nb_dir / "input.csv").write_text("a,b\n1,2\n")
    (nb_dir / "lib" / "h.py").write_text("X = 1\n")
    (nb_dir.parent / "thesis.tex").write_text("\\section{mine}\n")
    (home / "work" / "notes.txt").write_text("unrelated\n")
    return nb_dir


def assert_refused(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flo-audit: error: "), done.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("out, cwd_up, expected", [
    (".", 0, "the current folder or one above it"),
    ("..", 0, "the current folder or one above it"),
    ("nb", 1, "which the notebook needs"),  # from the project folder: -o the notebook's folder
    ("project", 2, "which the notebook needs"),  # from further away: a folder above the notebook's
])
def test_force_never_replaces_the_notebooks_folder_or_one_above(project, out, cwd_up, expected):
    home = project.parents[2]
    cwd = project.parents[cwd_up - 1] if cwd_up else project
    notebook = os.path.relpath(project / "nb.ipynb", cwd)
    before = snapshot(home)
    done = flo_audit(cwd, notebook, "-o", out, "--force", home=home)
    assert_refused(done, expected)
    assert snapshot(home) == before  # every original file, byte for byte, and nothing new


def test_home_and_root_are_refused(project):
    home = project.parents[2]
    before = snapshot(home)
    assert_refused(flo_audit(project.parent.parent.parent.parent, str(project / "nb.ipynb"),
                             "-o", str(home), "--force", home=home), "it is your home")
    assert_refused(flo_audit(project, "nb.ipynb", "-o", "/", home=home), "it is the root folder")
    assert snapshot(home) == before


def test_force_replaces_only_a_backpack(project, tmp_path):
    home = project.parents[2]
    plain = tmp_path / "results"
    plain.mkdir()
    (plain / "figure.png").write_bytes(b"\x89PNG mine")
    done = flo_audit(project, "nb.ipynb", "-o", str(plain), "--force", home=home)
    assert_refused(done, "is not a backpack")
    assert snapshot(plain) == {"figure.png": hashlib.sha256(b"\x89PNG mine").hexdigest()}


@pytest.mark.slow
def test_force_replaces_a_backpack_but_not_what_the_user_added_to_it(project, tmp_path):
    home = project.parents[2]
    bp = tmp_path / "bp"
    first = flo_audit(project, "nb.ipynb", "-o", str(bp), home=home)
    assert first.returncode == 0, first.stderr
    (bp / "audit" / "session.json").write_text((bp / "audit" / "session.json").read_text())
    again = flo_audit(project, "nb.ipynb", "-o", str(bp), "--force", home=home)
    assert again.returncode == 0, again.stderr
    assert (bp / "workflow" / "nb.ipynb").is_file()
    (bp / "my-notes.md").write_text("keep me\n")
    before = snapshot(bp)
    assert_refused(flo_audit(project, "nb.ipynb", "-o", str(bp), "--force", home=home),
                   "also holds my-notes.md")
    assert snapshot(bp) == before


@pytest.mark.slow
def test_a_backpack_holding_an_input_the_run_read_is_not_replaced(project, tmp_path):
    """The notebook reads its input out of an earlier backpack's data/: replacing that
    backpack would delete the input. Known only after the run: refused before the rename."""
    home = project.parents[2]
    old = tmp_path / "old-bp"
    first = flo_audit(project, "nb.ipynb", "-o", str(old), home=home)
    assert first.returncode == 0, first.stderr
    (old / "data").mkdir(exist_ok=True)  # data/data.yml is there already
    (old / "data" / "table.csv").write_text("x\n1\n")
    reader = {**VALID_CELL, "source": f"print(open({str(old / 'data' / 'table.csv')!r}).read())"}
    (project / "reads.ipynb").write_text(notebook_json([reader]), encoding="utf-8")
    before = snapshot(old)
    done = flo_audit(project, "reads.ipynb", "-o", str(old), "--force", home=home)
    assert_refused(done, "table.csv, which the notebook needs")
    assert snapshot(old) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_derive_force_never_replaces_the_notebooks_folder(project, tmp_path):
    home = project.parents[2]
    bp = tmp_path / "bp"
    assert flo_audit(project, "nb.ipynb", "-o", str(bp), home=home).returncode == 0
    before = snapshot(home)
    assert_refused(flo_audit(project, "derive", str(bp), "-o", ".", "--force", home=home),
                   "the current folder or one above it")
    assert_refused(flo_audit(tmp_path, "derive", str(bp), "-o", str(project.parent), "--force",
                             home=home), "which the notebook needs")
    assert snapshot(home) == before
    again = flo_audit(tmp_path, "derive", str(bp), "-o", str(bp), "--force", home=home)
    assert again.returncode == 0, again.stderr  # a backpack replaced by its own re-derivation
