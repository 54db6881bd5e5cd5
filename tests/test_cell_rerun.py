"""`flo-run BP --execute --cell N`: cell N runs after only the cells it depends on (the audit's
cell graph, audit/cells.yml), in the backpack's environments, and prints what it printed in the
full run: the graph is proved by the re-run."""

from __future__ import annotations

import nbformat
import pytest

from tests.test_run_e2e import (  # noqa: F401 (places: the module's cache and scratch)
    flo_run,
    places,
    result_of,
    stream_text,
)

pytestmark = pytest.mark.slow


def ran(notebook: nbformat.NotebookNode) -> list[int]:
    return [i for i, c in enumerate(notebook.cells)
            if c.cell_type == "code" and c.get("execution_count") is not None]


def test_a_cell_runs_after_only_what_it_depends_on(audit_runs, places) -> None:  # noqa: F811
    audited = audit_runs("cell_graph")
    assert audited.returncode == 0, audited.describe()
    reference = nbformat.read(audited.path("audit/executed.ipynb"), as_version=4)
    assert ran(reference) == list(range(1, 11))  # the full run: every code cell

    out = places["base"] / "cell8.ipynb"
    result = result_of(flo_run([str(audited.out), "--execute", "--cell", "8", "-o", str(out),
                                "--json"], places))
    assert result["status"] == "complete", result
    executed = nbformat.read(out, as_version=4)
    # 8 needs total (6) and settings (7); 6 needs rows (5), which reads table.csv written by
    # 4, which uses np (1) and values, last bound in 3, first bound in 2. 9 and 10 are not.
    assert result["cells_run"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert ran(executed) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert executed.metadata["flo"]["cells_run"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert stream_text(executed.cells[8]) == stream_text(reference.cells[8]) != ""
    assert all("skip-execution" not in c.metadata.get("tags", []) for c in executed.cells)

    branch = result_of(flo_run([str(audited.out), "--execute", "--cell", "3", "-o",
                                str(places["base"] / "cell3.ipynb"), "--json"], places))
    assert branch["cells_run"] == [2, 3]  # a re-bound name: 3 needs 2, nothing else
    assert ran(nbformat.read(places["base"] / "cell3.ipynb", as_version=4)) == [2, 3]


def test_a_cell_that_is_no_code_cell_is_refused_before_anything_runs(audit_runs,
                                                                     places) -> None:  # noqa: F811
    audited = audit_runs("cell_graph")
    done = flo_run([str(audited.out), "--execute", "--cell", "0"], places)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line == ("flo-run: --cell 0: not a code cell of the audited notebook; its code cells "
                    "are 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 (0-based, markdown cells counted, as in "
                    "audit/cells.yml)")
    assert "phases" not in done.stdout
