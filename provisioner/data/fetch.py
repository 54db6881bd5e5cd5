"""Fetch and verify a backpack's data: data.yml -> verified files at their run-folder targets.

Order of work, so that a bad entry costs nothing: read data.yml (auditor.backpack.data),
resolve every target (inside the run folder, or "use in place"), check every local source
exists, and only then copy or download, concurrently. Each entry is staged next to its target,
verified (size, file count, checksum), and renamed into place; a failure cancels the rest and
raises `DataError` with one line naming the entry, what was expected and what was found.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from auditor.backpack.checksums import checksum_of, directory_stats, parse_checksum
from auditor.backpack.data import MAX_CLIMB, DataEntry, DataPolicy, DataProfile, beside, climb
from auditor.backpack.layout import Backpack, load_backpack
from auditor.backpack.summary import Summary, read_summary
from auditor.common.errors import FloError

from ..folders import RUN_DIR, writing_into
from .download import Cancel, Cancelled
from .extract import already_extracted, extract
from .results import DataError, EntryResult, FetchReport, Mismatch, VerifyReport
from .sources import Source, StageContext, get_source, remove

Progress = Callable[[str, int, "int | None"], None]  # (entry name, bytes so far, total or None)


def default_scratch_dir() -> Path:
    """Where flo-run keeps run folders when --scratch-dir is not given: $FLO_SCRATCH_DIR, else
    $TMPDIR/flo-run (set FLO_SCRATCH_DIR where a cluster forbids /tmp)."""
    if env := os.environ.get("FLO_SCRATCH_DIR"):
        return Path(env).expanduser()
    return Path(tempfile.gettempdir()) / "flo-run"


def default_run_dir(backpack: str | Path, scratch_dir: str | Path | None = None) -> Path:
    """`<scratch>/runs/<backpack name>-<hash of its path>`: the same folder for every
    `flo-run fetch` / `verify` of one backpack; scratch as `default_scratch_dir`."""
    root = Path(backpack).expanduser().absolute()
    scratch = scratch_dir or default_scratch_dir()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return Path(scratch).expanduser().absolute() / "runs" / f"{root.name}-{tag}"


@dataclass
class PlannedEntry:
    entry: DataEntry
    source: Source
    target: Path | None  # None: used in place at its source (an fs entry outside the run)

    @property
    def in_place(self) -> bool:
        return self.target is None


#: The folders the notebook runs in, below the run folder, when data.yml climbs above it.
WORKDIR_NAME = "notebook"


@dataclass(frozen=True)
class Layout:
    """What an audit saw of the notebook's place: the folders it sat in (innermost last), and
    how many folders above its own the run wrote files ('../results/r.txt': 1)."""

    folders: tuple[str, ...] = ()
    wrote_up: int = 0


def audit_layout(backpack: Path, loaded: Backpack | None = None) -> Layout:
    """The `Layout` from the backpack's audit/summary.json (as `loaded` holds it, when the
    caller has loaded the backpack already); empty for a hand-written one."""
    if loaded is not None:
        return _layout_of(loaded.summary)
    try:
        return _layout_of(read_summary(backpack))
    except FloError:
        return Layout()


def _layout_of(summary: Summary | None) -> Layout:
    if summary is None or summary.notebook is None:
        return Layout()
    folder = os.path.dirname(summary.notebook)
    up = 0
    for path in summary.written:
        if beside(path, folder, MAX_CLIMB):
            up = max(up, climb(os.path.relpath(path, folder)))  # in the notebook's project
    return Layout(tuple(Path(folder).parts[1:]), up)


def notebook_dir(run_dir: Path, entries: list[DataEntry], layout: Layout = Layout()) -> Path:
    """Where the notebook runs inside `run_dir`: the run folder itself, or as many folders
    down as the deepest relative target climbs ('../shared.csv': one) or the audited run
    wrote above its folder, so that every target and every such output stays inside the run
    folder while the notebook names them as it did when audited. The folders are named as
    the notebook's were ('../notebooks/x' still works), else "notebook"."""
    depth = max([climb(e.target_location) for e in entries
                 if not os.path.isabs(e.target_location)] + [layout.wrote_up])
    depth = min(depth, MAX_CLIMB)
    names = (list(layout.folders[-depth:]) if depth and len(layout.folders) >= depth
             else [WORKDIR_NAME] * depth)
    return run_dir.joinpath(*names)


def profile_notebook_dir(backpack: Path, run_dir: Path, profile: str | None = None,
                         loaded: Backpack | None = None) -> Path:
    """`notebook_dir` for the chosen profile of `backpack`'s data.yml and its audit (read
    from `loaded` when the caller has loaded the backpack already)."""
    root = Path(backpack).expanduser().absolute()
    loaded = loaded or load_backpack(root)
    chosen = _profile(loaded, profile)
    return notebook_dir(Path(run_dir), chosen.entries if chosen else [],
                        audit_layout(root, loaded))


def resolve_target(entry: DataEntry, run_dir: Path, workdir: Path | None = None) -> Path | None:
    """The entry's path in the run folder (relative targets start at `workdir`, the notebook's
    folder, by default the run folder); None for the "use in place" convention (an fs entry
    whose absolute target_location is its own source). Anything leaving the run folder, or
    replacing the notebook's folder, is refused."""
    where = entry.target_location
    workdir = workdir or run_dir
    expected = "expected a path inside the run folder"
    if os.path.isabs(where):
        if entry.source_type == "fs" and os.path.normpath(where) == \
                os.path.normpath(entry.source):
            return None
        raise DataError(f"data entry {entry.name!r}: target_location {where!r} is absolute; "
                        f"{expected} (only an fs entry whose target equals its source is used "
                        "in place)", entry.name)
    posix = where.replace("\\", "/")
    if climb(posix) > MAX_CLIMB:
        raise DataError(f"data entry {entry.name!r}: target_location {where!r} climbs more than "
                        f"{MAX_CLIMB} folders with '..'; {expected}", entry.name)
    target = Path(os.path.normpath(workdir / posix))
    if not target.is_relative_to(run_dir):
        raise DataError(f"data entry {entry.name!r}: target_location {where!r} climbs out with "
                        f"'..'; {expected}", entry.name)
    if workdir.is_relative_to(target):
        raise DataError(f"data entry {entry.name!r}: target_location {where!r} is the run "
                        f"folder itself or holds the notebook; {expected}, naming a file or "
                        "folder", entry.name)
    if not target.resolve().is_relative_to(run_dir.resolve()):
        raise DataError(f"data entry {entry.name!r}: target_location {where!r} leads outside "
                        f"the run folder through a symlink; {expected}", entry.name)
    return target


def check_content(path: Path, entry: DataEntry) -> int:
    """Verify content at `path` against the entry; returns its size. Raises `Mismatch`."""
    label = f"data entry {entry.name!r} ({entry.source_type} {entry.source})"
    if not path.exists():
        raise Mismatch(f"{label}: expected content at {path}, found nothing", entry.name)
    if path.is_dir():
        files, size = directory_stats(path)
        if entry.files is not None and files != entry.files:
            raise Mismatch(f"{label}: expected {entry.files} files in the folder, found {files}",
                           entry.name)
    else:
        size = path.stat().st_size
    if entry.expected_size is not None and size != entry.expected_size:
        raise Mismatch(f"{label}: expected {entry.expected_size} bytes, found {size}", entry.name)
    if entry.checksum:
        algo, digest = parse_checksum(entry.checksum)
        found = checksum_of(path, algo)
        if found != f"{algo}:{digest}":
            raise Mismatch(f"{label}: expected checksum {algo}:{digest}, found {found}",
                           entry.name)
    return size


def _plan(profile: DataProfile, backpack: Path, run_dir: Path, layout: Layout
          ) -> list[PlannedEntry]:
    workdir = notebook_dir(run_dir, profile.entries, layout)
    planned = [PlannedEntry(e, get_source(e, backpack), resolve_target(e, run_dir, workdir))
               for e in profile.entries]
    for item in planned:
        item.source.check()
    return planned


def _profile(loaded: Backpack, profile: str | None) -> DataProfile | None:
    spec = loaded.data_spec
    return spec.profile(profile) if spec is not None else None


def fetch(backpack: Path, run_dir: Path, profile: str | None = None, *,
          progress: Progress | None = None, jobs: int = 4,
          partials: Path | None = None, loaded: Backpack | None = None) -> FetchReport:
    """Put every entry of the chosen profile in place under `run_dir`, verified. `loaded`:
    the backpack as the caller loaded it (its data.yml and summary.json), else read here.

    Entries already in place and verified are skipped. Raises `DataError` (with `.report`)
    when any entry fails; the run folder then holds no half-made file under any target name.
    """
    started = time.monotonic()
    root = Path(backpack).expanduser().absolute()
    run_dir = Path(run_dir).expanduser().absolute()
    loaded = loaded or load_backpack(root)
    chosen = _profile(loaded, profile)
    report = FetchReport(root, run_dir, chosen.name if chosen else None)
    if chosen is None:
        return report
    planned = _plan(chosen, root, run_dir, audit_layout(root, loaded))
    with writing_into(run_dir, RUN_DIR):
        run_dir.mkdir(parents=True, exist_ok=True)
    cancel = Cancel()  # set: stalled downloads are hung up, not waited for
    results: dict[str, EntryResult] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="flo-fetch")
    try:
        futures = {pool.submit(_fetch_one, item, chosen.policy, progress, cancel, partials): item
                   for item in planned}
        for future in as_completed(futures):
            result = future.result()
            results[result.name] = result
            if not result.ok:
                cancel.set()
    except BaseException:
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for item in planned:
        results.setdefault(item.entry.name, EntryResult(
            item.entry.name, item.entry.source, str(item.target or item.entry.source),
            ok=False, status="cancelled", message="not fetched: another entry failed"))
    report.entries = [results[item.entry.name] for item in planned]
    report.seconds = time.monotonic() - started
    problems = report.problems
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(problems[0].message + more, problems[0].name, report)
    return report


def _fetch_one(item: PlannedEntry, policy: DataPolicy, progress: Progress | None,
               cancel: threading.Event, partials: Path | None = None) -> EntryResult:
    entry = item.entry
    started = time.monotonic()
    result = EntryResult(entry.name, entry.source, str(item.target or entry.source))

    def report_bytes(done: int, total: int | None) -> None:
        if progress:
            progress(entry.name, done, total)

    try:
        if cancel.is_set():
            raise Cancelled("cancelled")
        if item.target is None:
            result.bytes = check_content(Path(entry.source), entry)
            result.status, result.from_cache = "in place", True
        else:
            _put_in_place(item, item.target, StageContext(policy, report_bytes, cancel,
                                                          partials=partials), result)
            if entry.post_fetch:
                result.extracted = _post_fetch(item.target, entry)
        report_bytes(result.bytes, result.bytes)
    except Cancelled:
        result.ok, result.status, result.message = False, "cancelled", "cancelled"
    except FloError as exc:
        result.ok, result.status, result.message = False, "failed", str(exc)
    except OSError as exc:
        result.ok, result.status = False, "failed"
        result.message = f"data entry {entry.name!r}: {exc.strerror or exc} ({exc.filename})"
    result.seconds = time.monotonic() - started
    return result


def _put_in_place(item: PlannedEntry, target: Path, ctx: StageContext,
                  result: EntryResult) -> None:
    entry = item.entry
    if target.exists():
        try:
            result.bytes = check_content(target, entry)
            result.status, result.from_cache = "present", True
            return
        except Mismatch:
            pass  # stale or damaged: fetch again, replace only once the new copy verifies
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = item.source.stage(target, ctx)
    try:
        try:
            result.bytes = check_content(staged.path, entry)
        except Mismatch:
            if not staged.resumed:
                raise
            remove(staged.path)  # the resumed bytes may be stale: one clean download
            ctx.fresh = True
            staged = item.source.stage(target, ctx)
            result.bytes = check_content(staged.path, entry)
        _replace(staged.path, target)
    except BaseException as exc:
        if not isinstance(exc, Cancelled):
            remove(staged.path)
        raise
    result.status = "fetched"


def _replace(new: Path, target: Path) -> None:
    """Rename `new` over `target`; a folder target is swapped out first, then removed."""
    if target.is_dir() and not target.is_symlink():
        old = target.parent / f".{target.name}.flo-old-{os.getpid()}"
        os.rename(target, old)
        os.rename(new, target)
        remove(old)
    else:
        os.replace(new, target)


def _post_fetch(target: Path, entry: DataEntry) -> list[str]:
    assert entry.post_fetch is not None
    done = already_extracted(target)
    if done is not None:
        return done
    try:
        return extract(target, entry.post_fetch["operation"], entry.name)
    except DataError:
        remove(target)  # a refused archive is not left behind looking fetched
        raise


def verify(backpack: Path, run_dir: str | Path | None = None, profile: str | None = None,
           loaded: Backpack | None = None) -> VerifyReport:
    """Check sizes and checksums of what is in place: in `run_dir` when given, else the
    local sources themselves (backpack, fs, file); remote entries then stay unchecked.
    `loaded` as in `fetch`."""
    started = time.monotonic()
    root = Path(backpack).expanduser().absolute()
    run = Path(run_dir).expanduser().absolute() if run_dir is not None else None
    loaded = loaded or load_backpack(root)
    chosen = _profile(loaded, profile)
    report = VerifyReport(root, run, chosen.name if chosen else None)
    workdir = (notebook_dir(run, chosen.entries, audit_layout(root, loaded))
               if run is not None and chosen else None)
    for entry in chosen.entries if chosen else []:
        result = EntryResult(entry.name, entry.source, None, status="verified")
        item_started = time.monotonic()
        try:
            source = get_source(entry, root)
            path: Path | None
            if run is not None:
                target = resolve_target(entry, run, workdir)
                path = target if target is not None else Path(entry.source)
            else:
                path = source.local_path()
            if path is None:
                result.status = "unchecked"
                result.message = "remote source: give --run-dir to check the fetched copy"
            else:
                result.target = str(path)
                result.bytes = check_content(path, entry)
        except FloError as exc:
            result.ok, result.status, result.message = False, "failed", str(exc)
        result.seconds = time.monotonic() - item_started
        report.entries.append(result)
    report.seconds = time.monotonic() - started
    return report
