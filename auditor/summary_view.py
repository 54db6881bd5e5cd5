"""The audit's closing report for people: the summary.json of one audit, printed with rich.

`flo-audit` (auditor/cli.py) prints it after an audit, a derive or a verification; programs
read summary.json itself (`--json`). The INCOMPLETE line of a run that did not complete goes
to stderr as well.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .backpack.layout import DATA
from .common.execution import FailedCell, Status
from .emit.data.yml import human_size
from .emit.environment import USED
from .emit.sides import role_lines


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
    cell = FailedCell.from_json(failed) if status == Status.FAILED else None
    if cell is not None:
        return f"INCOMPLETE: {cell.line}; the specs cover only the cells that ran"
    if status == Status.TIMEOUT:
        where = f" in cell {failed['index']}" if failed.get("index") is not None else ""
        return f"INCOMPLETE: the run timed out{where}; raise --timeout and audit again"
    if status == Status.WORKER_DIED:
        return ("INCOMPLETE: a worker died during the run (see above); its tasks may not have "
                "finished")
    if status == Status.KERNEL_DIED:
        return "INCOMPLETE: the kernel died during the run; see audit/kernel.stderr"
    return f"INCOMPLETE: the run ended with status {status!r}"


#: Rows of the inputs table printed; data.yml lists them all (10,000 rows took 7 s to print).
INPUTS_SHOWN = 20


def render_data(summary: Mapping[str, Any], console: Console) -> None:
    """Print the inputs table and what the user must act on (secrets, absolute paths)."""
    data = summary.get("data")
    if not isinstance(data, Mapping):
        return
    inputs = data.get("inputs") or []
    if inputs:
        table = Table(title=f"Inputs drafted in {data.get('file', DATA)}", title_justify="left",
                      box=None, pad_edge=False)
        for column in ("name", "as used", "size", "read by", "cell"):
            table.add_column(column, style="bold" if column == "name" else None)
        for entry in inputs[:INPUTS_SHOWN]:
            size = human_size(entry.get("expected_size"))
            if entry.get("files") is not None:
                size += f" in {entry['files']} files"
            cell = entry.get("first_cell")
            remote = entry.get("source_type") in ("http", "https")
            table.add_row(entry["name"], entry["source" if remote else "target_location"], size,
                          entry.get("read_by", ""), "" if cell is None else str(cell))
        console.print(table)
        if len(inputs) > INPUTS_SHOWN:
            rest = inputs[INPUTS_SHOWN:]
            total = sum(e.get("expected_size") or 0 for e in rest)
            console.print(f"... and {len(rest):,} more inputs ({human_size(total)}), all in "
                          f"{data.get('file', DATA)}")
    else:
        console.print(f"no input data read: {data.get('file', DATA)} lists none")
    for item in data.get("secrets") or ():
        console.print(Text("secret ", style="red bold") + Text(f"{item['path']}: {item['note']}"))
    for item in data.get("signed_urls") or ():
        console.print(Text("secret ", style="red bold")
                      + Text(f"{item['url']}: {item['note']} (removed: "
                             f"{', '.join(item['removed'])})"))
    for item in data.get("unread_urls") or ():
        console.print(Text("url ", style="yellow bold")
                      + Text(f"{item['url']}: {item['why']}; {item['note']}"))
    for item in data.get("served_urls") or ():
        console.print(Text("url ", style="yellow bold") + Text(f"{item['url']}: {item['note']}"))
    for item in data.get("absolute_inputs") or ():
        console.print(Text("input ", style="yellow bold")
                      + Text(f"{item['path']}: {item['note']}"))
    for address in data.get("remote_connections") or ():
        console.print(Text("remote connection: ", style="yellow bold") + Text(address))
    produced = [f"{len(data.get('outputs') or ())} outputs",
                f"{len(data.get('intermediates') or ())} intermediates"]
    if data.get("scratch_files"):
        produced.append(f"{data['scratch_files']} scratch files")
    console.print(", ".join(produced) + " written by the run (listed in audit/summary.json)")
