"""The audit's report: `audit/summary.json` for programs, a rich closing summary for people.

summary.json is also the per-cell dependency report: for every code cell, the packages and
workflow/unknown files it used (`flo-audit diff` compares these between audits).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..backpack.compute import ComputeSpec
from ..backpack.session import Session
from ..backpack.summary import SCHEMA as SUMMARY_SCHEMA
from .data_report import render_data
from .environment import USED, EnvironmentSpec

COMPLETE = "complete"


def build_summary(*, session: Session, spec: EnvironmentSpec, compute: ComputeSpec,
                  resolution: Any, roles: Any, cell_sources: Mapping[int, str],
                  cell_files: Mapping[int, Iterable[str]], warnings: list[str],
                  timings: Mapping[str, float]) -> dict:
    """The machine-readable summary of one audit (the shape of audit/summary.json).

    `cell_sources` maps notebook cell index -> source for every code cell; `cell_files`
    maps cell index -> workflow and unknown files that cell read.
    """
    status = session.status
    packages_of: dict[int, set[str]] = {index: set() for index in cell_sources}
    for pin in spec.pins:
        for cell in pin.cells:
            packages_of.setdefault(cell, set()).add(pin.name)
    cells = [{"index": index, "source": cell_sources.get(index, ""),
              "packages": sorted(packages_of.get(index, ()), key=str.lower),
              "files": sorted(set(cell_files.get(index, ())))}
             for index in sorted(set(cell_sources) | set(packages_of))]
    kernel = session.kernel
    stdlib_cells = getattr(resolution, "stdlib_cells", None) or ()
    return {
        "schema": SUMMARY_SCHEMA,  # auditor/backpack/summary.py reads it back
        "notebook": session.notebook,
        "status": status,
        "complete": status == COMPLETE,
        "failed_cell": session.to_json()["failed_cell"],
        "backend": session.backend,
        "python": {"version": spec.python, "executable": kernel.get("executable"),
                   "prefix": kernel.get("prefix")},
        "environment": {"name": spec.name, "file": "software/environment.yml"},
        "packages": [pin.to_json() for pin in spec.pins],
        "cells": cells,
        "stdlib_cells": sorted(c for c in stdlib_cells if c is not None),
        "workflow_files": sorted(getattr(resolution, "workflow", ()) or ()),
        "unknown_paths": sorted(getattr(resolution, "unknown", ()) or ()),
        "outside_paths": sorted(getattr(resolution, "outside", ()) or ()),
        "compute": compute.to_json(),
        "warnings": list(warnings),
        "timings": dict(timings),
        "processes": roles.to_json() if roles is not None else {},
    }


def render_summary(summary: Mapping[str, Any], backpack: str | None,
                   console: Console | None = None) -> None:
    """Print the closing summary: pins, unknown paths, warnings, where the backpack is."""
    console = console or Console(stderr=False)
    packages = summary.get("packages") or []
    used = [p for p in packages if p.get("reason") == USED]
    if used:
        table = Table(title="Packages the notebook used", title_justify="left", box=None,
                      pad_edge=False, min_width=40)
        table.add_column("package", style="bold")
        table.add_column("version")
        table.add_column("cells")
        for pin in used:
            cells = ", ".join(str(c) for c in pin.get("cells") or ()) or "workers"
            table.add_row(pin["name"], pin.get("version") or "", cells)
        console.print(table)
    required = sum(1 for p in packages if str(p.get("reason", "")).startswith("required"))
    line = Text()
    line.append(f"{len(packages)} packages pinned", style="bold")
    line.append(f" ({len(used)} used, {required} required by them, "
                f"{len(packages) - len(used) - required} kernel machinery)")
    console.print(line)
    from .sides import role_lines

    for role_line in role_lines(dict(summary)):
        console.print(Text(role_line))
    unknown = summary.get("unknown_paths") or []
    warnings = summary.get("warnings") or []
    console.print(f"{len(unknown)} unknown paths (inside the environment, owned by no package"
                  f"{': listed in audit/summary.json' if unknown else ''}), "
                  f"{len(warnings)} warnings")
    workflow_files = summary.get("workflow_files") or []
    if workflow_files:
        console.print(f"{len(workflow_files)} local workflow files copied into workflow/")
    render_data(summary, console)
    for warning in warnings:
        console.print(Text("warning: ", style="yellow bold") + Text(warning))
    if not summary.get("complete"):
        _say_incomplete(incomplete_line(summary), console)
    if backpack:
        console.print(Text("backpack: ", style="green bold") + Text(backpack))


def _say_incomplete(line: str, console: Console) -> None:
    """The INCOMPLETE line in the summary, and on stderr as well (a script that keeps only
    stderr, or a user who sent the summary to a file, still sees it), once when both streams
    are the same terminal or file."""
    console.print(Text(line, style="red bold"))
    if not _same_stream(console.file, sys.stderr):
        Console(stderr=True, highlight=False).print(Text(line, style="red bold"),
                                                   soft_wrap=True)


def _same_stream(one: IO[str], other: IO[str]) -> bool:
    if one is other:
        return True
    try:
        return os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno()))
    except (AttributeError, OSError, ValueError):  # a StringIO: not a file descriptor
        return False


def incomplete_line(summary: Mapping[str, Any]) -> str:
    """The one INCOMPLETE line of a run that did not complete (printed on stderr too)."""
    status = summary.get("status", "unknown")
    failed = summary.get("failed_cell") or {}
    if status == "failed" and failed:
        error = failed.get("ename", "an error")
        if failed.get("evalue"):
            error += ": " + " ".join(str(failed["evalue"]).split())  # one line, however long
        return (f"INCOMPLETE: cell {failed.get('index')} raised {error}; the specs cover only "
                "the cells that ran")
    if status == "timeout":
        where = f" in cell {failed['index']}" if failed.get("index") is not None else ""
        return f"INCOMPLETE: the run timed out{where}; raise --timeout and audit again"
    if status == "worker-died":
        return ("INCOMPLETE: a worker died during the run (see above); its tasks may not have "
                "finished")
    if status == "kernel-died":
        return "INCOMPLETE: the kernel died during the run; see audit/kernel.stderr"
    return f"INCOMPLETE: the run ended with status {status!r}"
