"""audit/cells.yml: the per-cell report and the cell graph as data (format in README).

Written by flo-audit's derive (auditor/emit/cells.py builds the `CellsReport`), read by
`flo-audit cells` and by `flo-run BP --execute --cell N` (`needed_for`). Schema 1; another
schema is refused with a line saying to re-derive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..common.errors import RecordFormatError
from .yaml_text import dump_yaml, load_yaml_text

CELLS = "audit/cells.yml"
EXECUTED = "audit/executed.ipynb"
CELLS_SCHEMA = 1
OK, ERROR, NOT_RUN = "ok", "error", "not run"


@dataclass
class Predecessor:
    """An earlier cell this one depends on, and why ("name df", "file out/x.csv")."""

    cell: int
    reasons: list[str]


@dataclass
class CellReport:
    """One code cell's facts."""

    cell: int
    execution_count: int | None
    first_line: str
    status: str
    seconds: float | None = None
    peak_rss_mb: float | None = None
    manager: list[str] = field(default_factory=list)  # name==version
    worker: list[str] = field(default_factory=list)
    first_used: list[str] = field(default_factory=list)  # of those, used by no earlier cell
    read: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    depends_on: list[Predecessor] = field(default_factory=list)
    #: Earlier cells this one must still follow though it uses nothing of theirs: it rebinds
    #: a name (or rewrites a file) they read or bound, so running both at once could change
    #: what they saw. Ordering only: not part of `needed_for`.
    after: list[Predecessor] = field(default_factory=list)
    group: int | None = None  # depth in the graph; None when the cell did not run
    #: The source's imports against the run: distributions named but not used, used but
    #: not named; None when the cell did not run (or the record could not tell).
    named_not_used: list[str] | None = None
    used_not_named: list[str] | None = None
    #: The execution count saved in the notebook as given (an interactive run's), beside the
    #: batch run's `execution_count`; None when the notebook saved none for this cell.
    saved_execution_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        saved = ({} if self.saved_execution_count is None
                 else {"saved_execution_count": self.saved_execution_count})
        return {
            "cell": self.cell, "execution_count": self.execution_count, **saved,
            "first_line": self.first_line, "status": self.status,
            "seconds": self.seconds, "peak_rss_mb": self.peak_rss_mb,
            "code_dependencies": {"manager": self.manager, "worker": self.worker,
                                  "first_used": self.first_used},
            "data_dependencies": {"read": self.read, "written": self.written,
                                  "urls": self.urls},
            "tools": self.tools,
            "depends_on": [{"cell": p.cell, "reasons": p.reasons} for p in self.depends_on],
            **({"after": [{"cell": p.cell, "reasons": p.reasons} for p in self.after]}
               if self.after else {}),
            "group": self.group,
            "static_check": None if self.named_not_used is None else {
                "named_not_used": self.named_not_used,
                "used_not_named": self.used_not_named or []},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellReport:
        code = data.get("code_dependencies") or {}
        files = data.get("data_dependencies") or {}
        return cls(
            cell=int(data["cell"]), execution_count=data.get("execution_count"),
            first_line=str(data.get("first_line") or ""), status=str(data["status"]),
            seconds=data.get("seconds"), peak_rss_mb=data.get("peak_rss_mb"),
            manager=list(code.get("manager") or ()), worker=list(code.get("worker") or ()),
            first_used=list(code.get("first_used") or ()),
            read=list(files.get("read") or ()), written=list(files.get("written") or ()),
            urls=list(files.get("urls") or ()), tools=list(data.get("tools") or ()),
            depends_on=_predecessors(data.get("depends_on")),
            after=_predecessors(data.get("after")),
            group=data.get("group"),
            saved_execution_count=_optional_int(data, "saved_execution_count"),
            named_not_used=_optional_list((data.get("static_check") or {}), "named_not_used"),
            used_not_named=_optional_list((data.get("static_check") or {}), "used_not_named"))


def _predecessors(items: Any) -> list[Predecessor]:
    """`depends_on` / `after` entries (absent: none; `after` is newer than schema 1's start)."""
    return [Predecessor(int(p["cell"]), [str(r) for r in p.get("reasons") or ()])
            for p in items or ()]


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    """data[key] as an int, None when absent (cells.yml written before the key existed)."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    return value


def _optional_list(data: Mapping[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    return None if value is None else [str(v) for v in value]


@dataclass
class CellsReport:
    """audit/cells.yml as data."""

    notebook: str
    cells: list[CellReport]
    #: Cells grouped by depth in the graph: no cell of a group depends on another of it.
    groups: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CELLS_SCHEMA, "notebook": self.notebook,
                "cells": [c.to_dict() for c in self.cells],
                "concurrent_groups": self.groups}

    @property
    def saved_out_of_order(self) -> bool:
        """Whether the notebook's saved execution counts, read top to bottom, do not rise:
        it was run interactively in another order than it reads, so its saved outputs may
        not be what a top-to-bottom run (the audit's) gives."""
        counts = [c.saved_execution_count for c in self.cells
                  if c.saved_execution_count is not None]
        return any(later <= earlier
                   for earlier, later in zip(counts, counts[1:], strict=False))

    def cell(self, index: int) -> CellReport | None:
        """The report of notebook cell `index`, or None when it is no code cell."""
        return next((c for c in self.cells if c.cell == index), None)

    def needed_for(self, index: int) -> list[int]:
        """Cell `index` and every cell it depends on, transitively, in notebook order: what
        must run for `index` to run as it did (`flo-run BP --execute --cell N`)."""
        by_cell = {c.cell: c for c in self.cells}
        needed, todo = set(), [index]
        while todo:
            cell = todo.pop()
            if cell in needed:
                continue
            needed.add(cell)
            todo += [p.cell for p in by_cell[cell].depends_on] if cell in by_cell else []
        return sorted(needed)


def render_cells_yml(report: CellsReport) -> str:
    """audit/cells.yml: a comment saying what it is, then the report (format in README)."""
    header = (f"# Per-cell report of {report.notebook} (flo-audit; re-derive with "
              "`flo-audit derive`).\n# cell: notebook cell index (0-based, markdown cells "
              "counted); depends_on: earlier cells\n# whose file or name this cell uses; "
              "concurrent_groups: cells that could run at once.\n")
    return header + dump_yaml(report.to_dict(), sort_keys=False, width=100,
                              default_flow_style=None, allow_unicode=True)


def load_cells_yml(path: str | Path) -> CellsReport:
    """Read audit/cells.yml; RecordFormatError naming the file when it is not one."""
    path = Path(path)
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordFormatError(f"{path} is missing: re-derive it with "
                                f"`flo-audit derive {path.parent.parent} -o OUT`") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise RecordFormatError(f"{path} is not readable YAML ({reason}); re-derive it with "
                                "`flo-audit derive`") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise RecordFormatError(f"{path}: expected a mapping with a 'cells' list "
                                "(README: audit/cells.yml); re-derive it with `flo-audit derive`")
    if data.get("schema") != CELLS_SCHEMA:
        raise RecordFormatError(f"{path}: schema {data.get('schema')!r}, this flo-audit reads "
                                f"schema {CELLS_SCHEMA}; re-derive it with `flo-audit derive`")
    try:
        cells = [CellReport.from_dict(c) for c in data["cells"]]
        groups = [[int(c) for c in group] for group in data.get("concurrent_groups") or ()]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RecordFormatError(f"{path}: a cell entry is malformed ({exc!r}); re-derive it "
                                "with `flo-audit derive`") from None
    return CellsReport(str(data.get("notebook") or ""), cells, groups)
