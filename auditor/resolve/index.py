"""Path -> owning distribution, for the kernel's environment (DESIGN.md rule 4).

Built once from every scanner's listings; each lookup is a few dict probes, memoised. A file is
owned when a record lists it (RECORD, conda-meta "files"), when it lies in an editable install's
source tree, or when it lies in a package directory below a site dir whose listed files all
belong to one distribution (files a package writes into itself, egg-info installs).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from packaging.utils import canonicalize_name

from ..common.realpaths import RealPaths
from . import conda, pip  # noqa: F401  (importing registers the scanners)
from .base import SCANNERS, Distribution, Environment, Listing, Ownership, is_metadata_path

_MISSING = object()
# Prefixes too broad to call "the environment": a system Python's prefix holds the whole OS.
_SYSTEM_PREFIXES = {"/", "/usr", "/usr/local"}


def _variants(path: str) -> list[str]:
    path = os.path.normpath(path)
    real = os.path.realpath(path)
    return [path] if real == path else [path, real]


def _ancestors(path: str) -> Iterable[str]:
    while path not in ("/", ""):
        path = os.path.dirname(path)
        yield path


def source_of_pyc(path: str) -> str | None:
    """`pkg/__pycache__/mod.cpython-311.opt-1.pyc[.NNNN]` -> `pkg/mod.py` (None if not a cache)."""
    head, sep, name = path.rpartition("/__pycache__/")
    if not sep or ".pyc" not in name:
        return None
    return f"{head}/{name.split('.', 1)[0]}.py"


class EnvIndex:
    """Who owns each file of one environment; built by `index_environment`."""

    def __init__(self, env: Environment, listings: list[Listing],
                 exclude_names: Iterable[str] = ()) -> None:
        self.env = env
        self._exclude = {canonicalize_name(n) for n in exclude_names}
        self._files: dict[str, tuple[Distribution, bool]] = {}
        self._meta_dirs: dict[str, Distribution] = {}
        self._roots: dict[str, Distribution] = {}
        self._dir_owner: dict[str, Distribution | None] = {}
        self._twins: dict[Distribution, Distribution] = {}  # conda package -> its dist-info
        self._by_key: dict[str, Distribution] = {}
        self._dists: list[Distribution] = []
        self._memo: dict[tuple[str, str | None], Ownership | None] = {}
        self._realpath = RealPaths()
        self._env_memo: dict[str, bool] = {}
        self._folder_owner: dict[str, Distribution | None] = {}  # _editable_owner's climbs
        self._folder_package: dict[str, Distribution | None] = {}  # _package_dir_owner's
        sites = [p for p in env.paths if os.path.isdir(p)]
        self._anchors = {v for p in sites for v in _variants(p)}
        conda_meta = os.path.join(env.prefix, "conda-meta")
        if os.path.isdir(conda_meta):
            self._anchors.update(_variants(env.prefix))
        self._stops = {a for anchor in self._anchors for a in _ancestors(anchor)}
        self._stdlib = tuple(v + "/" for d in env.stdlib for v in _variants(d))
        self._stdlib += tuple(p + "/" for p in env.paths if p.endswith(".zip"))
        self._interpreter = self._interpreter_files(env)
        self._index(listings)
        self._env_roots = self._environment_roots(env, listings)

    # -- building -------------------------------------------------------------------------

    def _index(self, listings: list[Listing]) -> None:
        conda_meta_dirs: dict[str, Distribution] = {}
        for listing in (li for li in listings if li.dist.kind == "conda"):
            for meta_dir in listing.owns_metadata_of:
                for variant in _variants(meta_dir):
                    conda_meta_dirs[variant] = listing.dist
            self._add_files(listing, override=True)
            self._files[os.path.normpath(listing.dist.location)] = (listing.dist, True)
            self._visible(listing.dist)
        for listing in listings:
            if listing.dist.kind == "conda":
                continue
            own_meta = listing.metadata_dir
            owner = conda_meta_dirs.get(os.path.normpath(own_meta)) if own_meta else None
            if owner is not None:
                # A conda package's own dist-info: the conda record owns its files.
                self._twins[owner] = listing.dist
                self._add_files(listing, override=False)
                self._by_key.setdefault(listing.dist.key, owner)
                continue
            self._add_files(listing, override=True)
            if own_meta:
                for variant in _variants(own_meta):
                    self._meta_dirs[variant] = listing.dist
            for root in listing.roots:
                for variant in _variants(root):
                    self._roots.setdefault(variant, listing.dist)
            self._visible(listing.dist)
        for meta_dir, dist in conda_meta_dirs.items():
            self._meta_dirs[meta_dir] = dist

    def _visible(self, dist: Distribution) -> None:
        if dist.key in self._exclude:
            return
        self._dists.append(dist)
        self._by_key.setdefault(dist.key, dist)

    def _add_files(self, listing: Listing, override: bool) -> None:
        dist = listing.dist
        files = self._files
        dir_owner = self._dir_owner
        for base in _variants(listing.base):
            for rel in listing.files:
                if rel.startswith((".", "/")) or "/." in rel or "//" in rel:
                    path = os.path.normpath(os.path.join(base, rel))
                else:
                    path = f"{base}/{rel}"
                metadata = is_metadata_path(path) or self._is_site_pth(path)
                if override or path not in files:
                    files[path] = (dist, metadata)
                if not metadata:
                    parent = path.rpartition("/")[0]
                    seen = dir_owner.get(parent, _MISSING)
                    if seen is _MISSING:
                        dir_owner[parent] = dist
                    elif seen is not None and seen is not dist:
                        dir_owner[parent] = None

    @staticmethod
    def _interpreter_files(env: Environment) -> set[str]:
        # pyvenv.cfg: read by every interpreter start-up in a venv, part of the interpreter.
        names = {env.executable, os.path.realpath(env.executable),
                 os.path.join(env.prefix, "pyvenv.cfg")}
        for folder in {os.path.dirname(env.executable), os.path.join(env.base_prefix, "bin")}:
            names.update(glob.glob(os.path.join(folder, "python*")))
        for folder in {os.path.join(env.base_prefix, "lib"), os.path.join(env.prefix, "lib")}:
            names.update(glob.glob(os.path.join(folder, "libpython*")))
        return {v for name in names for v in _variants(name)}

    def _environment_roots(self, env: Environment, listings: list[Listing]) -> tuple[str, ...]:
        prefixes = [p for p in (env.prefix, env.base_prefix)
                    if os.path.normpath(p) not in _SYSTEM_PREFIXES]
        with_dists = {os.path.normpath(li.base) for li in listings}
        roots = set()
        for path in list(prefixes) + list(env.stdlib):
            roots.update(_variants(path))
        for site in env.paths:
            inside = any(site == p or site.startswith(p.rstrip("/") + "/") for p in prefixes)
            if inside or os.path.normpath(site) in with_dists:
                roots.update(_variants(site))
        return tuple(sorted(r.rstrip("/") + "/" for r in roots))

    # -- queries --------------------------------------------------------------------------

    def owner(self, path: str, real: str | None = None) -> Ownership | None:
        """Who owns `path` (looked up by the tracer's resolved `real` path first)."""
        key = (path, real)
        if key in self._memo:
            return self._memo[key]
        found = None
        if real and real != path:
            found = self._lookup(real)
        if found is None:
            found = self._lookup(path)
        if found is None and not real:
            # Named through a symlink the index does not know (lib64 -> lib, a linked home).
            # A tracer's `real` is a descriptor's path, which the kernel spells with every
            # symlink resolved: looked up above, nothing is left to resolve.
            resolved = self._realpath(path)
            if resolved != path:
                found = self._lookup(resolved)
        self._memo[key] = found
        return found

    def _ownership(self, dist: Distribution, metadata: bool = False,
                   editable: bool = False) -> Ownership:
        return Ownership(dist, metadata=metadata, editable=editable,
                         excluded=dist.key in self._exclude)

    def _lookup(self, path: str) -> Ownership | None:
        hit = self._files.get(path)
        if hit is None:
            source = source_of_pyc(path)
            if source is not None:
                hit = self._files.get(source)
                path = source
        if hit is not None:
            return self._ownership(hit[0], metadata=hit[1])
        shape = is_metadata_path(path) or self._is_site_pth(path)
        if shape and self.in_environment(path):
            return self._metadata_owner(path)
        if path in self._interpreter:
            return Ownership(None, stdlib=True)
        dist = self._editable_owner(path)
        if dist is not None:
            return self._ownership(dist, metadata=shape, editable=True)
        dist = self._package_dir_owner(path)
        if dist is not None:
            return self._ownership(dist)
        if path.startswith(self._stdlib) and "-packages/" not in path:
            return Ownership(None, stdlib=True)
        return None

    def _is_site_pth(self, path: str) -> bool:
        return path.endswith(".pth") and path.rpartition("/")[0] in self._anchors

    def _metadata_owner(self, path: str) -> Ownership:
        for marker in (".dist-info", ".egg-info"):
            head, sep, _ = path.partition(marker)
            if sep:
                dist = self._meta_dirs.get(head + marker)
                return Ownership(dist, metadata=True,
                                 excluded=bool(dist and dist.key in self._exclude))
        return Ownership(None, metadata=True)

    def _editable_owner(self, path: str) -> Distribution | None:
        dist = self._roots.get(path)
        if dist is not None or path in self._anchors or path in self._stops:
            return dist
        folder = os.path.dirname(path)
        if folder not in self._folder_owner:  # many files share a folder: climb it once
            self._folder_owner[folder] = self._climb(folder)
        return self._folder_owner[folder]

    def _climb(self, folder: str) -> Distribution | None:
        # Never climb out of the environment: a project dir may hold its own .venv.
        for step in [folder, *_ancestors(folder)]:
            dist = self._roots.get(step)
            if dist is not None:
                return dist
            if step in self._anchors or step in self._stops:
                return None
        return None

    def _package_dir_owner(self, path: str) -> Distribution | None:
        if path in self._anchors or path in self._stops or path in self._dir_owner:
            return self._climb_package_dirs(path)
        folder = os.path.dirname(path)  # a file: its folder decides, climbed once per folder
        if folder not in self._folder_package:
            self._folder_package[folder] = self._climb_package_dirs(folder)
        return self._folder_package[folder]

    def _climb_package_dirs(self, folder: str) -> Distribution | None:
        candidate = None
        while folder not in ("/", ""):
            if folder in self._anchors:
                return candidate
            if folder in self._stops:
                return None
            if candidate is None and folder in self._dir_owner:
                owner = self._dir_owner[folder]
                if owner is None:
                    return None  # a directory shared by several distributions
                candidate = owner
            folder = os.path.dirname(folder)
        return None

    def in_environment(self, path: str) -> bool:
        """True when `path` lies under the prefix, base prefix or a sys.path dir of the env."""
        known = self._env_memo.get(path)
        if known is None:
            known = (path + "/").startswith(self._env_roots)
            self._env_memo[path] = known
        return known

    def distributions(self) -> list[Distribution]:
        return sorted(self._dists, key=lambda d: (d.key, d.kind, d.location))

    def get(self, name: str) -> Distribution | None:
        """The installed distribution of that name, however it is spelled."""
        return self._by_key.get(canonicalize_name(name))

    def is_excluded(self, name: str) -> bool:
        return canonicalize_name(name) in self._exclude

    def python_metadata(self, dist: Distribution) -> Distribution | None:
        """The dist-info a conda package ships (its Python-level Requires-Dist), if any."""
        return self._twins.get(dist)

    def closure(self, dists: Iterable[Distribution]) -> tuple[list[Distribution], list[str]]:
        """`dists` closed under their requirements; warnings name the ones not installed."""
        from .closure import close

        return close(self, dists)


def index_environment(env: Environment, exclude_names: Iterable[str] = ()) -> EnvIndex:
    """Index every distribution of `env` (conda records first: they own their dist-infos)."""
    listings: list[Listing] = []
    for name in ("conda", "pip"):
        listings += SCANNERS[name]().scan(env)
    return EnvIndex(env, listings, exclude_names)
