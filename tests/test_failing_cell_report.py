"""A failing audit: INCOMPLETE goes to stderr as well as the summary, and what IPython loads to
format the traceback (stack_data, asttokens, executing, pure_eval, Pygments) is kernel
machinery, not "used in cell N", unless the cell imports it by name.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import flo_audit_argv
from test_emit import DistUse, Index, Resolution, dist

from auditor.emit.environment import USED, draft_environment, top_level_imports
from auditor.roles import MANAGER, WORKER, Roles

TRACEBACK = {"stack-data", "asttokens", "executing", "pure-eval", "pygments"}


def _key(name: str) -> str:
    return name.lower().replace("_", "-")


@pytest.mark.slow
def test_failing_cell_says_incomplete_on_stderr_and_uses_no_traceback_machinery(
        tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [  # cells are numbered from 0, the markdown cell included
        nbformat.v4.new_markdown_cell("# fails"),
        nbformat.v4.new_code_cell("import pygments\nversion = pygments.__version__"),
        nbformat.v4.new_code_cell("raise ValueError('deliberate failure in the second cell')"),
    ]
    nbformat.write(notebook, tmp_path / "fails.ipynb")
    done = subprocess.run([*flo_audit_argv(), "fails.ipynb", "-o", "out"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    line = "INCOMPLETE: cell 2 raised ValueError: deliberate failure in the second cell"
    assert line in " ".join(done.stdout.split()), done.stdout
    assert line in done.stderr and "Traceback" not in done.stderr, done.stderr
    as_json = subprocess.run([*flo_audit_argv(), "fails.ipynb", "-o", "out", "--force",
                              "--json"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["complete"] is False
    assert as_json.stderr.strip().splitlines()[-1].startswith(line), as_json.stderr

    summary = json.loads((tmp_path / "out" / "audit" / "summary.json").read_text())
    pins = {_key(p["name"]): p for p in summary["packages"]}
    assert TRACEBACK <= set(pins), "IPython's traceback machinery is still pinned"
    for name in TRACEBACK - {"pygments"}:
        assert pins[name]["reason"] != USED and pins[name]["cells"] == [], pins[name]
    # Named in cell 1, so used there; the traceback of cell 2 adds nothing to it.
    assert pins["pygments"]["reason"] == USED and pins["pygments"]["cells"] == [1]
    failing = next(c for c in summary["cells"] if c["index"] == 2)
    assert failing["packages"] == [], failing


def test_traceback_machinery_counts_in_workers_and_when_named() -> None:
    kernel, worker = 100, 200
    roles = Roles(kernel, role={kernel: MANAGER, worker: WORKER})
    stack, pygments = dist("stack-data", "0.6.3"), dist("Pygments", "2.19.1")
    ipykernel = dist("ipykernel", "6.29.5", requires=("stack-data", "Pygments"))  # via IPython
    used = {"stack-data": DistUse(stack, {2}, {kernel}),
            "pygments": DistUse(pygments, {2}, {worker})}
    spec = draft_environment(Resolution(used), Index(stack, pygments, ipykernel), python="3.11.7",
                             notebook_stem="nb", roles=roles,
                             cell_sources={2: "raise ValueError()"})
    reasons = {_key(p.name): (p.reason, p.cells) for p in spec.pins}
    assert reasons["stack-data"][0] != USED, "loaded by the kernel's traceback: machinery"
    assert reasons["pygments"] == (USED, [2]), "a worker has no IPython: its use is the task's"

    spec = draft_environment(Resolution(used), Index(stack, pygments, ipykernel), python="3.11.7",
                             notebook_stem="nb", roles=roles,
                             cell_sources={2: "%time x = 1\nfrom stack_data import FrameInfo"})
    assert {_key(p.name): (p.reason, p.cells) for p in spec.pins}["stack-data"] == (USED, [2])


def test_top_level_imports_of_a_cell() -> None:
    assert top_level_imports("import os, pygments.lexers as lx\nfrom stack_data import x\n"
                             "%matplotlib inline\n!ls") == {"os", "pygments", "stack_data"}
    assert top_level_imports("from . import helper") == set()
    assert top_level_imports("x = (\nimport asttokens") == {"asttokens"}  # not Python: lines
