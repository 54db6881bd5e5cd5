"""flo-run's library API: validate a backpack, and build, list or prune its environments.

Each function returns data (dataclasses with `to_dict`); the CLI only renders it. Validation
runs first in every command: an invalid backpack stops before any interpreter or uv work.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from auditor.backpack.environment import EnvSpec
from auditor.backpack.layout import Backpack, read_backpack
from auditor.common.errors import FloError, SpecError

from . import data as data_step
from .data import FetchReport, VerifyReport, default_run_dir, default_scratch_dir
from .data.fetch import Progress as DataProgress
from .envs import EnvCache, EnvRequest, canonical_spec, find_interpreter, get_builder
from .envs.base import BuiltEnv
from .envs.cache import CachedEnv
from .envs.conda import choose_builder, find_conda_tool, requested_interpreter
from .envs.interpreters import Interpreter
from .folders import SCRATCH, writing_into

ENV_FILES = {"manager": "software/environment.yml", "worker": "software/worker-environment.yml"}


class InvalidBackpack(FloError):
    """The backpack did not validate; the message lists what is wrong, file by file."""

    def __init__(self, result: ValidationResult) -> None:
        first = result.problems[0]
        more = f" (and {len(result.problems) - 1} more; run `flo-run validate`)" \
            if len(result.problems) > 1 else ""
        super().__init__(f"invalid backpack {result.root}: {first}{more}")
        self.result = result


@dataclass(frozen=True)
class Problem:
    """One reason a backpack is invalid: which file, which key, what was expected."""

    file: str
    key: str
    expected: str

    def __str__(self) -> str:
        key = f": key {self.key!r}" if self.key else ""
        return f"{self.file}{key}: {self.expected}"


@dataclass
class ValidationResult:
    root: Path
    workflow: Path | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    specs: dict[str, EnvSpec] = field(default_factory=dict)  # role -> spec
    #: The backpack as loaded (once, for the whole command); None when it is invalid.
    backpack: Backpack | None = None
    checked_with: str = "auditor.backpack.layout"  # which loader validated the spec files
    seconds: float = 0.0

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.valid else 2

    def to_dict(self) -> dict:
        return {"backpack": str(self.root), "valid": self.valid,
                "workflow": str(self.workflow) if self.workflow else None,
                "problems": [{"file": p.file, "key": p.key, "expected": p.expected}
                             for p in self.problems],
                "warnings": self.warnings, "checked_with": self.checked_with,
                "python": {role: spec.python for role, spec in self.specs.items()},
                "seconds": round(self.seconds, 3)}


def validate(backpack: str | Path, strict: bool = False) -> ValidationResult:
    """Check a backpack's layout and spec files; every problem found is listed, none raised.
    A valid backpack is loaded once, here: `result.backpack` is what the later phases use."""
    started = time.monotonic()
    root = Path(backpack).expanduser().absolute()
    result = ValidationResult(root)
    if not root.is_dir():
        result.problems.append(Problem(str(root), "", "expected a backpack folder"))
        return result
    reading = read_backpack(root)
    result.problems += [_problem(exc, root) for exc in reading.errors]
    result.backpack, result.workflow = reading.backpack, reading.workflow
    result.specs = dict(reading.specs)
    for role, spec in reading.specs.items():
        if spec.python is None:
            result.warnings.append(f"{ENV_FILES[role]}: no 'python=' pin; the newest "
                                   "interpreter found (or --python) will be used")
    if "manager" in result.specs and not (root / ENV_FILES["worker"]).exists():
        result.specs["worker"] = result.specs["manager"]  # absent = same as manager
    if reading.backpack is not None:
        result.warnings.extend(_relative(w, root) for w in reading.backpack.warnings)
    if strict and result.workflow is not None:
        _check_notebook(root, result.workflow, result)
    result.seconds = time.monotonic() - started
    return result


def _problem(exc: SpecError, root: Path) -> Problem:
    """A loader's error as a Problem, paths relative to the backpack. A data.yml entry's key
    stays in the text ("entry data[0] ('x'): key 'checksum': ..."), as the entry names it."""
    file = _relative(exc.file, root)
    if exc.entry:
        return Problem(file, "", _relative(exc.detail, root))
    return Problem(file, exc.key, _relative(exc.expectation, root))


def _check_notebook(root: Path, workflow: Path, result: ValidationResult) -> None:
    """The workflow as flo-run will execute it: read by the audit's loader (a notebook must
    be valid nbformat; a script UTF-8 text), and a script must compile."""
    from auditor.backpack.workflow import load_workflow

    relative = str(workflow.relative_to(root))
    try:
        load_workflow(workflow)
    except FloError as exc:
        message = _relative(str(exc), root).removeprefix(f"{relative} is ")
        result.problems.append(Problem(relative, "", message))
        return
    if workflow.suffix != ".py":
        return
    try:
        compile(workflow.read_text(encoding="utf-8"), str(workflow), "exec")
    except SyntaxError as exc:
        problem = Problem(relative, f"line {exc.lineno}", f"valid Python ({exc.msg})")
        ours, theirs = f"{sys.version_info[0]}.{sys.version_info[1]}", _minor(result)
        if theirs is None or theirs == ours:
            result.problems.append(problem)
        else:  # the kernel's Python may accept what ours does not (or the other way round)
            result.warnings.append(f"{problem} under Python {ours}; the manager environment "
                                   f"has Python {theirs}")


def _minor(result: ValidationResult) -> str | None:
    spec = result.specs.get("manager")
    if spec is None or not spec.python:
        return None
    return ".".join(spec.python.split(".")[:2])


def _relative(text: str, root: Path) -> str:
    return text.replace(f"{root}/", "")


# ---------------------------------------------------------------- data


def fetch_data(backpack: str | Path, run_dir: str | Path | None = None,
               profile: str | None = None, *, scratch_dir: str | Path | None = None,
               progress: DataProgress | None = None,
               jobs: int = 4) -> FetchReport:
    """Validate, then put the data of `backpack` in place under `run_dir` (default:
    `default_run_dir`), verified. Raises `DataError` naming the first bad entry."""
    checked = validate(backpack)
    if not checked.valid:
        raise InvalidBackpack(checked)
    run = Path(run_dir) if run_dir is not None else default_run_dir(checked.root, scratch_dir)
    if run_dir is None:  # under the scratch folder: a read-only one is named as such
        scratch = Path(scratch_dir or default_scratch_dir()).expanduser().absolute()
        with writing_into(scratch, SCRATCH):
            run.mkdir(parents=True, exist_ok=True)
    return data_step.fetch(checked.root, run, profile, progress=progress, jobs=jobs,
                           loaded=checked.backpack)


def verify_data(backpack: str | Path, run_dir: str | Path | None = None,
                profile: str | None = None) -> VerifyReport:
    """Validate, then check sizes and checksums of the data in `run_dir` (or, without one,
    of the local sources themselves)."""
    checked = validate(backpack)
    if not checked.valid:
        raise InvalidBackpack(checked)
    return data_step.verify(checked.root, run_dir, profile, loaded=checked.backpack)


# ---------------------------------------------------------------- environments


@dataclass
class EnvReport:
    """The environments of one backpack, by role, and how long getting them took."""

    backpack: Path
    envs: list[BuiltEnv]
    validation_seconds: float
    seconds: float

    def for_role(self, role: str) -> BuiltEnv:
        return next(env for env in self.envs if role in env.roles)

    def to_dict(self) -> dict:
        return {"backpack": str(self.backpack), "envs": [e.to_dict() for e in self.envs],
                "validation_seconds": round(self.validation_seconds, 3),
                "seconds": round(self.seconds, 3)}


def plan_environments(checked: ValidationResult, python: str | None = None,
                      builder: str = "auto", roles: tuple[str, ...] = ("manager", "worker"),
                      ) -> list[EnvRequest]:
    """One request per distinct (spec, interpreter) of `roles`: identical manager and worker
    specs share. `builder` "auto" picks conda or uv per spec (`choose_builder`); a conda env
    brings its own python, so it needs no interpreter on the machine."""
    found: dict[str | None, Interpreter] = {}
    requests: list[EnvRequest] = []
    groups: dict[str, tuple[EnvSpec, list[str]]] = {}
    for role in roles:
        spec = checked.specs[role]
        groups.setdefault(_spec_key(spec), (spec, []))[1].append(role)
    for spec, members in groups.values():
        name = choose_builder(builder, spec)
        if name == "conda":
            interp = requested_interpreter(spec.python)
        else:
            if spec.python not in found:
                found[spec.python] = find_interpreter(spec.python, python)
            interp = found[spec.python]
        requests.append(EnvRequest(spec, interp, tuple(members), name))
    return requests


def _spec_key(spec: EnvSpec) -> str:
    return json.dumps([canonical_spec(spec), spec.channels], sort_keys=True)


def own_worker_spec(checked: ValidationResult) -> bool:
    """Whether the workers' spec differs from the manager's (so would be an environment of
    its own)."""
    return _spec_key(checked.specs["worker"]) != _spec_key(checked.specs["manager"])


def build_environments(backpack: str | Path, cache_dir: str | Path | None = None,
                       python: str | None = None, builder: str = "auto") -> EnvReport:
    """Have the manager and worker environments of `backpack` ready: from the cache when
    built before, else built now (once, even with concurrent callers) by `builder` ("auto",
    "uv", "pip" or "conda")."""
    started = time.monotonic()
    checked = validate(backpack)
    if not checked.valid:
        raise InvalidBackpack(checked)
    cache = EnvCache(cache_dir)
    envs = []
    for request in plan_environments(checked, python, builder):
        envs.append(ensure_environment(cache, request, str(checked.root)))
    return EnvReport(checked.root, envs, checked.seconds, time.monotonic() - started)


def ensure_environment(cache: EnvCache, request: EnvRequest, backpack: str = "") -> BuiltEnv:
    """The environment of `request` from `cache`, built by the builder the request names."""
    make = get_builder(request.builder)
    return cache.ensure(request, lambda target: make.build(request, target), backpack=backpack,
                        relocatable=make.relocatable)


@dataclass
class CacheListing:
    root: Path
    entries: list[CachedEnv]
    current: set[str]  # keys the given backpack would use now
    removed: list[CachedEnv] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"cache_dir": str(self.root),
                "envs": [dict(e.to_dict(), current=e.key in self.current) for e in self.entries],
                "removed": [e.to_dict() for e in self.removed]}


def list_environments(backpack: str | Path, cache_dir: str | Path | None = None,
                      python: str | None = None, builder: str = "auto") -> CacheListing:
    """Every cached environment, marking those `backpack` would use now."""
    cache = EnvCache(cache_dir)
    return CacheListing(cache.root, cache.entries(), _current_keys(backpack, python, builder))


def clean_environments(backpack: str | Path, cache_dir: str | Path | None = None,
                       older_than_days: float | None = None,
                       python: str | None = None, builder: str = "auto") -> CacheListing:
    """Prune the cache: environments built for `backpack` that its current spec no longer
    uses, and, with `older_than_days`, any environment unused for that long. The ones the
    backpack uses now are always kept."""
    cache = EnvCache(cache_dir)
    current = _current_keys(backpack, python, builder)
    root = str(Path(backpack).expanduser().absolute())
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed = []
    for entry in cache.entries():
        if entry.key in current:
            continue
        stale = entry.backpack == root
        old = cutoff is not None and entry.last_used < cutoff
        if (stale or old) and cache.remove(entry.key):
            removed.append(entry)
    return CacheListing(cache.root, cache.entries(), current, removed)


def _current_keys(backpack: str | Path, python: str | None, builder: str = "auto") -> set[str]:
    checked = validate(backpack)
    if not checked.valid:
        raise InvalidBackpack(checked)
    # Without an explicit builder, an environment any builder made from the current spec is
    # current: one built with `--builder uv` on a machine with conda is still in use.
    builders = [builder] if builder != "auto" else ["auto", "uv", "pip"] + (
        ["conda"] if find_conda_tool() else [])
    return {request.key for name in builders
            for request in plan_environments(checked, python, name)}
