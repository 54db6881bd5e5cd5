"""The backpack folder: written all-or-nothing by flo-audit, read and validated for flo-run.

Layout (DESIGN.md): workflow/ (the notebook as given + local helpers), software/
(environment.yml, requirements.txt), compute/compute.yml, audit/ (the raw record and
summary.json). `write_backpack` builds it in a temporary folder beside the destination and
renames it into place; `load_backpack` reads the spec files back with errors that name the
file, the key and what was expected.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..common.errors import FloError, SpecError, UsageError
from .compute import ComputeSpec, compute_from_doc
from .data import DataSpec, load_data_spec
from .environment import (
    EnvSpec,
    environment_from_doc,
    load_yaml,
    parse_requirements,
    requirement_lines,
)
from .summary import Summary, read_summary
from .yaml_text import load_yaml_text

ENVIRONMENT = "software/environment.yml"
WORKER_ENVIRONMENT = "software/worker-environment.yml"
REQUIREMENTS = "software/requirements.txt"
COMPUTE = "compute/compute.yml"
DATA = "data/data.yml"
T = TypeVar("T")


class BackpackError(FloError):
    """A backpack folder is missing, or one of its files is missing or malformed."""


class BackpackSpecError(SpecError, BackpackError):
    """One of a backpack's spec files is missing or breaks its schema (fields as `SpecError`)."""


# ---------------------------------------------------------------- writing


#: The top-level entries of a backpack (DESIGN.md); --force replaces only folders made of these.
LAYOUT = ("workflow", "software", "data", "compute", "audit")


def is_backpack(folder: Path) -> bool:
    """Whether `folder` is recognisably a backpack: an audit record, or both spec files a
    backpack cannot do without."""
    return (folder / "audit" / "session.json").is_file() or (
        (folder / ENVIRONMENT).is_file() and (folder / COMPUTE).is_file())


def check_destination(dest: str | Path, force: bool, keep: Iterable[str | Path] = ()) -> Path:
    """Refuse a destination whose replacement could lose a user's file (checked before the run,
    and again just before the rename, with the inputs the run read in `keep`).

    Never: `/`, `$HOME`, the current folder or one of its ancestors, a folder that holds any
    path of `keep` (the workflow's folder, its inputs), a symlink or a file. An existing,
    non-empty folder only with `force`, and only when it is a backpack holding nothing but the
    backpack layout."""
    dest = Path(dest).expanduser().absolute()
    real = Path(os.path.realpath(dest))
    if real == Path(real.anchor) or real == Path(os.path.realpath(Path.home())):
        raise UsageError(f"refusing to write a backpack to {dest}: it is "
                         f"{'the root folder' if real == Path(real.anchor) else 'your home'}; "
                         "choose a new folder with -o")
    cwd = Path(os.path.realpath(Path.cwd()))
    if cwd == real or cwd.is_relative_to(real):
        raise UsageError(f"refusing to write a backpack to {dest}: it is the current folder or "
                         "one above it, and replacing it would remove your files; choose a new "
                         "folder with -o")
    for path in keep:
        held = Path(os.path.realpath(path))
        if held == real or held.is_relative_to(real):
            raise UsageError(f"refusing to write a backpack to {dest}: it holds {path}, which "
                             "the notebook needs; choose a new folder with -o")
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or dest.is_symlink():
            raise UsageError(f"{dest} exists and is not a folder; choose another output with -o")
        entries = sorted(p.name for p in dest.iterdir())
        if entries and not force:
            raise UsageError(f"{dest} already exists; pass --force to replace it, "
                             "or choose another output folder with -o")
        if entries and not is_backpack(dest):
            raise UsageError(f"{dest} is not a backpack (no audit/session.json, no "
                             f"{ENVIRONMENT} and {COMPUTE}); --force replaces only a backpack; "
                             "choose a new folder with -o")
        foreign = [name for name in entries if name not in LAYOUT]
        if foreign:
            raise UsageError(f"{dest} is a backpack but also holds {', '.join(foreign[:3])}"
                             f"{' ...' if len(foreign) > 3 else ''}, which --force would remove; "
                             "move it out or choose a new folder with -o")
    return dest


def write_backpack(dest: str | Path, *, texts: Mapping[str, str],
                   copies: Iterable[tuple[str | Path, str]], force: bool = False,
                   keep: Iterable[str | Path] = ()) -> Path:
    """Write a backpack at `dest`: `texts` maps relative path -> content, `copies` (source,
    relative path) pairs. All or nothing: an existing `dest` is replaced (only with `force`,
    only a backpack, never one holding a path of `keep`: see `check_destination`) after the new
    folder is complete, and a failure leaves no temporary folder behind."""
    keep = list(keep)
    dest = check_destination(dest, force, keep)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        for relative, text in texts.items():
            target = _inside(staging, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        for source, relative in copies:
            target = _inside(staging, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it 0700
        _move_into_place(staging, dest, force, keep)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BackpackError(f"refusing to write {relative!r} outside the backpack folder")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _move_into_place(staging: Path, dest: Path, force: bool, keep: list[str | Path]) -> None:
    if not dest.exists():
        os.rename(staging, dest)
        return
    check_destination(dest, force, keep)  # it may have appeared or changed during the run
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(staging, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def workflow_copies(notebook: Path, helpers: Iterable[str]
                    ) -> tuple[list[tuple[str | Path, str]], list[str]]:
    """What goes into workflow/: the notebook as given, plus local helper files at their
    path relative to the notebook's folder. Returns the copies and warnings."""
    folder = notebook.parent.resolve()
    copies: list[tuple[str | Path, str]] = [(notebook, f"workflow/{notebook.name}")]
    warnings = []
    for helper in sorted(set(helpers)):
        path = Path(helper)
        path = path if path.is_absolute() else folder / path
        if path.resolve() == notebook.resolve() or "__pycache__" in path.parts:
            continue
        try:
            relative = path.resolve().relative_to(folder)
        except ValueError:
            warnings.append(f"{path} is outside the notebook's folder; not copied into workflow/")
            continue
        if path.is_file():
            copies.append((path, f"workflow/{relative.as_posix()}"))
        else:
            warnings.append(f"{path} no longer exists; not copied into workflow/")
    return copies, warnings


# ---------------------------------------------------------------- reading


@dataclass
class Backpack:
    """A backpack as read back: the parsed spec files and what was odd about them."""

    root: Path
    workflow: Path
    environment: dict
    worker_environment: dict | None
    compute: ComputeSpec
    requirements: list[str] | None = None
    data: dict | None = None
    summary: Summary | None = None
    warnings: list[str] = field(default_factory=list)
    data_spec: DataSpec | None = None  # data.yml as a model (profiles of DataEntry)
    #: The environment files as pins, by role ("manager", and "worker" when the file exists).
    specs: dict[str, EnvSpec] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.summary is None or self.summary.complete


def load_backpack(path: str | Path) -> Backpack:
    """Read and validate a backpack folder; raise the first `SpecError` (file, key,
    expectation), or `BackpackError` when there is no such folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BackpackError(f"no such backpack folder: {root}")
    reading = read_backpack(root)
    if reading.errors:
        raise reading.errors[0]
    assert reading.backpack is not None  # no errors: every file was read
    return reading.backpack


@dataclass
class Reading:
    """A backpack folder read with its problems collected instead of raised (what
    `flo-run validate` lists): the `Backpack` when there were none, else None; the workflow
    and the environment specs that could be read either way."""

    backpack: Backpack | None
    errors: list[SpecError]
    workflow: Path | None = None
    specs: dict[str, EnvSpec] = field(default_factory=dict)


def read_backpack(root: Path) -> Reading:
    """Every spec file of the backpack folder `root`, each read once; see `Reading`."""
    errors: list[SpecError] = []
    warnings: list[str] = []

    def read(what: Callable[[], T]) -> T | None:
        try:
            return what()
        except SpecError as exc:
            errors.append(exc)
            return None

    summary = read(lambda: _read_summary(root))
    workflow = read(lambda: find_workflow(root, summary))
    manager = read(lambda: _read_environment(root / ENVIRONMENT, warnings))
    worker = None
    if (root / WORKER_ENVIRONMENT).exists():
        worker = read(lambda: _read_environment(root / WORKER_ENVIRONMENT, warnings))
    compute = read(lambda: _read_compute(root / COMPUTE, warnings))
    requirements = read(lambda: _read_requirements(root / REQUIREMENTS)) \
        if (root / REQUIREMENTS).exists() else None
    data = data_spec = None
    if (root / DATA).exists():
        data = read(lambda: _read_yaml(root / DATA, "a mapping"))
        if data is not None:
            data_spec = read(lambda: load_data_spec(root / DATA, data))
    specs = {role: read[1] for role, read in (("manager", manager), ("worker", worker))
             if read is not None}
    if errors or workflow is None or manager is None or compute is None:
        return Reading(None, errors, workflow, specs)
    if data_spec is not None:
        warnings.extend(data_spec.warnings)
    backpack = Backpack(root, workflow, manager[0], worker[0] if worker else None, compute,
                        requirements, data, summary, warnings, data_spec, specs)
    return Reading(backpack, [], workflow, dict(specs))


def _read_yaml(path: Path, expected: str) -> Any:
    if not path.exists():
        raise BackpackSpecError(path, "", f"missing; expected {expected}")
    try:
        doc = load_yaml_text(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BackpackSpecError(path, "", f"not valid YAML{where}: "
                                f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise BackpackSpecError(path, "", f"expected {expected}", type(doc).__name__)
    return doc


def _read_summary(root: Path) -> Summary | None:
    try:
        return read_summary(root)
    except SpecError as exc:
        raise _in_backpack(exc) from None


def find_workflow(root: Path, summary: Summary | None) -> Path:
    """The workflow in workflow/: the file the audit ran (summary.json's "notebook") when it
    is there; else the one notebook; else, without a notebook, the one .py script (helper
    modules sit beside a notebook, so .py files count only without one)."""
    folder = root / "workflow"
    if not folder.is_dir():
        raise BackpackSpecError(f"{folder}/", "", "missing; expected a folder with the "
                                "notebook (.ipynb) or script (.py)")
    if summary and summary.notebook:
        named = folder / Path(summary.notebook).name
        if named.is_file():
            return named  # a script beside its helper modules: the audit names it
    notebooks = sorted(p for p in folder.glob("*.ipynb") if p.is_file())
    scripts = sorted(p for p in folder.glob("*.py") if p.is_file())
    candidates = notebooks or scripts
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise BackpackSpecError(f"{folder}/", "", "expected exactly one notebook (.ipynb) or, "
                            f"without one, exactly one .py script; found {found}")


def _read_environment(path: Path, warnings: list[str]) -> tuple[dict, EnvSpec]:
    if not path.exists():
        raise BackpackSpecError(path, "", "missing; expected a conda environment file with "
                                "'dependencies'")
    try:
        doc = load_yaml(path)
        spec = environment_from_doc(path, doc, warnings)
    except SpecError as exc:
        raise _in_backpack(exc) from None
    assert isinstance(doc, dict)  # environment_from_doc accepts only a mapping
    return doc, spec


def _read_requirements(path: Path) -> list[str]:
    """requirements.txt's lines without comments, each checked as a pip requirement."""
    lines = requirement_lines(path.read_text(encoding="utf-8"))
    try:
        parse_requirements(path, lines)
    except SpecError as exc:
        raise _in_backpack(exc) from None
    return lines


def _in_backpack(exc: SpecError) -> BackpackSpecError:
    """A spec model's error, as the error of the backpack that holds the file."""
    return BackpackSpecError(exc.file, exc.key, exc.expected, exc.found, entry=exc.entry)


def _read_compute(path: Path, warnings: list[str]) -> ComputeSpec:
    doc = _read_yaml(path, "a mapping with 'vine_factory_config'")
    try:
        return compute_from_doc(path, doc, warnings)
    except SpecError as exc:
        raise _in_backpack(exc) from None
