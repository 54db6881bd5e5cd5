"""Bad input to the real `python -m auditor`: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VALID_CELL = {"cell_type": "code", "id": "a1", "metadata": {}, "outputs": [],
              "execution_count": None, "source": "print(1)"}


def flo_audit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "auditor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def notebook_json(cells: list[dict], **top: object) -> str:
    import json

    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5,
                       **top})


CASES = {
    "missing file": ("gone.ipynb", None, [], "flo-audit: error: no such file: gone.ipynb"),
    "not JSON": ("notes.ipynb", "# just markdown\n", [],
                 "is not a Jupyter notebook: not JSON"),
    "JSON but not a notebook": ("data.ipynb", '{"rows": [1, 2]}', [],
                                "is not a Jupyter notebook: the JSON has no 'cells'"),
    "invalid nbformat": ("bad.ipynb", notebook_json([{**VALID_CELL, "source": 5}]), [],
                         "is not a valid notebook (nbformat 4): at cells/0/source:"),
    "unsupported suffix": ("run.R", "print(1)\n", [], "unsupported file type '.R'"),
    "unknown backend": ("ok.ipynb", notebook_json([VALID_CELL]), ["--backend", "dtrace"],
                        "argument --backend: invalid choice: 'dtrace'"),
    "bad timeout": ("ok.ipynb", notebook_json([VALID_CELL]), ["--timeout", "soon"],
                    "expected a number of seconds"),
    "not an audit record": ("derive", None, ["."], "is not an audit record"),
    "unknown --kernel": ("ok.ipynb", notebook_json([VALID_CELL]), ["--kernel", "nope-kernel"],
                         "no Jupyter kernel named 'nope-kernel'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    name, content, extra, expected = CASES[case]
    if content is not None:
        (tmp_path / name).write_text(content, encoding="utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    done = flo_audit(tmp_path, name, *extra)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("flo-audit: error: ") and expected in lines[0], lines[0]
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no backpack, no temp folder


def test_existing_output_is_refused_before_running_anything(tmp_path):
    (tmp_path / "ok.ipynb").write_text(notebook_json([VALID_CELL]), encoding="utf-8")
    out = tmp_path / "ok-backpack"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = flo_audit(tmp_path, "ok.ipynb")
    assert done.returncode == 2
    assert done.stderr.strip().endswith("already exists; pass --force to replace it, "
                                        "or choose another output folder with -o")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_file_named_like_a_subcommand_is_audited_as_a_path(tmp_path):
    # "derive" exists as a file here, so it is a PATH (an unsupported one), not the subcommand.
    (tmp_path / "derive").write_text("print(1)\n")
    done = flo_audit(tmp_path, "derive")
    assert done.returncode == 2
    assert "unsupported file type '(none)'" in done.stderr


def test_a_percent_script_becomes_one_cell_per_marker(tmp_path):
    from auditor.backpack.workflow import load_workflow

    script = tmp_path / "job.py"
    script.write_text("import os\n# %%\nx = 1\n# %% [markdown]\n# Notes\n# %% Plot\nprint(x)\n")
    flow = load_workflow(script)
    assert [(c.cell_type, c.source) for c in flow.notebook.cells] == [
        ("code", "import os"), ("code", "x = 1"), ("markdown", "Notes"), ("code", "print(x)")]
    assert flow.code_cells == 3 and flow.kind == "py"
    plain = tmp_path / "plain.py"
    plain.write_text("a = 1\nb = 2\n")
    assert [c.source for c in load_workflow(plain).notebook.cells] == ["a = 1\nb = 2"]


def test_a_kernel_named_only_by_the_notebook_falls_back_to_python3(tmp_path):
    """Shared notebooks carry their author's kernelspec name: audited with python3, and the
    backpack's summary says so, instead of refusing the notebook."""
    import json

    kernelspec = {"name": "conda-env-analysis-py", "display_name": "analysis",
                  "language": "python"}
    (tmp_path / "shared.ipynb").write_text(
        notebook_json([VALID_CELL], metadata={"kernelspec": kernelspec}), encoding="utf-8")
    done = flo_audit(tmp_path, "shared.ipynb", "--backend", "hooks", "-o", "bp")
    assert done.returncode == 0, done.stderr
    warnings = json.loads((tmp_path / "bp" / "audit" / "summary.json").read_text())["warnings"]
    assert any("'conda-env-analysis-py'" in w and "python3" in w for w in warnings), warnings


def test_the_hooks_backend_asked_for_by_name_says_what_it_cannot_see(tmp_path):
    import json

    (tmp_path / "ok.ipynb").write_text(notebook_json([VALID_CELL]), encoding="utf-8")
    done = flo_audit(tmp_path, "ok.ipynb", "--backend", "hooks", "-o", "bp")
    assert done.returncode == 0, done.stderr
    warnings = json.loads((tmp_path / "bp" / "audit" / "summary.json").read_text())["warnings"]
    assert any("hooks backend" in w and "files opened by C code" in w for w in warnings)


def test_a_notebook_read_again_for_its_cells_skips_only_the_schema_check(tmp_path):
    from auditor.backpack.workflow import load_workflow
    from auditor.common.errors import UsageError

    odd = tmp_path / "odd.ipynb"  # a key the schema does not allow: readable, not valid
    odd.write_text(notebook_json([{**VALID_CELL, "execution_count": 3, "extra": 1}]))
    with pytest.raises(UsageError, match="is not a valid notebook"):
        load_workflow(odd)
    saved = load_workflow(odd, validate=False)
    assert saved.code_sources == {0: "print(1)"} and saved.saved_counts == {0: 3}
    (tmp_path / "broken.ipynb").write_text('{"cells": [')  # what is not a notebook still is not
    with pytest.raises(UsageError, match="not JSON"):
        load_workflow(tmp_path / "broken.ipynb", validate=False)
