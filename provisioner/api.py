"""flo-run's library API: validate a backpack, fetch its data, and build, list or prune its
environments (running one is `provisioner.run.run_backpack`).

Each function returns data (dataclasses with `to_dict`); the CLI only renders it. Validation
(provisioner/validation.py) runs first in every command: an invalid backpack stops before any
interpreter or uv work.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from auditor.backpack.environment import EnvSpec

from . import data as data_step
from .data import FetchReport, VerifyReport, default_run_dir, default_scratch_dir
from .data.fetch import Progress as DataProgress
from .envs import EnvCache, EnvRequest, canonical_spec, find_interpreter, get_builder
from .envs.base import BuiltEnv
from .envs.cache import CachedEnv
from .envs.conda import choose_builder, find_conda_tool, requested_interpreter
from .envs.interpreters import Interpreter
from .folders import SCRATCH, writing_into
from .validation import InvalidBackpack as InvalidBackpack  # part of this API, defined there
from .validation import Problem as Problem
from .validation import ValidationResult, validate

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
