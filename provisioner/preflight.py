"""Preflight: every check that can fail before anything is built, fetched or submitted.

The first stage of each deploying `flo-run` command (DESIGN.md rule 11), and alone as
`flo-run check BP`. Each check returns one `Check` (passed / warning / failed, with the reason
and the fix); `run_preflight` runs them all, so one call shows every problem, and
`PreflightFailed` stops the run before the data stage when any failed.

Checks that would cost time on a warm run are skipped for environments already in the cache
(their pins were installable and their interpreter found when they were built).
"""

from __future__ import annotations

import errno
import os
import platform
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from auditor.backpack.compute import ComputeSpec
from auditor.backpack.data import DataSpec
from auditor.common.errors import CommandError, FloError
from auditor.common.process import run

from .batch_query import BATCH_COMMANDS, largest_node, queue_limits
from .envs.base import EnvRequest
from .envs.cache import EnvCache
from .site import SiteProfile

PASSED, WARNING, FAILED = "passed", "warning", "failed"


MB = 10**6


@dataclass(frozen=True)
class Check:
    """One preflight check: its name, how it came out, and why (with the fix when failed)."""

    name: str
    status: str  # passed | warning | failed
    reason: str

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "reason": self.reason}


@dataclass
class PreflightPlan:
    """What the run is about to do, as far as the checks need it (`run.plan_run` makes it)."""

    compute: ComputeSpec
    data_spec: DataSpec | None
    engine: str  # dask-local | notebook | a batch system (slurm, pbs, sge, htcondor, lsf)
    workers: int
    scratch: Path
    cache: EnvCache
    requests: Sequence[EnvRequest] = ()  # environments the run will use
    host: str = "127.0.0.1"
    port: int = 0  # the scheduler's port; 0 = one the OS picks
    profile: str | None = None
    site: SiteProfile = field(default_factory=SiteProfile)


@dataclass
class Preflight:
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAILED]

    @property
    def exit_code(self) -> int:
        return 2 if self.failed else 0

    def to_dict(self) -> dict:
        return {"ok": not self.failed, "checks": [c.to_dict() for c in self.checks],
                "seconds": round(self.seconds, 3)}


class PreflightFailed(FloError):
    """A preflight check failed: nothing was built, fetched or submitted."""

    def __init__(self, report: Preflight) -> None:
        first = report.failed[0]
        more = f" (and {len(report.failed) - 1} more; run `flo-run check`)" \
            if len(report.failed) > 1 else ""
        super().__init__(f"preflight: {first.name}: {first.reason}{more}; nothing was built "
                         "or started")
        self.report = report


def run_preflight(plan: PreflightPlan) -> Preflight:
    """Run every check of `plan`; never raises for a failed check (see `PreflightFailed`)."""
    started = time.monotonic()
    report = Preflight()
    for check in CHECKS:
        report.checks.extend(check(plan))
    report.seconds = time.monotonic() - started
    return report


def require(plan: PreflightPlan) -> Preflight:
    """`run_preflight`, raising `PreflightFailed` when a check failed."""
    report = run_preflight(plan)
    if report.failed:
        raise PreflightFailed(report)
    return report


# ---------------------------------------------------------------- the checks


def check_disk(plan: PreflightPlan) -> list[Check]:
    """Free space where the run folder and the environments go, against the data total, the
    workers' disk (when they run on this machine) and the environments still to build."""
    scratch = [("data", _data_bytes(plan))]
    disk = plan.compute.disk * MB
    if plan.engine == "dask-local" and disk:
        scratch.append((f"{plan.workers} worker(s) x disk", disk * plan.workers))
    needs: dict[Path, list[tuple[str, int]]] = {_existing(plan.scratch): scratch}
    missing = [r for r in plan.requests if plan.cache.stamp(r.key) is None]
    if missing:
        estimate = sum(_environment_bytes(r) for r in missing)
        needs.setdefault(_existing(plan.cache.root), []).append(
            (f"{len(missing)} environment(s) to build", estimate))
    checks = []
    by_device: dict[int, tuple[list[Path], list[tuple[str, int]]]] = {}
    for folder, items in needs.items():  # scratch and cache on one filesystem add up
        folders, merged = by_device.setdefault(folder.stat().st_dev, ([], []))
        folders.append(folder)
        merged.extend(items)
    for folders, items in by_device.values():
        need = sum(size for _, size in items)
        free = shutil.disk_usage(folders[0]).free
        parts = ", ".join(f"{what} {_mb(size)}" for what, size in items if size)
        where = " and ".join(str(f) for f in folders)
        if need > free:
            checks.append(Check("disk", FAILED, f"{where} has {_mb(free)} free but the run "
                                f"needs {_mb(need)} ({parts}); free space there or choose "
                                "another folder (--scratch-dir, $FLO_SCRATCH_DIR, --cache-dir, "
                                "$FLO_CACHE_DIR)"))
        else:
            checks.append(Check("disk", PASSED, f"{where}: {_mb(free)} free, "
                                f"{_mb(need)} needed" + (f" ({parts})" if parts else "")))
    return checks


def check_node(plan: PreflightPlan) -> list[Check]:
    """compute.yml's cores and memory per worker against what one node offers."""
    compute = plan.compute
    if plan.engine == "notebook":
        return [Check("resources", PASSED, "no workers provisioned (the notebook starts its "
                      "own)")]
    if plan.engine == "dask-local":
        where, cores, memory = "this machine", os.cpu_count() or 1, \
            psutil.virtual_memory().total // (1024 * 1024)
    else:
        offered = largest_node(plan.engine)
        if offered is None:
            return [Check("resources", WARNING, f"{plan.engine} did not say what a node "
                          "offers; cores and memory not checked")]
        where, (cores, memory) = f"the largest {plan.engine} node", offered
    checks = []
    if compute.cores > cores:
        checks.append(Check("cores", FAILED, f"compute.yml asks {compute.cores} cores per "
                            f"worker but {where} has {cores}; lower 'cores' in "
                            "compute/compute.yml"))
    else:
        checks.append(Check("cores", PASSED, f"{compute.cores} per worker, {where} has {cores}"))
    if compute.memory > memory:
        checks.append(Check("memory", FAILED, f"compute.yml asks {compute.memory} MB per worker "
                            f"but {where} has {memory} MB; lower 'memory' in "
                            "compute/compute.yml"))
    elif plan.engine == "dask-local" and compute.memory * plan.workers > memory:
        checks.append(Check("memory", WARNING, f"{plan.workers} workers x {compute.memory} MB "
                            f"is more than the {memory} MB of {where}"))
    else:
        checks.append(Check("memory", PASSED, f"{compute.memory or 'no limit'} MB per worker, "
                            f"{where} has {memory} MB"))
    return checks


def check_batch(plan: PreflightPlan) -> list[Check]:
    """The batch system's commands are on PATH and its controller answers."""
    if plan.engine not in BATCH_COMMANDS:
        return []
    commands, probe = BATCH_COMMANDS[plan.engine]
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        return [Check("batch system", FAILED, f"{', '.join(missing)} not found on PATH: the "
                      f"{plan.engine} engine needs them (install the client or load its "
                      "module), or choose another --engine")]
    try:
        run(list(probe), timeout=20, what=f"asking {plan.engine}")
    except CommandError as exc:
        return [Check("batch system", FAILED, f"{exc}; is the controller up?")]
    return [Check("batch system", PASSED, f"{', '.join(commands)} found; {probe[0]} answers")]


def check_queue(plan: PreflightPlan) -> list[Check]:
    """The queue the jobs go to exists, is up, and allows the walltime asked (where the
    system says: SLURM's partition State and MaxTime)."""
    if plan.engine not in BATCH_COMMANDS or shutil.which(BATCH_COMMANDS[plan.engine][0][0]) \
            is None:
        return []
    limits = queue_limits(plan.engine, plan.site.queue)
    if limits is None:
        return []
    what = f"{plan.engine} queue {limits.name}"
    if not limits.exists:
        return [Check("queue", FAILED, f"{what} does not exist; name one that does "
                      "(--queue, or queue/partition in the site file)")]
    if limits.state not in (None, "UP"):
        return [Check("queue", FAILED, f"{what} is {limits.state}: jobs would wait there; "
                      "choose another queue")]
    wanted = plan.site.walltime_seconds
    if wanted is not None and limits.max_seconds is not None and wanted > limits.max_seconds:
        return [Check("queue", FAILED, f"walltime {plan.site.walltime} is longer than the "
                      f"{_hms(limits.max_seconds)} {what} allows; ask less (--walltime) or "
                      "choose another queue")]
    allowed = _hms(limits.max_seconds) if limits.max_seconds is not None else "no time limit"
    return [Check("queue", PASSED, f"{what} is up ({allowed}"
                  + (f", walltime {plan.site.walltime})" if wanted is not None else ")"))]


def check_site(plan: PreflightPlan) -> list[Check]:
    """The site file read (keys it has that flo-run does not know are a warning), and what the
    engine would submit made from it: a setting the system cannot use fails here, before
    anything is built."""
    from .engines import EngineSpec, get_engine
    from .engines.jobqueue import BatchEngine

    site, checks = plan.site, []
    if site.path is not None:
        if site.unknown:
            checks.append(Check("site", WARNING, f"{site.path}: keys not known to flo-run, "
                                f"ignored: {', '.join(site.unknown)} (a typo?)"))
        else:
            checks.append(Check("site", PASSED, f"{site.path} read"))
    engine = get_engine(plan.engine)
    if isinstance(engine, BatchEngine):
        spec = EngineSpec(run_dir=plan.scratch / "run", worker_python=Path("python"),
                          workers=plan.workers, threads=plan.compute.cores,
                          memory_mb=plan.compute.memory, disk_mb=plan.compute.disk,
                          host=plan.host, port=plan.port, site=site)
        try:
            _, notes = engine.cluster_options(spec, "flo-preflight")
        except FloError as exc:
            checks.append(Check("job script", FAILED, str(exc)))
        else:
            checks.append(Check("job script", WARNING if notes else PASSED,
                                "; ".join(notes) or f"{plan.engine} directives made"))
    return checks


def check_port(plan: PreflightPlan) -> list[Check]:
    """The scheduler can listen on the chosen interface (and port, when one is fixed)."""
    if plan.engine == "notebook":
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((plan.host, plan.port))
        except OSError as exc:
            what = f"{plan.host}:{plan.port}" if plan.port else plan.host
            why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            fix = "choose another --scheduler-port" if exc.errno == errno.EADDRINUSE \
                else "choose another --host (an address of this machine)"
            return [Check("scheduler port", FAILED, f"cannot listen on {what}: {why}; {fix}")]
    where = f"{plan.host}:{plan.port}" if plan.port else f"{plan.host} (any free port)"
    return [Check("scheduler port", PASSED, f"can listen on {where}")]


def check_pins(plan: PreflightPlan) -> list[Check]:
    """The pins of each environment still to build resolve for this platform and Python,
    asked of uv without installing anything (`uv pip compile --no-deps`)."""
    from .envs.uv import requirement_lines, uv_runner

    checks = []
    for request in plan.requests:
        roles = "+".join(request.roles)
        if plan.cache.stamp(request.key) is not None:
            checks.append(Check("pins", PASSED, f"{roles}: built before, in the cache"))
            continue
        if request.builder == "conda":
            checks.append(Check("pins", WARNING, f"{roles}: conda pins are not checked before "
                                "the build"))
            continue
        lines = requirement_lines(request.pins, [])
        if not lines:
            checks.append(Check("pins", PASSED, f"{roles}: no pins to install"))
            continue
        with tempfile.TemporaryDirectory(prefix="flo-preflight-") as folder:
            requirements = Path(folder) / "requirements.in"
            requirements.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            try:
                uv_runner(Path(folder))(
                    ["pip", "compile", "--quiet", "--no-header", "--no-deps",
                     "--python-version", request.interpreter.version,
                     "--python-platform", _uv_platform(), str(requirements)],
                    f"resolving the {roles} pins")
            except CommandError as exc:
                if not _unsolvable(exc):  # the index did not answer: the build will say more
                    checks.append(Check("pins", WARNING, f"{roles}: not checked, the package "
                                        f"index did not answer: {_uv_cause(exc)}"))
                else:
                    checks.append(Check("pins", FAILED, f"{roles}: {_pin_problem(exc, lines)}"))
                continue
        checks.append(Check("pins", PASSED, f"{roles}: {len(lines)} pins resolve for "
                            f"{_uv_platform()}, Python {request.interpreter.version}"))
    return checks


def check_interpreters(plan: PreflightPlan) -> list[Check]:
    """The interpreter each environment is built on (a plan is only made when one was found
    for every `python=`; `run.check_run` reports the failure as this check)."""
    return [Check("interpreter", PASSED, f"{'+'.join(r.roles)}: "
                  + (f"conda brings Python {r.interpreter.version or '(any)'}"
                     if r.builder == "conda" else
                     f"Python {r.interpreter.version} at {r.interpreter.executable}"))
            for r in plan.requests]


#: The checks, in the order they are shown.
CHECKS: tuple[Callable[[PreflightPlan], list[Check]], ...] = (
    check_interpreters, check_site, check_disk, check_node, check_batch, check_queue,
    check_port, check_pins)


# ---------------------------------------------------------------- helpers


def _existing(folder: Path) -> Path:
    """`folder`, or its nearest existing ancestor (where it will be made)."""
    folder = folder.expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _data_bytes(plan: PreflightPlan) -> int:
    spec = plan.data_spec
    if spec is None:
        return 0
    return sum(e.expected_size or 0 for e in spec.profile(plan.profile).entries)


def _environment_bytes(request: EnvRequest) -> int:
    """A rough size of an environment still to build: 10 MB a pin, at least 30 MB (a venv with
    its bootstrap). Nothing tells sizes before a build; this only catches a disk that is
    plainly too small."""
    return max(30 * MB, 10 * MB * len(request.pins))


def _uv_platform() -> str:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                          platform.machine().lower())
    return f"{machine}-unknown-linux-gnu" if platform.system() == "Linux" else machine


def _unsolvable(exc: CommandError) -> bool:
    """Whether uv answered that the pins have no solution here (not that it could not ask)."""
    return "No solution found" in (exc.stderr or str(exc))


def _uv_cause(exc: CommandError) -> str:
    text = " ".join((exc.stderr or str(exc)).split())
    return text.removeprefix("error: ")[:240]


def _pin_problem(exc: CommandError, lines: dict[str, str]) -> str:
    """The pin uv could not resolve, named as the spec names it, and uv's reason."""
    text = " ".join((exc.stderr or str(exc)).split())
    for line in lines:
        name = line.split("==")[0].split(" @ ")[0].strip().lower()
        if name and name in text.lower():
            reason = text.split("Because ", 1)[-1].split(" and you require")[0]
            reason = reason.split(", we can conclude")[0][:240]
            return (f"pin {line} cannot be installed on {_uv_platform()}: {reason}; drop it "
                    "or pin a version with a wheel for this platform")
    return f"the pins do not resolve here: {text[:300]}"


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _mb(size: int) -> str:
    return f"{size / MB:.0f} MB" if size >= MB else f"{size / 1e3:.0f} kB"

