"""`flo-audit cells`: audit/cells.yml for people (a table, markdown), programs (json, yaml) and
Graphviz (dot). Finding and reading the file is here; building it is emit/cells.py's.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .backpack.cells import CELLS, CellReport, CellsReport, load_cells_yml
from .common.errors import RecordFormatError, UsageError

FORMATS = ("table", "markdown", "yaml", "json", "dot")
ROLES = ("manager", "worker")
OUT_OF_ORDER = ("the notebook's saved execution counts are out of order (column saved): it was "
                "run interactively in another order than it reads, so its saved outputs may not "
                "be what this top-to-bottom run gives")


@dataclass
class CellsView:
    """The report, narrowed to one cell (`--cell`) and one side's packages (`--role`)."""

    report: CellsReport
    path: Path
    cell: int | None = None
    role: str | None = None

    @property
    def cells(self) -> list[CellReport]:
        if self.cell is None:
            return self.report.cells
        return [c for c in self.report.cells if c.cell == self.cell]

    def packages(self, cell: CellReport) -> list[str]:
        """The cell's packages on the chosen side, or on both."""
        if self.role == "manager":
            return cell.manager
        if self.role == "worker":
            return cell.worker
        return sorted(set(cell.manager) | set(cell.worker), key=str.lower)

    def to_dict(self) -> dict[str, Any]:
        data = self.report.to_dict()
        if self.role is not None:
            other = "worker" if self.role == "manager" else "manager"
            for cell in data["cells"]:
                cell["code_dependencies"].pop(other)
                kept = set(cell["code_dependencies"][self.role])
                cell["code_dependencies"]["first_used"] = [
                    p for p in cell["code_dependencies"]["first_used"] if p in kept]
        if self.cell is not None:
            return next(c for c in data["cells"] if c["cell"] == self.cell)
        return data


def open_cells(path: str | Path, cell: int | None = None, role: str | None = None) -> CellsView:
    """The cells report of a backpack or an audit folder; RecordFormatError naming the file
    when there is no record or the file is not one; UsageError when `cell` is no code cell."""
    root = Path(path)
    record = root / "audit" if (root / "audit" / "session.json").exists() else root
    if not (record / "session.json").is_file():
        raise RecordFormatError(f"{record / 'session.json'} is missing: {root} is not an audit "
                                "record (give a backpack or its audit/ folder)")
    cells_file = record.parent / CELLS if record.name == "audit" else record / "cells.yml"
    report = load_cells_yml(cells_file)
    if role is not None and role not in ROLES:
        raise UsageError(f"--role {role}: expected one of {', '.join(ROLES)}")
    if cell is not None and report.cell(cell) is None:
        raise UsageError(f"--cell {cell}: no such code cell in {cells_file}; the code cells "
                         f"are {_ranges([c.cell for c in report.cells])}")
    return CellsView(report, cells_file, cell, role)


def _ranges(numbers: list[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5"."""
    if not numbers:
        return "none (the notebook has no code cell)"
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def render(view: CellsView, fmt: str, console: Any) -> None:
    """Print the view in one of FORMATS (table and markdown through the rich console).
    Saved counts out of order are said once: after the table or the markdown, on stderr
    for the formats programs read (each cell's `saved_execution_count` carries them)."""
    if fmt in ("json", "yaml", "dot") and view.report.saved_out_of_order:
        print(f"note: {OUT_OF_ORDER.replace(' (column saved)', '')}.", file=sys.stderr)
    if fmt == "json":
        print(json.dumps(view.to_dict(), indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(view.to_dict(), sort_keys=False, width=100,
                             default_flow_style=None), end="")
    elif fmt == "dot":
        print(render_dot(view), end="")
    elif fmt == "markdown":
        print(render_markdown(view), end="")
    else:
        render_table(view, console)


def _depends(cell: CellReport, sep: str = "\n") -> str:
    return sep.join(f"{p.cell} ({', '.join(p.reasons)})" for p in cell.depends_on)


def _files(cell: CellReport) -> str:
    """One line per file: "r name" read, "w name" written, "url U" asked for."""
    parts = [*(f"r {n}" for n in cell.read), *(f"w {n}" for n in cell.written),
             *(f"url {u}" for u in cell.urls)]
    return "\n".join(parts)


def _seconds(cell: CellReport) -> str:
    return "" if cell.seconds is None else f"{cell.seconds:.2f}"


def _saved(cell: CellReport) -> str:
    return "" if cell.saved_execution_count is None else f"[{cell.saved_execution_count}]"


def render_table(view: CellsView, console: Any) -> None:
    """A rich table that stays readable in 100 columns: long texts wrap inside their column."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    report = view.report
    table = Table(title=f"cells of {report.notebook}", title_justify="left", show_lines=True,
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("cell", justify="right", no_wrap=True)
    out_of_order = report.saved_out_of_order
    if out_of_order:  # the saved counts matter only then: the notebook reads in another order
        table.add_column("saved", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("s", justify="right", no_wrap=True)
    table.add_column("first line", ratio=3, overflow="fold")
    table.add_column("packages" if view.role is None else f"{view.role} packages",
                     ratio=3, min_width=16, overflow="fold")
    table.add_column("files", ratio=2, overflow="fold")
    table.add_column("depends on", ratio=3, overflow="fold")
    style = {"error": "red", "not run": "dim"}
    for cell in view.cells:
        first = set(cell.first_used)
        packages = Text()
        for n, pin in enumerate(view.packages(cell)):
            packages.append(("\n" if n else "") + pin, style="bold" if pin in first else "")
        if cell.tools:
            packages.append(("\n" if packages else "") + "tools: "
                            + ", ".join(Path(t).name for t in cell.tools))
        # Text, not str: a cell's source is not rich markup ("[v for v in x]" would vanish).
        saved = [_saved(cell)] if out_of_order else []
        table.add_row(str(cell.cell), *saved,
                      Text(cell.status, style=style.get(cell.status, "")),
                      _seconds(cell), Text(cell.first_line), packages, Text(_files(cell)),
                      Text(_depends(cell)))
    console.print(table)
    if out_of_order:
        console.print(Text(f"note: {OUT_OF_ORDER}.", style="yellow"))
    if view.cell is None and report.groups:
        groups = "  ".join("{" + ", ".join(map(str, g)) + "}" for g in report.groups)
        console.print(Text("could run concurrently, in this order: ", style="bold")
                      + Text(groups))
    console.print(Text("bold: first used in that cell", style="dim"))


def render_markdown(view: CellsView) -> str:
    """A GitHub-flavoured markdown table (for a pull request or a lab notebook)."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    out_of_order = view.report.saved_out_of_order
    saved_head, saved_rule = ("saved | ", "---: | ") if out_of_order else ("", "")
    lines = [f"### Cells of `{view.report.notebook}`", "",
             f"| cell | {saved_head}status | seconds | first line | packages (first use in "
             "bold) | files | depends on |",
             f"| ---: | {saved_rule}--- | ---: | --- | --- | --- | --- |"]
    for cell in view.cells:
        first = set(cell.first_used)
        packages = "<br>".join(f"**{p}**" if p in first else p for p in view.packages(cell))
        if cell.tools:
            packages += ("<br>" if packages else "") + "tools: " + ", ".join(
                Path(t).name for t in cell.tools)
        saved = f"{_saved(cell)} | " if out_of_order else ""
        lines.append(f"| {cell.cell} | {saved}{cell.status} | {_seconds(cell)} | "
                     f"`{esc(cell.first_line)}` | {packages} | {esc(_files(cell))} | "
                     f"{esc(_depends(cell, '; '))} |")
    if view.cell is None and view.report.groups:
        lines += ["", "Could run concurrently, in this order: "
                  + ", ".join("{" + ", ".join(map(str, g)) + "}" for g in view.report.groups)]
    if out_of_order:
        lines += ["", f"Note: {OUT_OF_ORDER}."]
    return "\n".join(lines) + "\n"


def render_dot(view: CellsView) -> str:
    """The cell graph in Graphviz DOT: a node per cell (a cluster per concurrent group), an
    edge per predecessor labelled with its reasons. With --cell: that cell and its ancestors."""
    cells = {c.cell: c for c in view.report.cells}
    keep = set(cells)
    if view.cell is not None:
        keep, todo = set(), [view.cell]
        while todo:
            n = todo.pop()
            if n not in keep:
                keep.add(n)
                todo.extend(p.cell for p in cells[n].depends_on if p.cell in cells)
    lines = ["digraph cells {", "  rankdir=TB;",
             '  node [shape=box, fontname="monospace", fontsize=10];']
    for rank, group in enumerate(view.report.groups):
        members = [n for n in group if n in keep]
        if members:
            lines.append(f'  subgraph cluster_{rank} {{ label="group {rank}"; style=dashed; '
                         + " ".join(f"c{n};" for n in members) + " }")
    for n in sorted(keep):
        cell = cells[n]
        label = _dot(f"{n}: {cell.first_line[:40]}")
        if cell.status != "ok":
            label += "\\n" + _dot(cell.status)  # a line break inside a DOT label
        lines.append(f'  c{n} [label="{label}"'
                     + (', style=dashed' if cell.status == "not run" else "")
                     + (', color=red' if cell.status == "error" else "") + "];")
    for n in sorted(keep):
        for p in cells[n].depends_on:
            if p.cell in keep:
                lines.append(f'  c{p.cell} -> c{n} [label="{_dot(", ".join(p.reasons))}"];')
    return "\n".join([*lines, "}"]) + "\n"


def _dot(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
