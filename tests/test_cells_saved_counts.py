"""A notebook saved after an interactive run in another order than it reads (issue 12):
audit/cells.yml reports it in notebook order, the batch run's counts beside the saved ones,
and `flo-audit cells` says once that the saved counts are out of order.

The audits are real (fixtures/notebooks/saved_out_of_order, counts saved as 1, 3, 2); the
model's reading of older files runs on hand-written cells.yml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import AuditRun, Scenario, flo_audit_argv

from auditor.backpack.cells import CellReport, CellsReport, load_cells_yml
from auditor.cells_view import CellsView, render_markdown
from auditor.common.errors import RecordFormatError

CASE = "saved_out_of_order"
NOTE = "saved execution counts are out of order"


@pytest.fixture(scope="module")
def run(audit_runs: Callable[..., AuditRun]) -> AuditRun:
    return audit_runs(CASE)


def _cells(out: Path) -> list[dict]:
    return yaml.safe_load((out / "audit" / "cells.yml").read_text(encoding="utf-8"))["cells"]


def _cells_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*flo_audit_argv(), "cells", *args], capture_output=True, text=True,
                          timeout=120)


def _said(text: str) -> int:
    """How often the note is said, however the table wrapped it."""
    return " ".join(text.split()).count(NOTE)


@pytest.mark.slow
def test_cells_yml_keeps_the_saved_counts_beside_the_batch_runs(run: AuditRun) -> None:
    assert run.returncode == 0, run.describe()
    expect = Scenario(CASE).expect["cells"]
    cells = _cells(run.out)
    assert [c["cell"] for c in cells] == [1, 2, 3]  # notebook order
    assert [c["execution_count"] for c in cells] == [1, 2, 3]  # the batch run, top to bottom
    assert {c["cell"]: c["saved_execution_count"] for c in cells} == \
        expect["saved_execution_count"]
    assert {c["cell"]: [[p["cell"], p["reasons"]] for p in c["depends_on"]]
            for c in cells} == expect["depends_on"]
    assert {c["cell"]: [[p["cell"], p["reasons"]] for p in c.get("after", [])]
            for c in cells} == expect["after"]
    report = yaml.safe_load((run.out / "audit" / "cells.yml").read_text(encoding="utf-8"))
    assert report["concurrent_groups"] == expect["concurrent_groups"]
    executed = nbformat.read(run.path("audit/executed.ipynb"), as_version=4)
    assert "[0, 2, 4]" in executed.cells[2].outputs[0].text  # not the saved run's [0, 10, 20]
    assert executed.cells[2].metadata["flo"]["saved_execution_count"] == 3


@pytest.mark.slow
def test_cells_command_says_once_that_the_saved_counts_are_out_of_order(run: AuditRun) -> None:
    table = _cells_cli(str(run.out))
    assert table.returncode == 0, table.stderr
    assert _said(table.stdout) == 1, table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) <= 100
    header = next(line for line in table.stdout.splitlines() if "status" in line)
    assert header.split()[:3] == ["cell", "saved", "status"]
    row = next(line for line in table.stdout.splitlines() if "print([v" in line)
    assert row.split()[:3] == ["2", "[3]", "ok"]

    markdown = _cells_cli(str(run.out), "--format", "markdown").stdout
    assert "| 2 | [3] | ok |" in markdown and _said(markdown) == 1
    one = _cells_cli(str(run.out), "--cell", "3")
    assert _said(one.stdout) == 1 and "[2]" in one.stdout

    # Programs read stdout: the counts are in each entry, the note goes to stderr.
    done = _cells_cli(str(run.out), "--format", "json")
    assert [c["saved_execution_count"] for c in json.loads(done.stdout)["cells"]] == [1, 3, 2]
    assert _said(done.stderr) == 1 and NOTE not in done.stdout


@pytest.mark.slow
def test_derive_reads_the_saved_counts_from_the_backpacks_workflow(run: AuditRun,
                                                                    tmp_path: Path) -> None:
    """derive takes the counts from workflow/ (the notebook as audited): re-saved there in
    order, the note goes; with a cell's source edited there, no counts are shown at all."""
    backpack = tmp_path / "backpack"
    shutil.copytree(run.out, backpack)
    saved = backpack / "workflow" / f"{CASE}.ipynb"
    notebook = nbformat.read(saved, as_version=4)
    for cell, count in zip(notebook.cells[1:], (4, 5, 6), strict=True):
        cell.execution_count = count
    nbformat.write(notebook, saved)

    def derive(out: Path) -> list[dict]:
        done = subprocess.run([*flo_audit_argv(), "derive", str(backpack), "-o", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return _cells(out)

    in_order = derive(tmp_path / "in_order")
    assert [c["saved_execution_count"] for c in in_order] == [4, 5, 6]
    assert [c["execution_count"] for c in in_order] == [1, 2, 3]
    assert _said(_cells_cli(str(tmp_path / "in_order")).stdout) == 0

    notebook.cells[3].source = "scale = 11"
    nbformat.write(notebook, saved)
    assert not any("saved_execution_count" in c for c in derive(tmp_path / "edited"))


def test_older_cells_yml_without_saved_counts_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "cells.yml"
    path.write_text("schema: 1\nnotebook: n.ipynb\ncells:\n"
                    "- {cell: 1, execution_count: 1, first_line: x = 1, status: ok}\n"
                    "- {cell: 2, execution_count: 2, first_line: y = x, status: ok}\n"
                    "concurrent_groups: [[1], [2]]\n")
    report = load_cells_yml(path)
    assert [c.saved_execution_count for c in report.cells] == [None, None]
    assert not report.saved_out_of_order
    assert "saved_execution_count" not in report.cells[0].to_dict()
    assert NOTE not in render_markdown(CellsView(report, path))

    path.write_text("schema: 1\ncells:\n- {cell: 1, status: ok, saved_execution_count: one}\n")
    with pytest.raises(RecordFormatError, match="saved_execution_count"):
        load_cells_yml(path)


@pytest.mark.parametrize(("counts", "out_of_order"), [
    ([1, 2, 3], False),
    ([1, None, 7], False),  # a gap, a cell never run: still read top to bottom
    ([None, None, None], False),
    ([1, 3, 2], True),
    ([2, 2, None], True),  # the same count twice: one of them is a copied cell
])
def test_which_saved_counts_are_out_of_order(counts: list[int | None],
                                             out_of_order: bool) -> None:
    report = CellsReport("n.ipynb", [CellReport(i, i, "x", "ok", saved_execution_count=c)
                                     for i, c in enumerate(counts, start=1)], [])
    assert report.saved_out_of_order is out_of_order
    assert _said(render_markdown(CellsView(report, Path("cells.yml")))) == int(out_of_order)
