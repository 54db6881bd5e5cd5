"""The end of an audit with a pool still open, and pools that are only threads (issue 11,
items 2, 3 and 9): real Dask, real strace, the real CLI; the summary lines on a long list.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from conftest import AuditRun
from rich.console import Console

from auditor.emit.sides import APT_FILE, APT_SHOWN
from auditor.events import MARK_PREFIX
from auditor.summary_view import render_summary

_SPAWN = re.compile(r"^(\d+) +([\d.]+) (?:clone3?|fork|vfork)\(.*\) = (\d+)$")
_MARK = re.compile(r"^\d+ +([\d.]+) open(?:at)?\(.*\"" + re.escape(MARK_PREFIX) + r"cell/\d+/end")


@pytest.mark.slow
def test_unclosed_cluster_ends_without_respawns(audit_runs: Callable[..., AuditRun]) -> None:
    """Client(n_workers=2) left open: 2 worker processes ran tasks, and the trace shows no
    process of a worker started after the last cell's end mark."""
    run = audit_runs("workers_dask_unclosed", "strace")  # reads strace's own trace
    assert run.returncode == 0, run.describe()
    worker = run.load_json("audit/summary.json")["roles"]["worker"]
    expected = run.scenario.expect["workers_ran"]
    assert worker["workers_seen"] == expected, worker
    assert worker["note"] == f"{expected} worker processes ran tasks", worker
    assert worker["started_after_cells"] == 0, worker
    assert f"{expected} worker processes ran tasks" in run.stdout
    processes = run.load_json("audit/summary.json")["processes"]["processes"]
    workers = {p["pid"] for p in processes if p["role"] == "worker"}
    lines = run.path("audit/trace.strace").read_text(encoding="utf-8", errors="replace")
    last_end = max(float(m.group(1)) for m in map(_MARK.match, lines.splitlines()) if m)
    late = [line for line in lines.splitlines()
            if (m := _SPAWN.match(line)) and "CLONE_THREAD" not in line
            and float(m.group(2)) > last_end and int(m.group(3)) in workers]
    assert late == [], late


@pytest.mark.slow
def test_in_process_client_says_threads_of_the_kernel(
        audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("workers_dask_threads")
    assert run.returncode == 0, run.describe()
    note = run.load_json("audit/summary.json")["roles"]["worker"]["note"]
    assert "threads of the kernel" in note and "manager environment serves" in note, note
    assert "--workers" not in note, note
    assert not run.path("software/worker-environment.yml").exists()
    assert "threads of the kernel" in run.stdout


def test_long_apt_list_prints_a_count_and_the_file() -> None:
    names = [f"libgvc{i:02d}" for i in range(40)]
    summary = {"complete": True, "packages": [],
               "roles": {"manager": {"processes": 1, "packages": [], "apt": names},
                         "worker": {"processes": 0, "packages": [], "apt": ["gzip"]}}}
    console = Console(width=200, record=True)
    render_summary(summary, None, console)
    text = console.export_text()
    line = next(line for line in text.splitlines() if line.startswith("manager:"))
    assert f"apt: 40 packages ({', '.join(names[:APT_SHOWN])}, ...; all in {APT_FILE})" in line
    assert names[APT_SHOWN] not in text
    assert "apt: gzip" in text  # a short list is printed whole
