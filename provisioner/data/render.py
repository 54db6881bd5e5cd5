"""How `flo-run fetch` and `flo-run verify` look to people: a progress bar per file while
fetching, then one table row per entry. Programs use `--json` (the reports' `to_dict`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .fetch import Progress as ProgressCallback
from .results import FetchReport, VerifyReport

_STYLE = {"fetched": "green", "present": "cyan", "in place": "cyan", "verified": "green",
          "unchecked": "yellow", "failed": "red", "cancelled": "yellow"}


@contextmanager
def progress_display(console: Console) -> Iterator[ProgressCallback]:
    """A rich Progress with one task per entry, fed by fetch's (name, done, total) callback.
    Safe to call from the fetch threads (tasks are created under a lock)."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    tasks: dict[str, TaskID] = {}
    lock = threading.Lock()
    with Progress(*columns, console=console, transient=True) as bars:
        def update(name: str, done: int, total: int | None) -> None:
            with lock:
                if name not in tasks:
                    tasks[name] = bars.add_task(name, total=total)
            bars.update(tasks[name], completed=done, total=total)

        yield update


def render_report(report: FetchReport | VerifyReport, console: Console) -> None:
    """One row per entry, then a closing line."""
    verb = "fetch" if isinstance(report, FetchReport) else "verify"
    table = Table(title=f"data of {report.backpack.name} ({verb}, profile {report.profile})")
    for column in ("entry", "status", "bytes", "seconds"):
        table.add_column(column)
    table.add_column("where / what", overflow="fold")
    for entry in report.entries:
        style = _STYLE.get(entry.status, "")
        table.add_row(entry.name, f"[{style}]{entry.status}[/{style}]" if style else entry.status,
                      f"{entry.bytes:,}", f"{entry.seconds:.2f}",
                      entry.message if not entry.ok or entry.status == "unchecked"
                      else entry.target or "")
    console.print(table)
    where = f" in {report.run_dir}" if report.run_dir else " at their sources"
    if not report.entries:
        console.print("no data.yml entries: nothing to do")
    elif report.ok:
        console.print(f"[green]ok[/green]: {len(report.entries)} entries{where} "
                      f"({report.seconds:.2f} s)")
    else:
        console.print(f"[red]{len(report.problems)} problem(s)[/red]{where}")
