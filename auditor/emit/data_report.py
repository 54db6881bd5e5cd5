"""The data part of the audit's report: the "data" object of summary.json and its display.

Secrets (files, and credentials removed from URLs) and absolute-path inputs carry the note
that tells the user what to do; outputs, intermediates and URLs requested but not read are
listed (never as inputs); scratch files are only counted. A URL the run served itself is
listed as "served by the run: not fetched"; a UDP connect (a local-IP probe) is not reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..backpack.layout import DATA
from .data import DataDraft
from .data_rules import ABSOLUTE_NOTE, SECRET_NOTE, SIGNED_URL_NOTE, UNREAD_URL_NOTE
from .data_yml import human_size

SERVED_URL_NOTE = ("served by the run: not fetched (a process of the run accepted connections on "
                   "its port; the files it served are inputs)")


def data_summary(draft: DataDraft) -> dict[str, Any]:
    """The "data" object of summary.json."""
    return {
        "file": DATA,
        "inputs": [e.to_yaml_dict() for e in draft.inputs],
        "outputs": list(draft.outputs),
        "intermediates": list(draft.intermediates),
        "scratch_files": draft.scratch,
        "secrets": [{"path": p, "note": SECRET_NOTE} for p in draft.secrets],
        "absolute_inputs": [{"path": p, "note": ABSOLUTE_NOTE} for p in draft.absolute],
        "signed_urls": [{"url": e.source, "removed": list(e.credentials or ()),
                         "note": SIGNED_URL_NOTE} for e in draft.signed_urls],
        "unread_urls": [{"url": url, "why": why, "note": UNREAD_URL_NOTE}
                        for url, why in draft.unread_urls],
        "served_urls": [{"url": url, "note": SERVED_URL_NOTE} for url in draft.served_urls],
        "remote_connections": list(draft.remote),
        "warnings": list(draft.warnings),
    }


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
        for entry in inputs:
            size = human_size(entry.get("expected_size"))
            if entry.get("files") is not None:
                size += f" in {entry['files']} files"
            cell = entry.get("first_cell")
            remote = entry.get("source_type") in ("http", "https")
            table.add_row(entry["name"], entry["source" if remote else "target_location"], size,
                          entry.get("read_by", ""), "" if cell is None else str(cell))
        console.print(table)
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
