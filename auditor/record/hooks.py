"""The hooks-only tracer backend: no syscall tracer, only what the kernel side logs.

Used where ptrace is not permitted (containers). The kernel runs unwrapped, and the events
come from hooks.jsonl (PEP 578 audit hook + IPython cell events, kernels/flo_kernel.py).
`hook_events` gives the syscall backends the part of that log syscalls cannot show.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..events import Access, Bind, CellMark, Connect, Event, Exec, Import, Spawn
from .base import Tracer, register

HOOK_LOG = "hooks.jsonl"
_EV = '{"ev":"'  # how every record begins (kernels/flo_kernel.py)


@register
class HooksTracer(Tracer):
    """Audit hooks only: Python-level file, process and network use of the kernel."""

    name = "hooks"
    cannot_see = ("files opened by C code, binaries' own file use, and processes not forked "
                  "from the kernel are invisible")

    def wrap(self, argv: list[str], record_dir: Path, stem: str = "trace") -> list[str]:
        return list(argv)

    def events(self, record_dir: Path) -> Iterator[Event]:
        """Every hooks.jsonl record as events, in time order."""
        return _in_time_order(_convert(entry) for entry in read_hook_log(record_dir))

    def warnings(self, record_dir: Path) -> list[str]:
        if not (Path(record_dir) / HOOK_LOG).exists():
            return ["hooks.jsonl is missing: the kernel side never attached, nothing was seen"]
        return []


def hook_events(record_dir: Path) -> Iterator[Event]:
    """The Import events, URLs, named connects, namespace bindings and the kernel side's own
    reads and listings (`opened`, `listed`) of hooks.jsonl, in time order.

    Syscall traces cannot show which module a cell named, which URL it opened, which host
    name an address was looked up as, or which names a cell bound, and under ptrace the
    import system's reads and listings and the notebook's `open` reads are the kernel side's
    to record (kernels/flo_kernel.py `_quiet_reads`); the strace and ptrace backends merge
    these into their own streams by time.
    """
    kinds = ("import", "url", "connect", "names", "opened", "listed")
    selected = ([event for event in _convert(entry)
                 if isinstance(event, (Import, Bind)) or entry["ev"] in ("opened", "listed")
                 or (isinstance(event, Connect) and (event.url or event.host))]
                for entry in read_hook_log(record_dir, kinds))
    return _in_time_order(selected)


def listed_dir(path: str) -> str:
    """The folder a listing read: `path` itself, or for a glob pattern the deepest folder
    above its first wildcard (`/data/run*/*.csv` -> `/data`)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return "/".join(parts[:i]) or "/"
    return path


def _in_time_order(groups: Iterable[Iterable[Event]]) -> Iterator[Event]:
    """Flatten and sort by time; stable, so one process's same-instant events keep file order.

    Forked children write through while the kernel buffers until cell end, so file order is
    not time order across processes.
    """
    events = [event for group in groups for event in group]
    events.sort(key=lambda event: event.t)
    return iter(events)


def _convert(entry: dict[str, Any]) -> list[Event]:
    """The events one hooks.jsonl record stands for (none for the `kernel` record)."""
    kind, pid, t = entry.get("ev"), int(entry.get("pid") or 0), float(entry.get("t") or 0.0)
    try:
        if kind == "open":
            return [Access(pid, entry["path"], entry.get("mode") or "r", t=t, source="hook",
                           given=entry.get("as"))]
        if kind == "opened":  # a read that succeeded, made by the kernel side itself
            return [Access(pid, entry["path"], "r", real=entry.get("real"), t=t,
                           source="hook", given=entry.get("as"))]
        if kind == "listed":  # the import system's listing, made by the kernel side itself
            return [Access(pid, entry["path"], "d", real=entry.get("real"), t=t,
                           source="hook", given=entry.get("as"))]
        if kind == "listdir":
            given = entry.get("as")
            return [Access(pid, listed_dir(entry["path"]), "d", t=t, source="hook",
                           given=listed_dir(given) if given else None)]
        if kind == "import":
            path = entry.get("path")
            found: list[Event] = [Import(pid, entry["module"], path, t=t)]
            if path:  # the resolver attributes the module's distribution from this access
                found.append(Access(pid, path, "r", t=t, source="hook"))
            return found
        if kind == "exec":
            return [Exec(pid, entry.get("path") or "", list(entry.get("argv") or []), t=t)]
        if kind == "connect":
            return [Connect(pid, entry["address"], t=t, host=entry.get("host"),
                            datagram=bool(entry.get("udp")))]
        if kind == "url":
            return [Connect(pid, entry["url"], t=t, url=entry["url"])]
        if kind == "cell":
            return [CellMark(pid, int(entry["seq"]), entry["phase"], t=t)]
        if kind == "fork":
            return [Spawn(pid, int(entry["child"]), t=t)]
        if kind == "names":
            return [Bind(pid, [str(name) for name in entry["bound"]], t=t)]
    except (KeyError, TypeError, ValueError):
        return []  # a malformed record: skip it rather than lose the whole log
    return []


def kernel_record(record_dir: Path) -> dict[str, Any]:
    """The `kernel` record the kernel side wrote first in hooks.jsonl ({} when absent)."""
    for entry in read_hook_log(record_dir):
        if entry.get("ev") == "kernel":
            return entry
    return {}


def read_hook_log(record_dir: Path, kinds: Container[str] | None = None
                  ) -> Iterator[dict[str, Any]]:
    """The records of hooks.jsonl in file order; a torn last line (killed writer) is skipped.
    `kinds`: only records of those `ev` values (the others are not decoded where `ev` comes
    first, as the kernel side writes it)."""
    path = Path(record_dir) / HOOK_LOG
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="surrogateescape") as src:
        for line in src:
            if kinds is not None and line.startswith(_EV):
                end = line.find('"', len(_EV))
                if end > 0 and line[len(_EV):end] not in kinds:
                    continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (kinds is None or entry.get("ev") in kinds):
                yield entry
