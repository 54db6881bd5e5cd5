"""`flo-audit --workers 1`: a worker that dies mid-task ends the cell at once (no nanny would
restart it, so the cell would wait until --timeout), with status worker-died naming it, and the
backpack is written marked incomplete."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from conftest import flo_audit_argv

pytest.importorskip("distributed")

CELL_TIMEOUT_S = 300  # what the cell would wait without the watch
ENDED_WITHIN_S = 150  # kernel + scheduler + worker start and teardown, on 2 shared cores


def test_worker_death_ends_the_cell_early(tmp_path: Path) -> None:
    work = tmp_path / "nb"
    work.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("from dask.distributed import Client\nclient = Client()"),
        nbformat.v4.new_code_cell("import os\nclient.submit(os._exit, 7, pure=False).result()"),
        nbformat.v4.new_code_cell("print('not reached')"),
    ]
    nbformat.write(notebook, work / "dies.ipynb")
    out = tmp_path / "bp"
    argv = [*flo_audit_argv(), str(work / "dies.ipynb"), "-o", str(out), "--workers", "1",
            "--backend", "hooks", "--timeout", str(CELL_TIMEOUT_S), "--json"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                          timeout=CELL_TIMEOUT_S + 120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert elapsed < ENDED_WITHIN_S, f"the audit took {elapsed:.0f} s: the cell was not ended"
    session = json.loads((out / "audit/session.json").read_text(encoding="utf-8"))
    assert session["status"] == "worker-died"
    failed = session["failed_cell"]
    assert failed["index"] == 1 and failed["ename"] == "WorkerDied", failed
    assert "worker-1" in failed["evalue"] and "status 7" in failed["evalue"], failed
    summary = json.loads((out / "audit/summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "worker-died" and summary["complete"] is False
    worker = next(p for p in session["pool"]["processes"] if p["name"] == "worker-1")
    assert worker["exit"] == 7 and worker["during_run"], worker
