"""flo-audit diff on two real audits: one notebook run in two venvs that differ in one
package's version and one extra package (issue 6)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"

CELLS = [
    "import six\nprint(six.__version__)",
    "try:\n    import tabulate\nexcept ImportError:\n    tabulate = None\nprint(tabulate)",
    "import json\nprint(json.dumps({'ok': True}))",
]


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is not installed: run `make setup`"
    return found


def make_venv(folder: Path, *packages: str) -> Path:
    done = run([uv(), "venv", "--python", str(BASE_PYTHON), str(folder)])
    assert done.returncode == 0, done.stderr
    python = folder / "bin" / "python"
    done = run([uv(), "pip", "install", "--python", str(python), *packages])
    assert done.returncode == 0, done.stderr
    return python


def flo_audit(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "auditor", *args])


@pytest.fixture(scope="module")
def two_audits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("diff")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    notebook = root / "nb" / "probe.ipynb"
    notebook.parent.mkdir()
    nbformat.write(nb, notebook)
    python_a = make_venv(root / "venv-a", "ipykernel==7.4.0", "six==1.16.0")
    frozen = run([uv(), "pip", "freeze", "--python", str(python_a)]).stdout.splitlines()
    pins = [p for p in frozen if not p.lower().startswith("six==")]
    python_b = make_venv(root / "venv-b", *pins, "six==1.17.0", "tabulate==0.9.0")
    backpacks = []
    for label, python in (("a", python_a), ("b", python_b)):
        out = root / f"bp-{label}"
        done = flo_audit(str(notebook), "-o", str(out), "--python", str(python))
        assert done.returncode == 0, done.stdout + done.stderr
        backpacks.append(out)
    return backpacks[0], backpacks[1]


def test_exactly_the_version_change_and_the_extra_package(two_audits: tuple[Path, Path]) -> None:
    a, b = two_audits
    done = flo_audit("diff", str(a), str(b), "--json")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    packages = {(c["role"], c["name"], c["change"], c["before"], c["after"])
                for c in result["changes"] if c["section"] == "package"}
    assert packages == {("manager", "six", "upgraded", "1.16.0", "1.17.0"),
                        ("manager", "tabulate", "added", "", "0.9.0 (pip)")}
    assert not [c for c in result["changes"] if c["section"] in ("python", "data")]
    cells = [(c["name"], c["change"], c["after"]) for c in result["changes"]
             if c["section"] == "cell"]
    assert ("cell 1", "package appeared", "tabulate") in cells


def test_identical_audits_exit_zero_and_say_so(two_audits: tuple[Path, Path]) -> None:
    a, _ = two_audits
    done = flo_audit("diff", str(a), str(a / "audit"))
    assert done.returncode == 0, done.stderr
    assert "no differences" in done.stdout


def test_markdown_form_is_a_table(two_audits: tuple[Path, Path]) -> None:
    a, b = two_audits
    done = flo_audit("diff", str(a / "software" / "environment.yml"),
                     str(b / "software" / "environment.yml"), "--format", "markdown")
    assert done.returncode == 1
    assert "| package | manager | six | upgraded | 1.16.0 | 1.17.0 |" in done.stdout


def test_here_lists_what_an_interpreter_lacks(two_audits: tuple[Path, Path]) -> None:
    a, b = two_audits
    python_a = a.parent / "venv-a" / "bin" / "python"
    done = flo_audit("diff", str(b), "--here", "--python", str(python_a), "--json")
    assert done.returncode == 1, done.stderr
    changes = {(c["name"], c["change"]) for c in json.loads(done.stdout)["changes"]}
    assert changes == {("six", "downgraded"), ("tabulate", "missing")}
    same = flo_audit("diff", str(a), "--here", "--python", str(python_a))
    assert same.returncode == 0, same.stdout + same.stderr


@pytest.mark.parametrize("content, problem", [
    ("dependencies: [", "not valid YAML"),
    ("name: x\n", "key 'dependencies'"),
])
def test_malformed_side_is_exit_two_naming_file_and_problem(
        two_audits: tuple[Path, Path], tmp_path: Path, content: str, problem: str) -> None:
    bad = tmp_path / "environment.yml"
    bad.write_text(content)
    done = flo_audit("diff", str(two_audits[0]), str(bad))
    assert done.returncode == 2
    assert str(bad) in done.stderr and problem in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
