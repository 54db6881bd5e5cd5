"""`flo-run BP`: validate -> data -> environments -> engine -> notebook, timed phase by phase.

Each run gets its own folder under the scratch dir, holding a copy of workflow/ (the notebook's
working directory, where data lands at its target locations), the scheduler file and the
engine's logs. The folder is removed at the end unless `keep`. Whatever happens, every process
the run started is stopped before `run_backpack` returns or raises.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from auditor.backpack.compute import ComputeSpec
from auditor.backpack.environment import EnvSpec
from auditor.backpack.layout import Backpack
from auditor.backpack.summary import Summary
from auditor.common import stale
from auditor.common.errors import FloError, Interrupted, UsageError
from auditor.common.execution import FailedCell, Status

from . import api, data, preflight, runner, validation
from .engines import Cluster, EngineSpec, get_engine
from .envs import EnvCache, default_cache_dir
from .envs.base import BuiltEnv, EnvRequest
from .folders import SCRATCH, writing_into
from .site import SiteProfile

T = TypeVar("T")

#: Phases of the closing summary, in order (the Floability paper's Table III rows).
PHASES = ("validation", "preflight", "data", "manager environment", "worker environment",
          "engine start", "notebook execution", "teardown")


class NotebookFailed(FloError):
    """The notebook ran but did not complete; the executed notebook was still written."""

    exit_code = 1


@dataclass
class RunOptions:
    backpack: Path
    execute: bool = True
    output: Path | None = None  # executed notebook; default ./<stem>-executed.ipynb
    parameters: dict[str, object] = field(default_factory=dict)
    workers: int | None = None  # overrides min-workers
    scratch_dir: Path | None = None
    cache_dir: Path | None = None
    keep: bool = False
    host: str = "127.0.0.1"
    python: str | None = None
    profile: str | None = None
    engine: str = "auto"  # see choose_engine
    builder: str = "auto"  # environment builder: auto, uv, pip, conda (see choose_builder)
    timeout: float | None = None  # per cell
    port: int = 0  # the scheduler's port; 0 = one the OS picks
    cell: int | None = None  # run only this cell and the cells it depends on (cells.yml)
    site: SiteProfile = field(default_factory=SiteProfile)  # --site / $FLO_SITE (flags merged)


@dataclass
class RunReport:
    """What a run did and how long each phase took; `status` is the notebook's."""

    backpack: Path
    run_dir: Path
    phases: dict[str, float] = field(default_factory=dict)
    envs: dict[str, BuiltEnv] = field(default_factory=dict)  # role -> env
    skipped: dict[str, str] = field(default_factory=dict)  # role -> why its env was not built
    status: str = "not started"
    output: Path | None = None
    failed_cell: FailedCell | None = None
    message: str = ""
    cluster: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kept: bool = False
    url: str | None = None
    workdir: Path | None = None  # where the notebook runs: run_dir, or below it (data.yml '../')
    cells_run: list[int] | None = None  # --cell: the cells executed (None: all)

    @property
    def notebook_dir(self) -> Path:
        return self.workdir or self.run_dir

    @property
    def total(self) -> float:
        return self.phases.get("total", sum(self.phases.values()))

    def to_dict(self) -> dict:
        return {"backpack": str(self.backpack), "run_dir": str(self.run_dir),
                "notebook_dir": str(self.notebook_dir),
                "kept": self.kept, "status": self.status,
                "output": str(self.output) if self.output else None,
                "failed_cell": self.failed_cell.to_json() if self.failed_cell else None,
                "message": self.message,
                "phases": {k: round(v, 3) for k, v in self.phases.items()},
                "envs": {role: {"path": str(e.path), "from_cache": e.from_cache,
                                "seconds": round(e.seconds, 3), "builder": e.builder}
                         for role, e in self.envs.items()},
                "skipped_envs": self.skipped, "cells_run": self.cells_run,
                "cluster": self.cluster, "notes": self.notes, "url": self.url}


def new_run_folder(scratch: Path) -> Path:
    """A fresh run folder under `scratch`, owned by this process.

    Its path reaches the kernel as DASK_SCHEDULER_FILE, and dask reads every DASK_ variable
    through `ast.literal_eval`: a random part that starts with a digit and a keyword ("1in",
    "3if") makes Python 3.12+ print a SyntaxWarning into the notebook's first Dask cell. The
    random part therefore continues a name ("...-r1in0x9z"), which never warns.
    """
    return stale.owned_folder(f"run-{time.strftime('%Y%m%d-%H%M%S')}-r", scratch)


def run_backpack(options: RunOptions, *, say: Callable[[str], None] = lambda _: None,
                 on_lab: Callable[[runner.Lab], None] | None = None) -> RunReport:
    """Run a backpack headless (`options.execute`) or interactively (JupyterLab until Ctrl-C).

    Raises `NotebookFailed` (with `.report`) when a cell fails; the executed notebook is written
    first. `on_lab` is called with the running JupyterLab (interactive mode) before waiting.
    """
    started = time.monotonic()
    scratch = (options.scratch_dir or data.default_scratch_dir()).expanduser().absolute()
    with writing_into(scratch, SCRATCH):  # a read-only scratch: one line naming it
        scratch.mkdir(parents=True, exist_ok=True)
        stale.sweep(scratch, stale.RUN_PREFIXES)  # run folders of a flo-run that was killed
        run_dir = new_run_folder(scratch)
    report = RunReport(Path(options.backpack).expanduser().absolute(), run_dir)
    cluster = None
    keep = options.keep
    try:
        # Everything that can say no, before data, environments or engine: the workflow is
        # checked as it will be executed (strict), and the engine is chosen, because it
        # decides which environments are built.
        checked, loaded = _phase(report, "validation", lambda: _validate(report, options))
        assert checked.workflow is not None  # a valid backpack has its workflow (validate)
        plan = plan_run(report, options, checked, loaded, scratch)
        engine, compute, workers = plan.engine, plan.compute, plan.workers
        _phase(report, "preflight", lambda: preflight.require(plan))
        report.workdir = _notebook_dir(report, options, loaded)
        _copy_workflow(report.backpack / "workflow", report.notebook_dir)
        _phase(report, "data", lambda: _fetch_data(report, options, loaded))
        _environments(report, plan.requests, plan.cache, say)
        if loaded is not None and (secrets := flagged_secrets(loaded.summary)):
            say(secrets)
            report.notes.append(secrets)
        manager_python = report.envs["manager"].python_path
        spec = EngineSpec(run_dir=run_dir, workdir=report.notebook_dir,
                          worker_python=(report.envs.get("worker") or report.envs["manager"]
                                         ).python_path,
                          manager_python=manager_python, workers=workers,
                          max_workers=max(compute.max_workers, workers), threads=compute.cores,
                          memory_mb=compute.memory, disk_mb=compute.disk,
                          host=options.host, port=options.port, site=options.site)
        say("no workers provisioned: the notebook starts its own, or uses none"
            if engine == "notebook"
            else f"starting {workers} Dask worker(s) ({engine})")
        # Started up to a known scheduler address; the kernel starts while the workers
        # register, and the first cell waits for them (`_execute`).
        cluster = _phase(report, "engine start", lambda: get_engine(engine).launch(spec))
        if options.execute:
            _execute(report, options, checked.workflow, cluster, say)
        else:
            _phase(report, "engine start", cluster.wait_ready)
            _engine_ready(report, cluster)
            _interactive(report, cluster, on_lab, checked.workflow)
    except runner.KernelStartFailed:
        keep = True  # the error names the kernel log, which lives in the run folder
        raise
    except KeyboardInterrupt as exc:
        report.status = "interrupted"
        raise Interrupted(_interrupted(exc, cluster is not None, options.execute)) from None
    finally:
        if cluster is not None:
            if lost := cluster.lost_workers():
                report.cluster["lost_workers"] = len(lost)
                report.notes.append(f"{len(lost)} worker(s) lost during the run ("
                                    + "; ".join(lost) + "); Dask recomputed what they held")
            with _signals_held():
                survivors = _phase(report, "teardown", cluster.stop)
            if survivors:
                report.notes.append(f"{len(survivors)} process(es) could not be stopped: "
                                    + ", ".join(str(p.pid) for p in survivors))
        report.phases["total"] = time.monotonic() - started
        report.kept = keep
        if keep:
            stale.release(run_dir)  # kept on purpose: no later sweep removes it
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if report.status not in (Status.COMPLETE, "stopped"):
        error = NotebookFailed(f"the notebook did not complete: {report.message}; the executed "
                               f"notebook is {report.output}")
        error.report = report  # type: ignore[attr-defined]
        raise error
    return report


def _interrupted(exc: KeyboardInterrupt, engine_started: bool, execute: bool) -> str:
    """The one line for Ctrl-C or SIGTERM: what was stopped and what was written."""
    how = "interrupted"
    if isinstance(exc, runner.ExecutionStopped):
        how += f" ({signal.Signals(exc.signum).name})"
    if not engine_started:
        return f"{how} before the engine started; nothing was left running"
    if not execute:
        return f"{how}; JupyterLab, its kernels, the workers and the scheduler were stopped"
    output = getattr(exc, "output", None)
    written = (f"the notebook as far as it ran is {output}" if output
               else "no executed notebook was written")
    return f"{how}; the kernel, workers and scheduler were stopped; {written}"


@contextmanager
def _signals_held() -> Iterator[None]:
    """Teardown must finish: a second Ctrl-C (or SIGTERM) must not leave workers behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _phase(report: RunReport, name: str, work: Callable[[], T]) -> T:
    began = time.monotonic()
    try:
        return work()
    finally:
        report.phases[name] = report.phases.get(name, 0.0) + time.monotonic() - began


def _copy_workflow(workflow: Path, run_dir: Path) -> None:
    """workflow/ becomes the run folder's content: the notebook and its helper modules."""
    shutil.copytree(workflow, run_dir, dirs_exist_ok=True, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))


def _notebook_dir(report: RunReport, options: RunOptions, loaded: Backpack | None) -> Path:
    """The run folder, or a folder below it when data.yml names data above the notebook or
    the audited run wrote there."""
    if not (report.backpack / "data" / "data.yml").exists():
        return data.notebook_dir(report.run_dir, [], data.audit_layout(report.backpack, loaded))
    return data.profile_notebook_dir(report.backpack, report.run_dir, options.profile, loaded)


def _fetch_data(report: RunReport, options: RunOptions, loaded: Backpack | None) -> None:
    if not (report.backpack / "data" / "data.yml").exists():
        return
    # The run folder goes at the end; a partial download stays in the scratch folder, so the
    # next run (after Ctrl-C or a failed entry) resumes it.
    data.fetch(report.backpack, report.run_dir, options.profile,
               partials=report.run_dir.parent / "downloads", loaded=loaded)


def _validate(report: RunReport, options: RunOptions
              ) -> tuple[validation.ValidationResult, Backpack | None]:
    """The backpack, checked strictly (the workflow parsed as it will run), and loaded (once:
    the phases after this one read the spec files from the `Backpack` it returns)."""
    checked = validation.validate(report.backpack, strict=True)
    if not checked.valid:
        raise validation.InvalidBackpack(checked)
    if not options.execute and checked.workflow is not None:
        _check_opens_in_lab(checked.workflow, checked.specs["manager"])
    if options.cell is not None:
        report.cells_run = _cells_for(report.backpack, options.cell)
    return checked, checked.backpack


#: What opens a `.py` workflow as a notebook in JupyterLab (its paired-notebook contents manager).
JUPYTEXT = "jupytext"


def _check_opens_in_lab(workflow: Path, manager: EnvSpec) -> None:
    """Interactive mode shows a notebook: a script only when the manager environment has
    jupytext to pair it with one (flo-run does not add it: the spec is the audit's)."""
    if workflow.suffix != ".py" or JUPYTEXT in manager.pins:
        return
    raise UsageError(f"interactive mode needs a notebook: {workflow.name} is a script and "
                     f"software/environment.yml has no {JUPYTEXT} to open it as one; run it "
                     f"headless with --execute, or add {JUPYTEXT} to the manager environment")


def plan_run(report: RunReport, options: RunOptions, checked: validation.ValidationResult,
             loaded: Backpack | None, scratch: Path) -> preflight.PreflightPlan:
    """What the run will use, decided once from the validated backpack: the engine (it
    decides which environments are built), the workers, the environment requests and the
    cache. The preflight checks this plan; the phases after it carry it out."""
    compute = loaded.compute if loaded is not None else ComputeSpec()
    engine = choose_engine(options.engine, loaded.summary if loaded is not None else None)
    if options.engine == "auto" and engine == "dask-local" and options.site.batch:
        engine = options.site.batch  # the site's batch system, unless the notebook starts its own
    workers = options.workers if options.workers is not None else max(compute.min_workers, 1)
    roles = ("manager", "worker") if get_engine(engine).uses_worker_environment else ("manager",)
    if roles == ("manager",):
        report.phases["worker environment"] = 0.0
        report.skipped["worker"] = f"engine {engine} starts no workers"
        if api.own_worker_spec(checked):
            report.notes.append(f"worker environment ({validation.ENV_FILES['worker']}) not built: "
                                f"engine {engine} starts no workers (the notebook's own run "
                                "in the manager environment)")
    requests: list[EnvRequest] = []
    for request in api.plan_environments(checked, options.python, options.builder, roles):
        if not options.execute and "manager" in request.roles:
            # The interactive manager also gets JupyterLab (the `lab` role), which pins
            # cannot move.
            requests.append(EnvRequest(request.spec, request.interpreter, ("manager", "lab"),
                                       request.builder))
            if "worker" in request.roles:
                requests.append(EnvRequest(request.spec, request.interpreter, ("worker",),
                                           request.builder))
        else:
            requests.append(request)
    cache = EnvCache(options.cache_dir or _default_cache(options))
    return preflight.PreflightPlan(
        compute=compute, data_spec=loaded.data_spec if loaded is not None else None,
        engine=engine, workers=workers, scratch=scratch, cache=cache, requests=requests,
        host=options.host, port=options.port, profile=options.profile, site=options.site)


def check_run(options: RunOptions) -> preflight.Preflight:
    """`flo-run check BP`: validate and plan as `run_backpack` would, then run every preflight
    check of that plan. Builds, fetches and starts nothing; a failed check is in the result,
    not raised."""
    scratch = (options.scratch_dir or data.default_scratch_dir()).expanduser().absolute()
    report = RunReport(Path(options.backpack).expanduser().absolute(), scratch)
    checked, loaded = _validate(report, options)
    try:
        plan = plan_run(report, options, checked, loaded, scratch)
    except FloError as exc:  # no interpreter, no conda tool: a failed check, like the rest
        return preflight.Preflight([preflight.Check("interpreter", preflight.FAILED,
                                                    str(exc))])
    return preflight.run_preflight(plan)


def _environments(report: RunReport, requests: Sequence[EnvRequest], cache: EnvCache,
                  say: Callable[[str], None]) -> None:
    """Build (or take from the cache) each planned environment, timed per role: concurrently
    when there are several (manager and worker specs differ; each key has its own lock in
    the cache). The first is built in this thread; the others in daemon threads, so Ctrl-C
    is not held up by them: their build commands die with flo-run (`auditor.common.process.run`
    ties them to it), and the cache's all-or-nothing builds leave nothing half-made."""
    built: dict[int, BuiltEnv] = {}
    failed: dict[int, BaseException] = {}
    timings: dict[int, float] = {}

    def build(index: int, one: EnvRequest) -> None:
        began = time.monotonic()
        try:
            built[index] = api.ensure_environment(cache, one, str(report.backpack))
        except Exception as exc:  # raised in request order below; Ctrl-C (main thread) at once
            failed[index] = exc
        finally:
            timings[index] = time.monotonic() - began

    for one in requests:
        say(f"{'+'.join(r for r in one.roles if r != 'lab')} environment")
    others = [threading.Thread(target=build, args=(i, one), daemon=True,
                               name=f"flo-env-{i}") for i, one in enumerate(requests) if i]
    for thread in others:
        thread.start()
    if requests:
        build(0, requests[0])
    for thread in others:
        thread.join()
    for index, one in enumerate(requests):
        roles = [r for r in one.roles if r != "lab"]
        phase = f"{roles[0]} environment"
        report.phases[phase] = report.phases.get(phase, 0.0) + timings[index]
        if index in failed:
            raise failed[index]
        env = built[index]
        for role in roles:
            report.envs[role] = env
        report.notes.append(f"{'+'.join(roles)} environment: "
                            f"{'from cache, ' if env.from_cache else ''}built by "
                            f"{env.builder}, Python {env.python}")
        report.notes += env.notes
    report.phases.setdefault("worker environment", 0.0)


def _default_cache(options: RunOptions) -> Path:
    return default_cache_dir(options.scratch_dir)  # the rule lives in envs/cache.py


def flagged_secrets(summary: Summary | None) -> str | None:
    """A line naming the secrets the audit saw the notebook read (never put in a backpack),
    so a run that fails without them says why first; None when there were none."""
    data = summary.data if summary else {}
    found = [item.get("path") if isinstance(item, dict) else item
             for item in data.get("secrets") or ()]
    found += [item.get("url") if isinstance(item, dict) else item
              for item in data.get("signed_urls") or ()]
    named = [str(n) for n in found if n]
    if not named:
        return None
    return (f"the audit saw the notebook read {len(named)} secret(s) that no backpack carries: "
            f"{', '.join(named)}; put them in place (or a fresh signed URL) on this machine")


def choose_engine(asked: str, summary: Summary | None) -> str:
    """`auto`: the notebook's own workers when its audit saw it start them (a notebook that
    calls `Client(n_workers=2)` must not be pointed at a provisioned scheduler) or saw no
    worker at all, else Dask workers started here. A hand-written backpack has no audit:
    dask-local."""
    if asked != "auto":
        return asked
    worker = summary.roles.get("worker") if summary else None
    if worker is not None and not worker.get("processes"):
        return "notebook"  # audited, and no worker ran: nothing to provision
    return "notebook" if (worker or {}).get("started_by") == "notebook" else "dask-local"


def _cells_for(backpack: Path, cell: int) -> list[int]:
    """`--cell N`: N and the cells it transitively depends on, from the audit's cell graph."""
    from auditor.backpack.cells import CELLS, load_cells_yml

    report = load_cells_yml(backpack / CELLS)
    if report.cell(cell) is None:
        code = [c.cell for c in report.cells]
        raise UsageError(f"--cell {cell}: not a code cell of the audited notebook; its code "
                         f"cells are {', '.join(map(str, code)) or 'none'} (0-based, markdown "
                         "cells counted, as in audit/cells.yml)")
    return report.needed_for(cell)


def _execute(report: RunReport, options: RunOptions, workflow: Path, cluster, say) -> None:
    notebook = report.notebook_dir / workflow.name
    output = (options.output or Path.cwd() / f"{workflow.stem}-executed.ipynb")
    say(f"executing {workflow.name}" + (f" cells {', '.join(map(str, report.cells_run))} "
                                        f"(cell {options.cell} and what it depends on)"
                                        if report.cells_run is not None else ""))
    waited = 0.0

    def engine_ready() -> None:  # the kernel is up; no cell runs before the workers are
        nonlocal waited
        began = time.monotonic()
        try:
            cluster.wait_ready()
        finally:
            waited = time.monotonic() - began
        _engine_ready(report, cluster)

    try:
        result = _phase(report, "notebook execution", lambda: runner.execute(
            notebook, Path(output).expanduser().absolute(),
            python=report.envs["manager"].python_path, cwd=report.notebook_dir,
            env=cluster.environment(), parameters=options.parameters, timeout=options.timeout,
            kernel_log=report.run_dir / "logs" / "kernel.log", only=report.cells_run,
            before_cells=engine_ready))
    finally:
        # The wait for the workers after the kernel was up is the engine's: phases still add
        # up to the total, and the kernel's start hidden behind the engine's counts once.
        report.phases["notebook execution"] -= waited
        report.phases["engine start"] += waited
    report.status, report.output = result.status.value, result.output
    report.failed_cell, report.message = result.failed_cell, result.message


def _engine_ready(report: RunReport, cluster: Cluster) -> None:
    report.cluster = cluster.to_dict()
    report.notes += cluster.notes


def _interactive(report: RunReport, cluster, on_lab, workflow: Path) -> None:
    manager = report.envs["manager"].python_path

    def launch(argv, log_name, cwd=None):  # the lab's kernels connect to the cluster too
        return cluster.launch(argv, log_name, cwd=cwd, env=cluster.environment())

    opened = report.notebook_dir / workflow.name
    if opened.suffix == ".py":  # jupytext is in the environment (_check_opens_in_lab)
        opened = runner.paired_notebook(opened)
    notebook = opened.relative_to(report.run_dir)
    lab = runner.start_lab(manager, report.run_dir, launch, host=cluster.spec.host,
                           log_tail=lambda: cluster.log_tail("jupyterlab.log"),
                           notebook=notebook.as_posix())
    report.url = lab.url
    if on_lab is not None:
        on_lab(lab)
    lab.process.wait()  # until Ctrl-C (KeyboardInterrupt) or the server stops by itself
    report.status = "stopped"
