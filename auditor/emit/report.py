"""The audit's report: `audit/summary.json` for programs, a rich closing summary for people.

summary.json is also the per-cell dependency report: for every code cell, the packages and
workflow/unknown files it used (`flo-audit diff` compares these between audits).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..backpack.compute import ComputeSpec
from ..backpack.session import Session
from ..backpack.summary import SCHEMA as SUMMARY_SCHEMA
from ..common.execution import Status
from .environment import EnvironmentSpec

if TYPE_CHECKING:
    from ..resolve import Resolution
    from ..roles import Roles


def build_summary(*, session: Session, spec: EnvironmentSpec, compute: ComputeSpec,
                  resolution: Resolution, roles: Roles | None, cell_sources: Mapping[int, str],
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
        "complete": status == Status.COMPLETE,
        "failed_cell": session.failed_cell.to_json() if session.failed_cell else None,
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
