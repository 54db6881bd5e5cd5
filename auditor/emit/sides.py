"""Manager and worker side by side: the outputs that need roles, and the per-role summary.

From the roles, the resolution, the recorder's samples and the system files seen, this drafts
`software/worker-environment.yml`, `compute/compute.yml` (measured), `software/apt.txt`, and
the summary's `roles` section: per side, processes seen, packages used, peak memory, tools
and Debian packages; for the workers, also which crashed and whether a `--workers` pool idled.

A worker crashed when a task-running process ended during the run (before teardown began)
with a status other than 0 or SIGTERM (pools end their workers with SIGTERM); the backpack
is then marked incomplete ("worker-died"), because the tasks it ran may not have finished.

Workers that ran tasks are the task runners alive while cells ran (`Roles.worker_roots`);
those started after the last cell (a pool refilling itself at the end) are only counted
apart. With no worker process, a notebook that used Dask ran its tasks in threads of the
kernel (`Client(processes=False)`); the --workers hint is given only when it connected to an
address no process of the run served (a scheduler it did not start).
"""

from __future__ import annotations

import signal
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backpack.compute import ComputeSpec, draft_compute, render_compute_yml
from ..backpack.session import Session
from ..roles import MANAGER, SIDES, TOOL, WORKER, Roles
from .apt import AptSpec, RunObserver, draft_apt, render_apt_txt
from .compute import MB, measure_compute
from .data.rules import is_local
from .disk import measure_disk, save_written, worker_written, written_sizes
from .environment import USED, EnvironmentSpec, render_environment_yml
from .workers import draft_worker_environment

if TYPE_CHECKING:
    from ..resolve import EnvIndex, Resolution

#: Debian packages named on a summary line; more are counted and left to software/apt.txt.
APT_SHOWN = 4
APT_FILE = "software/apt.txt"
_NORMAL_EXITS = (0, -signal.SIGTERM)


@dataclass
class SideOutputs:
    worker_spec: EnvironmentSpec | None
    compute: ComputeSpec
    apt: AptSpec
    report: dict[str, Any]
    crashed: list[dict[str, Any]] = field(default_factory=list)
    #: Sizes of the files workers wrote, stat'ed by this derive (None: read from the record).
    new_written_sizes: dict[str, int] | None = None

    def keep_measurements(self, record_dir: Path) -> None:
        """Put what this derive measured outside the record into it (audit/written.json)."""
        if self.new_written_sizes is not None:
            save_written(record_dir, self.new_written_sizes)

    def texts(self, notebook: str, date: str) -> dict[str, str]:
        texts = {"compute/compute.yml": render_compute_yml(self.compute, notebook, date)}
        if self.worker_spec is not None:
            texts["software/worker-environment.yml"] = (
                "# Worker environment: what task-running processes used, plus the worker "
                "runtime.\n" + render_environment_yml(self.worker_spec, notebook, date))
        if self.apt.packages:
            texts["software/apt.txt"] = render_apt_txt(self.apt, notebook, date)
        return texts


def pool_roots(session: Session) -> dict[int, str]:
    """pid -> role of the processes `--workers` started (session.json `pool`)."""
    pool = session.pool or {}
    return {int(p["pid"]): str(p["role"]) for p in pool.get("processes") or ()
            if p.get("pid") is not None}


def derive_sides(*, session: Session, roles: Roles, resolution: Resolution, index: EnvIndex,
                 observer: RunObserver, samples: list[dict], manager_spec: EnvironmentSpec,
                 python: str, notebook_stem: str,
                 record_dir: Path | None = None) -> SideOutputs:
    worker_spec = draft_worker_environment(resolution, index, roles, python=python,
                                           notebook_stem=notebook_stem)
    roots = roles.worker_roots()
    owner = worker_of(roles)
    cwd = session.cwd or None
    traced = worker_written(observer.writes, owner, cwd)
    sizes, new = written_sizes(record_dir, set().union(*traced.values()))
    disk = measure_disk(samples, owner, traced, sizes, cwd)
    compute = measure_compute(samples, owner, len(roots), disk) if roots else draft_compute()
    if not roots:
        compute.notes["all"] = "default, not measured: no worker ran; edit to fit the workload"
    apt = draft_apt(observer, roles, resolution.outside)
    crashed = crashed_workers(roles, session)
    used_by_manager = {p.name for p in manager_spec.pins if p.reason == USED}
    report: dict[str, Any] = {}
    for side in SIDES:
        pids = roles.processes(side)
        packages = {use.dist.name for use in resolution.used.values()
                    if any(roles.side(pid) == side for pid in use.pids)}
        if side == MANAGER:
            packages &= used_by_manager  # what cells used, not the kernel's start-up
        report[side] = {
            "processes": len(pids), "packages": sorted(packages, key=str.lower),
            "peak_rss_mb": _peak_rss(samples, set(pids)),
            "tools": sorted({roles.binary[p] for p in pids
                             if roles.of(p) == TOOL and p in roles.binary}),
            "apt": apt.by_side(side)}
    dask = any(use.dist.name.lower() == "distributed"
               and any(roles.side(pid) == MANAGER for pid in use.pids)
               for use in resolution.used.values())
    report[WORKER].update(workers_seen=len(roots), crashed=crashed,
                          started_by=_started_by(roots, session),
                          started_after_cells=len(roles.late),
                          note=_worker_note(roots, session, roles, observer, worker_spec,
                                            dask=dask))
    return SideOutputs(worker_spec, compute, apt, report, crashed,
                       sizes if new and record_dir is not None else None)


def worker_of(roles: Roles) -> dict[int, int]:
    """Each worker-side process -> the worker (task-running process) whose tree it is in."""
    roots = set(roles.worker_roots())
    owner: dict[int, int] = {}
    for pid in roles.role:
        if roles.side(pid) != WORKER:
            continue
        walk, steps = pid, 0
        while walk not in roots and walk in roles.parent and steps < 10_000:
            walk, steps = roles.parent[walk], steps + 1
        if walk in roots:
            owner[pid] = walk
    return owner


def crashed_workers(roles: Roles, session: Session) -> list[dict[str, Any]]:
    """Workers that ended during the run with an abnormal status (see the module doc)."""
    ended = session.ended or None
    crashed = []
    for pid in roles.worker_roots():
        status = roles.exits.get(pid)
        when = roles.exit_t.get(pid)
        if status is None or status in _NORMAL_EXITS:
            continue
        if ended is not None and when is not None and when >= ended:
            continue  # ended by teardown
        crashed.append({"pid": pid, "exit": status, "how": _how(status)})
    for member in (session.pool or {}).get("processes") or ():
        if (member.get("role") == WORKER and member.get("during_run")
                and member.get("exit") not in _NORMAL_EXITS
                and all(c["pid"] != member.get("pid") for c in crashed)):
            crashed.append({"pid": member.get("pid"), "exit": member.get("exit"),
                            "how": _how(int(member.get("exit") or 0)), "name": member["name"]})
    return crashed


def _how(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def _peak_rss(samples: list[dict], pids: set[int]) -> float | None:
    """Peak of the summed resident memory of `pids` at one sampling tick, in MB."""
    by_tick: dict[float, int] = defaultdict(int)
    for sample in samples:
        if sample.get("pid") in pids:
            by_tick[sample["t"]] += sample.get("rss") or 0
    return round(max(by_tick.values()) / MB, 1) if by_tick else None


def _started_by(roots: list[int], session: Session) -> str | None:
    """Who started the workers that ran tasks: "notebook" (its own LocalCluster, pool,
    executor), "flo-audit --workers" (a pool the notebook connected to), or None.

    flo-run reads this: a notebook that starts its own cluster must not be pointed at a
    provisioned scheduler (`Client(n_workers=2)` refuses to run when one is configured).
    """
    pool = set(pool_roots(session))
    if any(pid not in pool for pid in roots):
        return "notebook"
    return "flo-audit --workers" if roots else None


def _worker_note(roots: list[int], session: Session, roles: Roles, observer: RunObserver,
                 worker_spec: EnvironmentSpec | None, *, dask: bool = False) -> str:
    pool = session.pool or {}
    address = str(pool.get("address") or "")
    if address:
        target = address.rpartition("://")[2]
        connected = any(roles.side(pid) == MANAGER and pid not in pool_roots(session)
                        for pid in observer.connects.get(target, ()))
        if not connected:
            return (f"the --workers pool was idle: the notebook never connected to its "
                    f"scheduler ({address}); worker-environment.yml lists only the worker "
                    "runtime")
        return f"the notebook used the --workers pool at {address}"
    if worker_spec is None or not roots:
        unserved = _unserved_connects(roles, observer) if dask else []
        if unserved:
            return (f"no worker ran: the notebook connected to {', '.join(unserved[:3])}, "
                    "which no process of the run served; if that is a Dask scheduler, audit "
                    "with --workers N (flo-audit starts the scheduler and N traced workers)")
        if dask:
            return ("no worker process ran: the work ran in threads of the kernel (an "
                    "in-process Dask client), so the manager environment serves the workers; "
                    "worker-environment.yml is not written")
        return ("no worker ran: the notebook started no worker processes, so "
                "worker-environment.yml is not written (the manager's environment serves)")
    late = (f" ({len(roles.late)} more started after the last cell, not counted)"
            if roles.late else "")
    return f"{len(roots)} worker processes ran tasks{late}"


def _unserved_connects(roles: Roles, observer: RunObserver) -> list[str]:
    """TCP addresses the manager side connected to that no process of the run served."""
    served_ports = {address.rpartition(":")[2] for address in observer.served}
    found = []
    for address, pids in sorted(observer.connects.items()):
        ip, _, port = address.rpartition(":")
        if address in observer.served or (is_local(ip.strip("[]")) and port in served_ports):
            continue
        if any(roles.side(pid) == MANAGER for pid in pids):
            found.append(address)
    return found


def _apt_names(names: list[str]) -> str:
    """All names when few; else a count, the first few, and the file that lists them all."""
    if len(names) <= APT_SHOWN:
        return ", ".join(names)
    return (f"{len(names)} packages ({', '.join(names[:APT_SHOWN])}, ...; all in "
            f"{APT_FILE})")


def role_lines(summary: dict) -> list[str]:
    """The closing summary's per-role lines (processes, packages, peak memory, apt, crashes)."""
    report = summary.get("roles") or {}
    lines = []
    for side in SIDES:
        part = report.get(side)
        if not part:
            continue
        peak = part.get("peak_rss_mb")
        memory = f", peak memory {peak:.0f} MB" if peak is not None else ""
        lines.append(f"{side}: {part.get('processes', 0)} processes, "
                     f"{len(part.get('packages') or ())} packages used{memory}"
                     + (f"; apt: {_apt_names(part['apt'])}" if part.get("apt") else ""))
    worker = report.get(WORKER) or {}
    for crash in worker.get("crashed") or ():
        lines.append(f"worker {crash.get('name') or crash['pid']} {crash['how']} during the run")
    if worker.get("note"):
        lines.append(worker["note"])
    return lines
