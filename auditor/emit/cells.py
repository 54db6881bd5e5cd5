"""The per-cell report and the cell graph: `audit/cells.yml`.

For every code cell, in notebook order: what it used (distributions per side, first use
marked), the data it read and wrote (named as data.yml names them), the programs it ran, how
long it took and how much memory the kernel held; and which earlier cells it depends on
(DESIGN.md rule 9): cell j depends on cell i when j reads a file whose last writer before j
was i, or j reads a name (cell_source.free_names) whose last binder before j was i (the kernel
side's `names` records). Cells at the same depth of that graph do not depend on each other:
each such group could run concurrently.

`build_cells` is pure (facts in, a `CellsReport` out); the file's model, its one writer and
its one reader are auditor/backpack/cells.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import canonicalize_name

from ..backpack.cells import ERROR, NOT_RUN, OK, CellReport, CellsReport, Predecessor
from ..backpack.data import climb
from ..backpack.session import Session
from ..common.realpaths import RealPaths
from ..roles import MANAGER, TOOL, WORKER
from .cell_source import free_names, named_modules
from .cell_watch import CellWatch
from .compute import MB
from .data.draft import DataDraft

if TYPE_CHECKING:
    from ..resolve import DistUse
    from ..roles import Roles


@dataclass
class CellFacts:
    """What derive knows per cell, gathered from the stages that ran before this one."""

    sources: Mapping[int, str]  # code cell index -> source
    executed: Mapping[int, tuple[int | None, bool]]  # index -> (execution_count, raised)
    watch: CellWatch
    session: Session
    roles: Roles
    used: Iterable[DistUse]  # with `at` (cell, pid) pairs
    manager_used: set[str]  # canonical names the manager spec pins as used
    draft: DataDraft
    #: data path -> (cells that read it, cells that wrote it) (DataCollector.cell_uses)
    paths: Mapping[str, tuple[set[int], set[int]]]
    url_cells: Mapping[str, set[int]]  # normalized URL -> cells that asked for it
    samples: list[dict]
    cwd: str
    #: module name -> distribution name, None (stdlib, the notebook's own) or
    #: resolve.modules.NOT_FOUND; None: no static cross-check.
    module_owner: Callable[[str], str | None] | None = None
    #: code cell index -> the execution count saved in the notebook as given (none: {}).
    saved_counts: Mapping[int, int] | None = None


def build_cells(facts: CellFacts) -> CellsReport:
    """The per-cell report and the graph from one derive's facts."""
    session, watch = facts.session, facts.watch
    failed = session.failed_index
    sent = {index for _, index in session.cells}
    reports: dict[int, CellReport] = {}
    saved = facts.saved_counts or {}
    for index in sorted(facts.sources):
        count, raised = facts.executed.get(index, (None, False))
        start, end = watch.marks.get(index, (None, None))
        ran = start is not None or index in sent
        if index == failed or raised or (start is not None and end is None):
            status = ERROR
        else:
            status = OK if ran else NOT_RUN
        reports[index] = CellReport(
            cell=index, execution_count=count, first_line=_first_line(facts.sources[index]),
            status=status,
            seconds=round(end - start, 3) if start is not None and end is not None else None,
            saved_execution_count=saved.get(index))
    _memory(reports, watch, facts.samples, session.kernel_pid)
    _code(reports, facts)
    if facts.module_owner is not None:
        _static(reports, facts.sources, facts.module_owner)
    files = _files(reports, facts)
    _tools(reports, facts)
    _graph(reports, facts, files)
    groups: dict[int, list[int]] = {}
    for report in reports.values():
        if report.group is not None:
            groups.setdefault(report.group, []).append(report.cell)
    notebook = os.path.basename(session.notebook)
    return CellsReport(notebook, list(reports.values()),
                       [sorted(groups[g]) for g in sorted(groups)])


def _first_line(source: str) -> str:
    return next((line.strip() for line in source.splitlines() if line.strip()), "")


def _memory(reports: dict[int, CellReport], watch: CellWatch, samples: list[dict],
            kernel_pid: int | None) -> None:
    """Peak kernel RSS over the sampling ticks inside the cell; a cell shorter than a tick
    gets the first tick after it, when that comes before the next cell starts."""
    ticks = sorted((float(s["t"]), int(s.get("rss") or 0)) for s in samples
                   if kernel_pid is not None and s.get("pid") == kernel_pid and "t" in s)
    if not ticks:
        return
    starts = sorted(span[0] for span in watch.marks.values() if span[0] is not None)
    for index, (start, end) in watch.marks.items():
        report = reports.get(index)
        if report is None or start is None:
            continue
        stop = end if end is not None else float("inf")
        inside = [rss for t, rss in ticks if start <= t <= stop]
        if not inside and end is not None:
            following = next((t for t in starts if t > start), float("inf"))
            after = next((rss for t, rss in ticks if end < t < following), None)
            inside = [after] if after is not None else []
        if inside:
            report.peak_rss_mb = round(max(inside) / MB, 1)


def _code(reports: dict[int, CellReport], facts: CellFacts) -> None:
    sides: dict[int, dict[str, set[str]]] = {}
    for use in facts.used:
        label = f"{use.dist.name}=={use.dist.version}"
        key = canonicalize_name(use.dist.name)
        for cell, pid in use.at:
            if cell is None or cell not in reports:
                continue
            side = facts.roles.side(pid)
            if side == MANAGER and key not in facts.manager_used:
                continue  # the spec leaves it out (flo-backpack's own, say)
            if side in (MANAGER, WORKER):
                sides.setdefault(cell, {}).setdefault(side, set()).add(label)
    seen: set[str] = set()
    for index, report in reports.items():
        by_side = sides.get(index, {})
        report.manager = sorted(by_side.get(MANAGER, ()), key=str.lower)
        report.worker = sorted(by_side.get(WORKER, ()), key=str.lower)
        labels = set(report.manager) | set(report.worker)
        report.first_used = sorted(labels - seen, key=str.lower)
        seen |= labels


def _static(reports: dict[int, CellReport], sources: Mapping[int, str],
            owner: Callable[[str], str | None]) -> None:
    """What the source names against what the run used, by distribution (canonical names):
    named but unused (a guarded or uncalled import, a missing package) and used but unnamed
    (lazy imports, plugins, what the named packages import themselves)."""
    from ..resolve.modules import NOT_FOUND

    for index, report in reports.items():
        if report.status == NOT_RUN:
            continue
        named: dict[str, str] = {}
        for module in named_modules(sources.get(index, "")):
            dist = owner(module)
            if dist == NOT_FOUND:
                named.setdefault(f"{module.split('.')[0]} ({NOT_FOUND})", "")
            elif dist is not None:
                named.setdefault(str(canonicalize_name(dist)), dist)
        used = {str(canonicalize_name(pin.split("==")[0])): pin.split("==")[0]
                for pin in (*report.manager, *report.worker)}
        report.named_not_used = sorted((named[k] or k for k in named if k not in used),
                                       key=str.lower)
        report.used_not_named = sorted((used[k] for k in used if k not in named),
                                       key=str.lower)


def _files(reports: dict[int, CellReport], facts: CellFacts) -> dict[str, str]:
    """Fill read/written/urls; returns data path -> its name, for the graph's reasons."""
    name, urls = _data_names(facts)
    names: dict[str, str] = {}
    read: dict[int, set[str]] = {}
    written: dict[int, set[str]] = {}
    for path, (read_in, written_in) in facts.paths.items():
        named = name(path)
        if named is None:
            continue
        names[path] = named
        for cell in read_in:
            read.setdefault(cell, set()).add(named)
        for cell in written_in:
            written.setdefault(cell, set()).add(named)
    asked = _asked_urls(facts, urls)
    for index, report in reports.items():
        report.read = sorted(read.get(index, ()))
        report.written = sorted(written.get(index, ()))
        report.urls = sorted(asked.get(index, ()))
    return names


def _data_names(facts: CellFacts) -> tuple[Callable[[str], str | None], dict[str, str]]:
    """How the report names a path the run read or wrote (its data.yml target location, or
    None when it is not data), and the draft's URL sources."""
    draft, cwd = facts.draft, facts.cwd
    exact: dict[str, str] = {}
    folders: list[tuple[str, str]] = []
    urls: dict[str, str] = {}
    real = RealPaths()
    for entry in draft.inputs:
        if entry.source_type == "fs":
            for source in {entry.source, real(entry.source)}:
                exact[source] = entry.target_location
                if entry.files is not None:
                    folders.append((source.rstrip("/") + "/", entry.target_location))
        else:
            urls[entry.source] = entry.source
    produced = set(draft.outputs) | set(draft.intermediates)

    def name(path: str) -> str | None:
        if path in exact:
            return exact[path]
        for folder, target in folders:
            if path.startswith(folder):
                return target
        if path in produced:
            relative = os.path.relpath(path, cwd)
            return relative if climb(relative) <= 2 else path
        return None

    return name, urls


def _asked_urls(facts: CellFacts, urls: Mapping[str, str]) -> dict[int, set[str]]:
    """Cell -> the draft's URL sources it opened (credentials stripped)."""
    from .data.rules import strip_credentials

    asked: dict[int, set[str]] = {}
    for url, cells in facts.url_cells.items():
        source = strip_credentials(url)[0]
        if source in urls:
            for cell in cells:
                asked.setdefault(cell, set()).add(source)
    return asked


def _tools(reports: dict[int, CellReport], facts: CellFacts) -> None:
    roles = facts.roles
    for index, pids in facts.watch.execs.items():
        report = reports.get(index)
        if report is not None:
            report.tools = sorted({roles.binary[pid] for pid in pids
                                   if roles.of(pid) == TOOL and pid in roles.binary})


def _graph(reports: dict[int, CellReport], facts: CellFacts, names: dict[str, str]) -> None:
    """Edges to the last writer / binder before each cell, in execution order; the ordering
    constraints a concurrent run must also keep (`after`); depths.

    One pass in execution order, keeping per name (and per data file) its last binder
    (writer) and the cells that read it since. A cell that reads depends on the last binder;
    a cell that binds must follow the readers since then and the last binder (it would
    change what they saw, or leave its value behind theirs).
    """
    order = [c for c in dict.fromkeys(facts.watch.order) if c in reports]
    reads: dict[int, set[str]] = {}
    writes: dict[int, set[str]] = {}
    for path, (read_in, written_in) in facts.paths.items():
        if path in names:
            for cell in read_in:
                reads.setdefault(cell, set()).add(path)
            for cell in written_in:
                writes.setdefault(cell, set()).add(path)
    binder: dict[str, int] = {}  # "name x" / "file t.csv" -> last cell that bound / wrote it
    readers: dict[str, set[int]] = {}  # the same keys -> cells that read it since
    for cell in order:
        used = [f"name {n}" for n in sorted(set(free_names(facts.sources.get(cell, ""))))]
        used += [f"file {names[p]}" for p in sorted(reads.get(cell, ()), key=names.__getitem__)]
        changed = [f"name {n}" for n in sorted(facts.watch.bound.get(cell, ()))]
        changed += [f"file {names[p]}"
                    for p in sorted(writes.get(cell, ()), key=names.__getitem__)]
        depends: dict[int, list[str]] = {}
        for key in used:
            if (source := binder.get(key)) is not None and source != cell:
                depends.setdefault(source, []).append(key)
        after: dict[int, list[str]] = {}
        for key in changed:
            kind, _, what = key.partition(" ")
            verb = "rebinds" if kind == "name" else "rewrites"
            for reader in sorted(readers.get(key, ())):
                if reader != cell and reader not in depends:
                    after.setdefault(reader, []).append(f"{verb} {kind} {what} read there")
            if (last := binder.get(key)) is not None and last != cell and last not in depends:
                after.setdefault(last, []).append(f"{verb} {kind} {what} set there")
        for key in used:
            readers.setdefault(key, set()).add(cell)
        for key in changed:
            binder[key], readers[key] = cell, set()
        report = reports[cell]
        report.depends_on = [Predecessor(c, sorted(set(r), key=r.index))
                             for c, r in sorted(depends.items())]
        report.after = [Predecessor(c, sorted(set(r), key=r.index))
                        for c, r in sorted(after.items())]
        report.group = 1 + max((reports[p.cell].group or 0
                                for p in (*report.depends_on, *report.after)), default=-1)


def annotate_executed(executed: Path, report: CellsReport) -> str | None:
    """The executed notebook with each code cell's facts (its cells.yml entry) in the cell's
    metadata under `flo`, so JupyterLab shows them; None when the notebook is unreadable (the
    record's copy is then kept as it is). Outputs and sources are left untouched."""
    try:
        notebook = json.loads(executed.read_text(encoding="utf-8"))
        cells = notebook["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for index, cell in enumerate(cells):
        facts = report.cell(index)
        if facts is not None and isinstance(cell, dict):
            cell.setdefault("metadata", {})["flo"] = facts.to_dict()
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def executed_facts(executed: Path) -> dict[int, tuple[int | None, bool]]:
    """Code cell index -> (execution_count, whether it has an error output), from
    audit/executed.ipynb ({} when it is missing or unreadable)."""
    try:
        cells = json.loads(executed.read_text(encoding="utf-8")).get("cells") or []
    except (OSError, ValueError, AttributeError):
        return {}
    facts = {}
    for index, cell in enumerate(cells):
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            count = cell.get("execution_count")
            raised = any(isinstance(o, dict) and o.get("output_type") == "error"
                         for o in cell.get("outputs") or ())
            facts[index] = (count if isinstance(count, int) else None, raised)
    return facts
