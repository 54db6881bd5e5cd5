"""The environment cache: one folder per request key, built all-or-nothing, one builder per key.

Layout under the cache root (`default_cache_dir` says which folder that is):

    <key>/                  a finished environment; <key>/flo-env.json is its stamp
    <key>/flo-last-used     touched on every reuse (the stamp itself is never rewritten)
    .<key>.lock             fcntl lock held while building <key>
    .<key>.tmp-XXXX/        a build in progress; renamed to <key>/ only when complete

A finished folder always has its stamp: the stamp is written inside the temporary folder before
the rename, and rename is atomic. So the fast path (folder + matching stamp) needs no lock and no
uv call. A build that fails or is killed leaves at most a `.tmp-` folder, removed by the next
build of that key under the lock. Venvs are made relocatable so the rename does not break them.

Conda prefixes are not relocatable (the prefix is written into their files), so a builder with
`relocatable = False` builds straight into `<key>/` under the lock and the stamp is written
last; a failed or interrupted build removes the folder, and one killed outright leaves a folder
without a stamp, which the next build of that key removes before starting.

A stamp says an environment was finished, not that it is still whole: before reuse its
interpreter is asked (`health.damage`), and a damaged one is moved aside under the lock and
rebuilt, with a note saying so. A read-only cache still serves the environments it holds (the
last-used mark is best effort); building in one is a `NotWritable` error naming the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..folders import CACHE, writing_into
from .base import BuildOutcome, BuiltEnv, EnvRequest
from .health import damage

STAMP = "flo-env.json"
LAST_USED = "flo-last-used"


def default_cache_dir(scratch_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache root when --cache-dir is not given: $FLO_CACHE_DIR, else SCRATCH/envs when
    a scratch folder was named (`flo-run BP --scratch-dir`), else $XDG_CACHE_HOME/flo-backpack/
    envs, else ~/.cache/flo-backpack/envs. The one place this rule lives."""
    if env := os.environ.get("FLO_CACHE_DIR"):
        return Path(env).expanduser()
    if scratch_dir is not None:
        return Path(scratch_dir).expanduser().absolute() / "envs"
    # The XDG base-directory spec: a relative (or empty) value is invalid and ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "flo-backpack" / "envs"


@dataclass
class CachedEnv:
    """A finished environment found in the cache, for listing and pruning."""

    key: str
    path: Path
    roles: list[str]
    python: str
    built_at: float
    last_used: float
    size_bytes: int
    backpack: str

    def to_dict(self) -> dict:
        return {"key": self.key, "path": str(self.path), "roles": self.roles,
                "python": self.python, "built_at": self.built_at, "last_used": self.last_used,
                "size_bytes": self.size_bytes, "backpack": self.backpack}


class EnvCache:
    """Finished environments by key under `root`."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = (Path(root).expanduser() if root else default_cache_dir()).absolute()

    def path_for(self, key: str) -> Path:
        return self.root / key

    def stamp(self, key: str) -> dict | None:
        """The stamp of a finished environment `key`, or None when there is none (or it is not
        for this key)."""
        try:
            stamp = json.loads((self.path_for(key) / STAMP).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return stamp if stamp.get("key") == key else None

    @contextmanager
    def lock(self, key: str) -> Iterator[float]:
        """Hold the build lock of `key`; yields the seconds spent waiting for it. The first
        write into the cache, so a read-only one is a `NotWritable` error here."""
        started = time.monotonic()
        with writing_into(self.root, CACHE):
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / f".{key}.lock", "a+")
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, even on a crash
            try:
                yield time.monotonic() - started
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ensure(self, request: EnvRequest, build: Callable[[Path], BuildOutcome],
               backpack: str = "", relocatable: bool = True,
               check: Callable[[Path, tuple[str, ...]], str | None] = damage) -> BuiltEnv:
        """The environment for `request`: reused when its stamp is there and `check(folder,
        bootstrap)` finds nothing wrong, else built under the key's lock by
        `build(temporary_folder)` and renamed into place, or, when not `relocatable`, by
        `build(final_folder)` with the stamp written last."""
        started = time.monotonic()
        key = request.key
        final = self.path_for(key)
        damaged: tuple[dict, str] | None = None  # the stamp of a damaged folder, and what is
        if (stamp := self.stamp(key)) is not None:
            if (problem := check(final, request.bootstrap)) is None:
                return self._reused(request, stamp, started, 0.0)
            damaged = (stamp, problem)
        with self.lock(key) as waited:
            stamp = self.stamp(key)
            # A stamp we have not judged was written meanwhile by another process's build.
            if stamp is not None and (damaged is None or stamp != damaged[0]):
                return self._reused(request, stamp, started, waited)
            for stale in self.root.glob(f".{key}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if damaged is not None:  # its stamp goes first (one rename), then the rest
                aside = self.root / f".{key}.tmp-damaged-{os.getpid()}"
                os.rename(final, aside)
                shutil.rmtree(aside, ignore_errors=True)
            elif final.exists():  # a folder without a stamp is not ours to trust
                shutil.rmtree(final)
            if relocatable:
                work = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=self.root))
                work.rmdir()  # builders create their target themselves
            else:
                work = final
            unfinished: Path | None = work  # removed if the build does not get to the end
            try:
                outcome = build(work)
                python = outcome.python or request.interpreter.version
                stamp = {
                    "key": key, "roles": list(request.roles), "builder": request.builder,
                    "python": python,
                    "interpreter": request.interpreter.executable,
                    "request": request.canonical(), "installed": outcome.installed,
                    "notes": outcome.notes, "built_at": time.time(),
                    "build_seconds": round(time.monotonic() - started, 3),
                    "backpack": backpack,
                }
                (work / LAST_USED).touch()
                # Written whole, then renamed: a reader never sees half a stamp.
                (work / f"{STAMP}.part").write_text(json.dumps(stamp, indent=2),
                                                    encoding="utf-8")
                os.replace(work / f"{STAMP}.part", work / STAMP)
                if relocatable:
                    os.rename(work, final)
                unfinished = None
            finally:
                if unfinished is not None and unfinished.exists():
                    shutil.rmtree(unfinished, ignore_errors=True)
        notes = list(outcome.notes)
        if damaged is not None:  # said on this run only: the stamp keeps the builder's notes
            notes.insert(0, f"the cached environment {final} was damaged ({damaged[1]}): "
                            "rebuilt")
        return BuiltEnv(request.roles, final, key, python, False, time.monotonic() - started,
                        waited, outcome.installed, notes, request.builder)

    def _reused(self, request: EnvRequest, stamp: dict, started: float,
                waited: float) -> BuiltEnv:
        final = self.path_for(request.key)
        try:
            (final / LAST_USED).touch()
        except OSError:  # a read-only cache still serves what it holds
            pass
        return BuiltEnv(request.roles, final, request.key, stamp.get("python", ""), True,
                        time.monotonic() - started, waited, stamp.get("installed", {}),
                        stamp.get("notes", []), stamp.get("builder", request.builder))

    def entries(self) -> list[CachedEnv]:
        """Every finished environment in the cache, most recently used first."""
        found = []
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            stamp = self.stamp(folder.name)
            if stamp is None:
                continue
            last = folder / LAST_USED
            found.append(CachedEnv(
                folder.name, folder, stamp.get("roles", []), stamp.get("python", ""),
                stamp.get("built_at", 0.0),
                last.stat().st_mtime if last.exists() else stamp.get("built_at", 0.0),
                _size(folder), stamp.get("backpack", "")))
        return sorted(found, key=lambda e: -e.last_used)

    def remove(self, key: str) -> bool:
        """Delete environment `key` under its lock (never under a running build)."""
        with self.lock(key):
            folder = self.path_for(key)
            if not folder.exists():
                return False
            shutil.rmtree(folder)
        return True


def _size(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
