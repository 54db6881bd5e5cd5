"""System packages the run used, `software/apt.txt` (repo2docker's convention), by role.

What counts (DESIGN.md: binaries and shared libraries executed or mapped outside any Python
environment):
- every executed binary that is not a Python interpreter (the environment files provide
  Python), whichever package owns it, Essential ones included: a task that runs `gzip` needs
  gzip wherever it runs;
- a shared library (`*.so`, `*.so.N`) mapped by a tool, or mapped while a cell ran, unless the
  kernel had already mapped it before the first cell (the interpreter's own libraries, libc:
  every process maps them) or its package is Essential (present on every Debian system).
Paths owned by a Python distribution, or inside the environment, never count. Owners come
from `dpkg -S`, batched; where dpkg is missing, apt.txt is simply not written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..events import Accept, Access, Connect, Event, Exec
from ..resolve.system import Answers, default_answers_file, dpkg_owners, essential_packages
from ..roles import TOOL, Roles, is_python_interpreter

_LIBRARY = re.compile(r"\.so(\.\d+)*$")


class RunObserver:
    """One pass over the event stream: system files executed or mapped, connects, and the
    files each process opened for writing (for compute.yml's disk).

    Kept small on purpose: it sees every event of a long trace.
    """

    def __init__(self, kernel_pid: int | None) -> None:
        self.kernel_pid = kernel_pid
        #: path -> {pid: mapped/executed while a cell ran}
        self.libraries: dict[str, dict[int, bool]] = {}
        self.executed: dict[str, set[int]] = {}
        self.baseline: set[str] = set()  # libraries the kernel mapped before the first cell
        self.connects: dict[str, set[int]] = {}  # TCP connects: "ip:port" -> pids
        self.served: set[str] = set()  # "ip:port" a process of the run accepted on
        self.writes: dict[str, set[int]] = {}  # path -> pids that opened it for writing

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        libraries, executed, connects = self.libraries, self.executed, self.connects
        writes = self.writes
        for event in events:
            if isinstance(event, Access):
                path, mode = event.path, event.mode
                if ".so" in path and mode == "r" and _LIBRARY.search(path):
                    if event.cell is None and event.pid == self.kernel_pid:
                        self.baseline.add(path)
                    pids = libraries.setdefault(path, {})
                    pids[event.pid] = pids.get(event.pid, False) or event.cell is not None
                elif mode == "w" or mode == "rw":
                    writes.setdefault(path, set()).add(event.pid)
            elif isinstance(event, Exec):
                executed.setdefault(event.path, set()).add(event.pid)
            elif isinstance(event, Connect):
                if not event.datagram and not event.url:
                    connects.setdefault(event.address, set()).add(event.pid)
            elif isinstance(event, Accept):
                self.served.add(event.address)
            yield event


@dataclass
class AptSpec:
    """Debian packages by side ("manager"/"worker"), and which paths made each count."""

    packages: dict[str, set[str]] = field(default_factory=dict)  # package -> sides
    paths: dict[str, list[str]] = field(default_factory=dict)  # package -> paths

    def by_side(self, side: str) -> list[str]:
        return sorted(p for p, sides in self.packages.items() if side in sides)

    def to_json(self) -> dict:
        return {package: {"roles": sorted(sides), "paths": self.paths.get(package, [])}
                for package, sides in sorted(self.packages.items())}


def draft_apt(observer: RunObserver, roles: Roles, outside: Iterable[str]) -> AptSpec:
    """The Debian packages behind system files the run used, with the side that used them.

    `outside` is the resolution's list of paths no Python environment owns.
    """
    outside_set = set(outside)
    used: dict[str, set[str]] = {}  # path -> sides
    for path, pids in observer.executed.items():
        if path not in outside_set or is_python_interpreter(path):
            continue
        used.setdefault(path, set()).update(_sides(roles, pids))
    for path, by_pid in observer.libraries.items():
        if path not in outside_set or path in observer.baseline:
            continue
        counted = [pid for pid, in_cell in by_pid.items() if in_cell or roles.of(pid) == TOOL]
        if counted:
            used.setdefault(path, set()).update(_sides(roles, counted))
    answers = Answers(default_answers_file())
    owners = dpkg_owners(used, answers)
    essential = essential_packages(owners.values(), answers)
    answers.save()
    spec = AptSpec()
    for path, package in sorted(owners.items()):
        if package in essential and path not in observer.executed:
            continue
        if not used[path]:
            continue
        spec.packages.setdefault(package, set()).update(used[path])
        spec.paths.setdefault(package, []).append(path)
    return spec


def _sides(roles: Roles, pids: Iterable[int]) -> set[str]:
    return {side for side in (roles.side(pid) for pid in pids) if side is not None}


def render_apt_txt(spec: AptSpec, notebook: str, date: str) -> str:
    """`software/apt.txt`: one Debian package per line, comment lines above them."""
    lines = [f"# Drafted by flo-audit from a traced run of {notebook} on {date}.",
             "# Debian packages owning binaries the run executed and shared libraries it",
             "# mapped outside any Python environment; by role in audit/summary.json."]
    lines += sorted(spec.packages)
    return "\n".join(lines) + "\n"
