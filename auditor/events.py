"""The event model every tracer backend produces and every later stage consumes.

One stream of events per audit, in the order things happened. Backends yield events with
`cell=None`; `assign_cells` then attributes each event to the notebook cell that was running
(from the `CellMark` events the kernel side emits), so cell attribution is part of the model.

Paths are absolute and normalised. `Access.path` is the path as the process named it (made
absolute against its dirfd or cwd); `Access.real` is the kernel's resolved path when the
backend knows it (strace -y), which is what environment indexes are matched against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields

# Magic path prefix the kernel side opens (and fails to open) to put cell boundaries into a
# syscall trace, in order with the syscalls around them: /.flo-backpack-mark/cell/<seq>/<phase>
MARK_PREFIX = "/.flo-backpack-mark/"


@dataclass(slots=True)
class Access:
    """A file or directory successfully opened (or mapped) by process `pid`."""

    pid: int
    path: str
    mode: str  # "r" read, "w" write/create, "rw" both, "d" directory open
    real: str | None = None
    t: float = 0.0
    cell: int | None = None
    source: str = "strace"  # which layer saw it: "strace", "ptrace" or "hook"
    given: str | None = None  # the path as the program named it, when relative ('../x.csv')
    kind = "access"


@dataclass(slots=True)
class Exec:
    """A successful execve: `pid` now runs `path` with `argv`."""

    pid: int
    path: str
    argv: list[str]
    t: float = 0.0
    cell: int | None = None
    kind = "exec"


@dataclass(slots=True)
class Spawn:
    """Process `pid` created `child`; `thread` when they share an address space (CLONE_THREAD)."""

    pid: int
    child: int
    thread: bool = False
    t: float = 0.0
    cell: int | None = None
    kind = "spawn"


@dataclass(slots=True)
class Exit:
    """Process `pid` ended: `status` is the exit code, or -N when killed by signal N."""

    pid: int
    status: int
    t: float = 0.0
    cell: int | None = None
    kind = "exit"


@dataclass(slots=True)
class Connect:
    """A network connection (socket connect, or a URL opened at Python level)."""

    pid: int
    address: str  # "host:port" for sockets, the full URL for url events
    t: float = 0.0
    cell: int | None = None
    url: str | None = None
    host: str | None = None  # the name looked up before a socket connect to an address
    #: A UDP socket's connect: it only sets the default peer and sends nothing (how Dask and
    #: others find the local IP: connect to 8.8.8.8:80, then getsockname). Never an input.
    datagram: bool = False
    kind = "connect"


@dataclass(slots=True)
class Accept:
    """Process `pid` accepted a connection on its listening `address` ("ip:port"): the run
    itself served that port (a loopback HTTP server, a Dask scheduler)."""

    pid: int
    address: str
    t: float = 0.0
    cell: int | None = None
    kind = "accept"


@dataclass(slots=True)
class Import:
    """A module named by a cell's import statement, resolved to its file by the kernel."""

    pid: int
    module: str
    path: str | None
    t: float = 0.0
    cell: int | None = None
    kind = "import"


@dataclass(slots=True)
class CellMark:
    """Start or end of the `seq`-th cell the kernel ran (0-based, in execution order)."""

    pid: int
    seq: int
    phase: str  # "start" | "end"
    t: float = 0.0
    cell: int | None = None
    kind = "cell"


@dataclass(slots=True)
class Bind:
    """The names of the user namespace a cell bound or rebound (the kernel side's `names`)."""

    pid: int
    names: list[str]
    t: float = 0.0
    cell: int | None = None
    kind = "bind"


Event = Access | Exec | Spawn | Exit | Connect | Accept | Import | CellMark | Bind

EVENT_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Access, Exec, Spawn, Exit, Connect, Accept, Import, CellMark, Bind)
}


def parse_mark(path: str) -> tuple[int, str] | None:
    """Decode a cell-mark path (`MARK_PREFIX` + cell/<seq>/<phase>) into (seq, phase)."""
    if not path.startswith(MARK_PREFIX):
        return None
    parts = path[len(MARK_PREFIX):].split("/")
    if len(parts) != 3 or parts[0] != "cell" or parts[2] not in ("start", "end"):
        return None
    try:
        return int(parts[1]), parts[2]
    except ValueError:
        return None


def mark_path(seq: int, phase: str) -> str:
    return f"{MARK_PREFIX}cell/{seq}/{phase}"


def assign_cells(events: Iterable[Event], cell_of_seq: dict[int, int]) -> Iterator[Event]:
    """Set `event.cell` to the notebook cell index running when the event happened.

    `cell_of_seq` maps the kernel's execution sequence number to the notebook cell index
    (the recorder knows which cell it sent n-th). Events between cells keep `cell=None`:
    kernel machinery (DESIGN.md rule 6).
    """
    current: int | None = None
    for event in events:
        if isinstance(event, CellMark):
            cell = cell_of_seq.get(event.seq)
            current = cell if event.phase == "start" else None
            event.cell = cell
        elif event.cell is None:
            event.cell = current
        yield event


def first_accesses(events: Iterable[Event]) -> Iterator[Event]:
    """Drop each Access that repeats an earlier one in all but its time (same process, path,
    mode, resolved path, cell, given name and layer): a loop reading one file, the copies of a
    library every thread maps. Every later stage keeps sets or the first use of a path by a
    process, so a repeat changes nothing it reports; dropping it there saves the stages the
    bulk of a long trace. Memory grows with the distinct accesses, as the stages' own does."""
    seen: set[tuple[int, str, str, str | None, int | None, str | None, str]] = set()
    add = seen.add
    for event in events:
        if type(event) is Access:
            key = (event.pid, event.path, event.mode, event.real, event.cell, event.given,
                   event.source)
            if key in seen:
                continue
            add(key)
        yield event


#: Each event type's field names, in order: to_json reads them without asdict's deep copy
#: (the tracers write an event per recorded syscall; every field is a plain JSON value).
FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in EVENT_TYPES.values()}
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def to_json(event: Event) -> str:
    data = {name: getattr(event, name) for name in FIELD_NAMES[type(event)]}
    data["kind"] = event.kind
    return _ENCODE(data)


def from_json(line: str) -> Event:
    data = json.loads(line)
    cls = EVENT_TYPES[data.pop("kind")]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def write_jsonl(events: Iterable[Event], path: str) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for event in events:
            out.write(to_json(event))
            out.write("\n")
            count += 1
    return count


def read_jsonl(path: str) -> Iterator[Event]:
    with open(path, encoding="utf-8") as src:
        for line in src:
            if line.strip():
                yield from_json(line)
