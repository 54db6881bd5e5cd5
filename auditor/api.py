"""The Python API of flo-audit: `audit` a workflow into a backpack, `derive` from a saved record.

audit = load the workflow -> choose a tracer -> record into a temporary folder -> derive ->
write the backpack. derive reads only the record folder (docs/internals.md), so every output
can be re-derived from a backpack's audit/ without running the notebook again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backpack.cells import CELLS, EXECUTED, render_cells_yml
from .backpack.compute import ComputeSpec
from .backpack.layout import DATA, check_destination, workflow_copies, write_backpack
from .backpack.session import Session, read_session
from .backpack.summary import SUMMARY, summary_text
from .backpack.workflow import load_workflow
from .common import stale
from .common.errors import Interrupted, RecordFormatError, UsageError
from .common.execution import Status
from .emit.apt import RunObserver
from .emit.cell_watch import CellWatch
from .emit.cells import CellFacts, annotate_executed, build_cells, executed_facts
from .emit.data.collect import DataDraft
from .emit.data.report import data_summary
from .emit.data.rules import SYSTEM_PREFIXES
from .emit.data.stage import collector_for_record
from .emit.data.yml import bundle, render_data_yml
from .emit.environment import (
    OWN_DISTRIBUTIONS,
    USED,
    EnvironmentSpec,
    draft_environment,
    render_environment_yml,
    render_requirements_txt,
)
from .emit.report import build_summary
from .emit.sides import SideOutputs, derive_sides, pool_roots
from .events import Access, Event, assign_cells, first_accesses
from .roles import PROCESS_KINDS, Roles, RoleTracker

if TYPE_CHECKING:
    from .resolve.ahead import IndexAhead

# Outputs derive writes into audit/: never copied from an older record over the new ones.
_DERIVED_IN_AUDIT = ("summary.json", "cells.yml")
# Files that are never a cell's "files": the system, pseudo filesystems, scratch space.
_SYSTEM = (*SYSTEM_PREFIXES, "/var/", "/tmp/")


@dataclass
class AuditOptions:
    """Everything `flo-audit PATH` can be told; the CLI builds one of these."""

    output: str | Path | None = None  # default ./<stem>-backpack
    force: bool = False
    backend: str = "auto"
    kernel_name: str | None = None
    python: str | None = None
    timeout: float | None = None  # per cell, seconds
    #: progress(position, count, phase): the recorder calls it as each cell starts and ends.
    progress: Callable[[int, int, str], None] | None = None
    bundle_data: bool = False  # copy inputs under the notebook's folder into data/
    max_bundle_size: int = 100 * 10**6  # bytes, for bundle_data
    checksum_remote: bool = False  # download each http(s) input once to checksum it
    env: dict[str, str] = field(default_factory=dict)  # added to the kernel's environment
    #: on_hash(path or url, bytes done, bytes in all): while inputs are hashed.
    on_hash: Callable[[str, int, int], None] | None = None
    workers: int = 0  # start a Dask scheduler and N traced workers (notebooks that connect)


@dataclass
class Derived:
    """Everything derived from one record folder: the specs as data, their texts, the summary."""

    session: Session
    roles: Roles
    resolution: Any
    environment: EnvironmentSpec
    compute: ComputeSpec
    summary: dict
    texts: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    sides: SideOutputs | None = None  # worker environment, apt, per-role report

    data: DataDraft | None = None  # data/data.yml and the summary's data part
    index: Any = None  # the audited environment's EnvIndex (minimize re-closes specs with it)
    candidates: list[Any] = field(default_factory=list)  # auditor.optional.Candidate
    #: (source, path in the backpack) of the workflow's helpers and, with --bundle-data, inputs.
    copies: list[tuple[str | Path, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.session.complete and not (self.sides and self.sides.crashed)


@dataclass
class AuditResult:
    backpack: Path
    derived: Derived

    @property
    def summary(self) -> dict:
        return self.derived.summary

    @property
    def exit_code(self) -> int:
        """0 when every cell ran; 1 when the run failed, timed out or lost its kernel."""
        return 0 if self.derived.complete else 1


def own_code_dirs() -> list[str]:
    """Our installed package folders (auditor/, provisioner/, kernels/): never reported."""
    root = Path(__file__).resolve().parent.parent
    return [str(root / name) for name in ("auditor", "provisioner", "kernels")
            if (root / name).is_dir()]


def record_events(record_dir: Path, backend: str,
                  cwd: str | None = None) -> tuple[Iterator[Event], list[str]]:
    """The record's events in time order: the tracer's, with the kernel's hook log merged in.
    `cwd`: where the run ran (session.json's), for names the record gives relative to it."""
    from .record.base import get_tracer

    tracer = get_tracer(backend)(cwd)
    events: Iterator[Event] = iter(tracer.events(record_dir))
    if backend != "hooks" and (record_dir / "hooks.jsonl").exists():
        from .record.hooks import hook_events

        events = _merge_by_time(events, hook_events(record_dir))
    return events, list(tracer.warnings(record_dir))


def _merge_by_time(main: Iterable[Event], extra: Iterable[Event]) -> Iterator[Event]:
    """Merge two time-ordered streams; `extra` (the hook log's imports) is the short one."""
    pending_events = iter(extra)
    pending = next(pending_events, None)
    for event in main:
        while pending is not None and pending.t <= event.t:
            yield pending
            pending = next(pending_events, None)
        yield event
    if pending is not None:
        yield pending
        yield from pending_events


class _Observer:
    """One pass over the stream on its way to the resolver: the process tree for roles, and
    the paths each cell read (so the summary can list a cell's local files)."""

    def __init__(self, tracker: RoleTracker) -> None:
        self.tracker = tracker
        self.by_cell: dict[int, set[str]] = {}
        #: Also sees every Access and Connect (the data draft's collector), when set.
        self.on_data: Callable[[Event], None] | None = None

    def watch(self, events: Iterable[Event]) -> Iterator[Event]:
        seen, note, by_cell = self.tracker.seen, self.tracker.note, self.by_cell
        on_data = self.on_data
        for event in events:
            seen.add(event.pid)
            kind = event.kind
            if on_data is not None and kind in ("access", "connect", "accept"):
                on_data(event)
            if isinstance(event, Access):
                if event.cell is not None and event.mode != "d":
                    paths = by_cell.get(event.cell)
                    if paths is None:
                        paths = by_cell[event.cell] = set()
                    paths.add(event.path)
            elif kind in PROCESS_KINDS:
                note(event)
            yield event

    def cell_files(self, keep: set[str]) -> dict[int, list[str]]:
        return {cell: sorted(p for p in paths if p in keep)
                for cell, paths in self.by_cell.items()}


def derive(record_dir: str | Path, notebook_dir: str | Path | None = None, *,
           cell_sources: dict[int, str] | None = None,
           extra_warnings: Iterable[str] = (), checksum_remote: bool = False,
           on_hash: Callable[[str, int, int], None] | None = None,
           workflow: Path | None = None, bundle_bytes: int | None = None,
           saved_counts: dict[int, int] | None = None,
           index_ahead: IndexAhead | None = None) -> Derived:
    """Resolve and emit everything from a saved record folder, without running anything.

    `notebook_dir` is the notebook's folder at record time (default: from session.json);
    `cell_sources` maps code-cell index -> source (default: from executed.ipynb).
    `checksum_remote` downloads each http(s) input once; `on_hash` follows input hashing.
    `workflow`: the notebook as it is now, whose local helpers the run imported go into
    `Derived.copies`; `bundle_bytes`: `--bundle-data`, inputs up to that many bytes copied into
    data/ (as `backpack` sources). `saved_counts`: code-cell index -> the execution count
    saved in the notebook as given (default: from the backpack's workflow/ copy, see
    `_saved_counts`). `index_ahead`: the environment index the audit built while the notebook
    ran, taken when still valid. Every file is rendered once, at the end, from the models.
    """
    from .minimize import apply_record, read_minimize_record, summary_block
    from .optional import find_candidates
    from .resolve import Environment, index_environment, resolve
    from .resolve.modules import ModuleOwners

    started = time.monotonic()
    record_dir = Path(record_dir)
    session = read_session(record_dir)
    notebook = session.notebook or "notebook.ipynb"
    notebook_dir = str(notebook_dir or Path(notebook).parent)
    if cell_sources is None:
        cell_sources = _cell_sources(record_dir / "executed.ipynb")
    if saved_counts is None:
        saved_counts = _saved_counts(record_dir, notebook, cell_sources)

    events, warnings = record_events(record_dir, session.backend, session.cwd or None)
    cell_of_seq = session.cell_of_seq
    tracker = RoleTracker(session.kernel_pid, session.tracer_pid, pool_roots(session))
    observer = _Observer(tracker)
    run_observer = RunObserver(session.kernel_pid)
    cell_watch = CellWatch()
    distinct = first_accesses(assign_cells(events, cell_of_seq))
    stream = cell_watch.watch(run_observer.watch(observer.watch(distinct)))

    env = Environment.from_kernel_record(session.kernel)
    index = index_ahead.take(env, OWN_DISTRIBUTIONS) if index_ahead is not None else None
    if index is None:
        index = index_environment(env, exclude_names=OWN_DISTRIBUTIONS)
    data = collector_for_record(session, index, notebook_dir, ignore=own_code_dirs(),
                                record_dir=record_dir)
    observer.on_data = data.note  # before the stream is consumed (by resolve)
    resolution = resolve(stream, index, notebook_dir, ignore=own_code_dirs())
    roles = tracker.roles()
    draft = data.draft(roles, workflow=resolution.workflow, started=session.started,
                       progress=on_hash, checksum_remote=checksum_remote)

    stem = Path(notebook).stem
    spec = draft_environment(resolution, index, python=env.version, notebook_stem=stem,
                             roles=roles, cell_sources=cell_sources)
    from .record.sampler import read_samples

    samples = read_samples(record_dir)
    module_owner = ModuleOwners(index, session.kernel.get("path") or (), notebook_dir).owner
    # The optional-import candidates parse library sources while the sides mostly wait on
    # dpkg: a thread of derive's own (reads only), its answer taken before the summary's.
    with ThreadPoolExecutor(1, thread_name_prefix="flo-candidates") as pool:
        finding = pool.submit(find_candidates, record_dir, pins=spec.pins, index=index,
                              module_owner=module_owner, notebook_dir=notebook_dir,
                              kernel_pid=session.kernel_pid, python=env.version,
                              cell_sources=cell_sources)
        sides = derive_sides(session=session, roles=roles, resolution=resolution, index=index,
                             observer=run_observer, samples=samples,
                             manager_spec=spec, python=env.version, notebook_stem=stem,
                             record_dir=record_dir)
        candidates = finding.result()
    compute = sides.compute
    keep = set(resolution.workflow) | {p for p in resolution.outside if not p.startswith(_SYSTEM)}
    copies: list[tuple[str | Path, str]] = []
    late: list[str] = []  # warnings of copying the workflow and bundling the data
    if workflow is not None:
        helper_copies, late = workflow_copies(workflow, resolution.workflow)
        copies += helper_copies
    bundle_warnings: list[str] = []
    if bundle_bytes is not None:
        data_copies, bundle_warnings = bundle(draft, notebook_dir, bundle_bytes)
        copies += data_copies
    warnings = _unique([*session.warnings, *extra_warnings, *warnings,
                        *spec.warnings, *draft.warnings, *late, *bundle_warnings])
    timings = {"run_seconds": round(session.seconds, 3),
               "derive_seconds": round(time.monotonic() - started, 3)}
    summary = build_summary(session=session, spec=spec, compute=compute, resolution=resolution,
                            roles=roles, cell_sources=cell_sources,
                            cell_files=observer.cell_files(keep), warnings=warnings,
                            timings=timings)
    summary["data"] = data_summary(draft)
    summary["data"]["warnings"] += bundle_warnings
    summary.update(roles=sides.report, apt=sides.apt.to_json())
    minimized = read_minimize_record(record_dir)
    summary["minimize"] = {"candidates": [c.to_json() for c in candidates],
                           **summary_block(minimized)}
    if sides.worker_spec is not None:
        summary["worker_packages"] = [pin.to_json() for pin in sides.worker_spec.pins]
    if sides.crashed and summary.get("complete"):
        summary.update(status=Status.WORKER_DIED, complete=False)
    date = datetime.fromtimestamp(session.started or time.time()).strftime("%Y-%m-%d")
    name = Path(notebook).name
    texts = {
        "software/environment.yml": render_environment_yml(spec, name, date),
        "software/requirements.txt": render_requirements_txt(spec, name, date),
        DATA: render_data_yml(draft, name),
        **sides.texts(name, date),
        SUMMARY: summary_text(summary),
    }
    texts = apply_record(texts, minimized)  # the pins a --minimize run proved unneeded
    cells = build_cells(CellFacts(
        sources=cell_sources, executed=executed_facts(record_dir / "executed.ipynb"),
        watch=cell_watch, session=session, roles=roles, used=resolution.used.values(),
        manager_used={pin.key for pin in spec.pins if pin.reason == USED}, draft=draft,
        paths=data.cell_uses(), url_cells=data.url_cells, samples=samples,
        cwd=session.cwd or notebook_dir,
        module_owner=module_owner, saved_counts=saved_counts))
    texts[CELLS] = render_cells_yml(cells)
    if (annotated := annotate_executed(record_dir / "executed.ipynb", cells)) is not None:
        texts[EXECUTED] = annotated
    derived = Derived(session, roles, resolution, spec, compute, summary, texts, warnings, sides)
    derived.data, derived.copies = draft, copies
    derived.index, derived.candidates = index, candidates
    return derived


def _cell_sources(executed: Path) -> dict[int, str]:
    try:
        cells = json.loads(executed.read_text(encoding="utf-8")).get("cells") or []
    except (OSError, ValueError, AttributeError):
        return {}
    return {i: "".join(c["source"]) if isinstance(c.get("source"), list) else c.get("source", "")
            for i, c in enumerate(cells) if c.get("cell_type") == "code"}


def _saved_counts(record_dir: Path, notebook: str, cell_sources: dict[int, str]
                  ) -> dict[int, int]:
    """The execution counts saved in the notebook as given: its copy in the backpack's
    workflow/ (the record is a backpack's audit/), else the notebook at its recorded path;
    {} when neither is readable or its code cells are not the ones the record ran (edited
    since), so another notebook's counts are never shown."""
    candidates = [Path(notebook)]
    if record_dir.name == "audit":
        candidates.insert(0, record_dir.parent / "workflow" / Path(notebook).name)
    for path in candidates:
        if not path.is_file():
            continue
        try:
            saved = load_workflow(path, validate=False)  # its cells are compared next
        except UsageError:
            continue
        return saved.saved_counts if saved.code_sources == cell_sources else {}
    return {}


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _interpreter(python: str | None) -> str | None:
    """`--python` as an absolute path: the kernel starts in the notebook's folder, so a path
    relative to the caller's would miss. A bare name is looked up on PATH. Symlinks are kept:
    a venv's python is a symlink whose location is what makes it that venv's."""
    if python is None:
        return None
    found = python if os.sep in python else shutil.which(python)
    if not found or not os.path.exists(found):
        raise UsageError(f"--python {python}: no such interpreter; give the path of a python "
                         "that has ipykernel installed")
    return os.path.abspath(found)


def default_output(path: str | Path) -> Path:
    return Path.cwd() / f"{Path(path).stem}-backpack"


def audit(path: str | Path, options: AuditOptions | None = None) -> AuditResult:
    """Run the workflow under a tracer and write its backpack; see `AuditResult.exit_code`.

    A failed, timed-out or kernel-died run still writes the backpack, marked incomplete.
    On Ctrl-C (`Interrupted`) nothing is written and temporary folders are removed.
    """
    from .record.base import choose_tracer
    from .record.session import RecordOptions, record

    options = options or AuditOptions()
    workflow = load_workflow(path)
    dest = check_destination(options.output or default_output(workflow.path), options.force,
                             keep=[workflow.path.parent])
    tracer, tracer_warnings = choose_tracer(options.backend)
    stale.sweep(None, stale.AUDIT_PREFIXES)  # what a killed flo-audit left in the temp folder
    record_dir = stale.owned_folder(f"flo-audit-{workflow.stem}-")
    from .resolve.ahead import IndexAhead

    ahead = IndexAhead(OWN_DISTRIBUTIONS)  # the environment indexed while the notebook runs
    try:
        record(RecordOptions(notebook=workflow.notebook, notebook_path=workflow.path,
                             record_dir=record_dir, tracer=tracer,
                             kernel_name=options.kernel_name, python=_interpreter(options.python),
                             timeout=options.timeout, on_cell=options.progress,
                             env=dict(options.env),
                             workers=options.workers, on_kernel=ahead.start,
                             user_file=workflow.path if workflow.kind == "py" else None))
        derived = derive(record_dir, workflow.path.parent, cell_sources=workflow.code_sources,
                         saved_counts=workflow.saved_counts,
                         extra_warnings=tracer_warnings,
                         checksum_remote=options.checksum_remote, on_hash=options.on_hash,
                         workflow=workflow.path,
                         bundle_bytes=options.max_bundle_size if options.bundle_data else None,
                         index_ahead=ahead)
        copies = list(derived.copies)
        if derived.sides is not None:
            derived.sides.keep_measurements(record_dir)  # audit/written.json, for derive
        copies += [(f, f"audit/{f.name}") for f in sorted(record_dir.iterdir())
                   if f.is_file() and f.name not in _DERIVED_IN_AUDIT
               and f"audit/{f.name}" not in derived.texts]
        written = write_backpack(dest, texts=derived.texts, copies=copies, force=options.force,
                                 keep=needed_paths(derived, workflow.path.parent))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: every process flo-audit started was stopped and "
                          "nothing was written") from None
    finally:
        shutil.rmtree(record_dir, ignore_errors=True)
    return AuditResult(written, derived)


def needed_paths(derived: Derived, notebook_dir: Path) -> list[Path]:
    """What a backpack must never replace: the notebook's folder, its helper modules and the
    local inputs the run read (`check_destination`'s `keep`)."""
    folder = Path(notebook_dir)
    paths = [folder, *(folder / p for p in derived.resolution.workflow)]
    if derived.data is not None:
        paths += [Path(e.source) for e in derived.data.inputs if e.source_type == "fs"]
    return paths


def derive_backpack(audit_dir: str | Path, output: str | Path | None = None,
                    force: bool = False) -> tuple[Derived, Path | None]:
    """`flo-audit derive`: re-derive from a backpack (or its audit/ folder); with `output`,
    write a new backpack there (the workflow copied from the original or the old backpack)."""
    root = Path(audit_dir)
    record_dir = root / "audit" if (root / "audit" / "session.json").exists() else root
    session = read_session(record_dir)
    notebook = Path(session.notebook)
    derived = derive(record_dir, notebook.parent,
                     workflow=notebook if output is not None and notebook.is_file() else None)
    if output is None:
        return derived, None
    keep = needed_paths(derived, notebook.parent) if notebook.is_file() else []
    dest = check_destination(output, force, keep)
    backpack_workflow = record_dir.parent / "workflow"
    if notebook.is_file():
        copies = list(derived.copies)
    elif backpack_workflow.is_dir():
        copies = [(f, f"workflow/{f.relative_to(backpack_workflow).as_posix()}")
                  for f in sorted(backpack_workflow.rglob("*")) if f.is_file()]
    else:
        raise RecordFormatError(f"the notebook {notebook} is gone and {record_dir} is not inside "
                                "a backpack; cannot fill workflow/")
    copies += [(f, f"audit/{f.name}") for f in sorted(record_dir.iterdir())
               if f.is_file() and f.name not in _DERIVED_IN_AUDIT
               and f"audit/{f.name}" not in derived.texts]
    if os.path.realpath(dest) == os.path.realpath(record_dir.parent):
        # Replacing the backpack we read from: copy the record out of it first.
        staging = Path(tempfile.mkdtemp(prefix="flo-derive-"))
        try:
            moved = []
            for source, relative in copies:
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                moved.append((target, relative))
            return derived, write_backpack(dest, texts=derived.texts, copies=moved, force=force,
                                           keep=keep)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return derived, write_backpack(dest, texts=derived.texts, copies=copies, force=force,
                                   keep=keep)
