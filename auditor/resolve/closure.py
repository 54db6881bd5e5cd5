"""Close a set of distributions under their requirements (DESIGN.md rule 7).

Pins must install with `--no-deps` and still be complete, so everything the used distributions
require on this platform is pinned too: Requires-Dist with markers evaluated against the kernel
interpreter's marker environment, `extra` set to each extra the requirer asked for. conda
packages follow their "depends" and, through the dist-info they ship, their Requires-Dist.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion

from .base import Distribution

if TYPE_CHECKING:
    from .index import EnvIndex


def _applies(req: Requirement, markers: dict[str, str], extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    for extra in ("", *sorted(extras)):
        try:
            if req.marker.evaluate({**markers, "extra": extra}):
                return True
        except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
            return False
    return False


def _conda_name(spec: str) -> str:
    """ "numpy >=1.21,<2" / "python_abi 3.11.* *_cp311" -> the package name."""
    return spec.split()[0].split("[")[0] if spec.strip() else ""


def close(index: EnvIndex, dists: Iterable[Distribution]) -> tuple[list[Distribution], list[str]]:
    """`dists` plus everything they require, transitively; warnings for what is missing."""
    markers = index.env.markers
    extras: dict[Distribution, frozenset[str]] = {}
    warnings: list[str] = []
    todo: list[tuple[Distribution, frozenset[str]]] = [(d, frozenset()) for d in dists]
    while todo:
        dist, wanted = todo.pop()
        have = extras.get(dist)
        if have is not None and wanted <= have:
            continue
        extras[dist] = wanted | (have or frozenset())
        for needed, needed_extras in _requirements(index, dist, markers, extras[dist], warnings):
            todo.append((needed, needed_extras))
    return sorted(extras, key=lambda d: (d.key, d.kind)), sorted(set(warnings))


def _requirements(index: EnvIndex, dist: Distribution, markers: dict[str, str],
                  extras: frozenset[str], warnings: list[str]
                  ) -> Iterable[tuple[Distribution, frozenset[str]]]:
    lines = dist.requires
    if dist.kind == "conda":
        for spec in dist.requires:
            name = _conda_name(spec)
            if not name or name.startswith("__"):  # virtual packages: __glibc, __cuda
                continue
            found = index.get(name)
            if found is None:
                warnings.append(f"{dist.name} {dist.version} depends on {spec!r}, "
                                "which is not installed")
            elif found != dist:
                yield found, frozenset()
        twin = index.python_metadata(dist)
        lines = twin.requires if twin else ()
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            warnings.append(f"{dist.name} {dist.version}: unreadable requirement {line!r}")
            continue
        if not _applies(req, markers, extras):
            continue
        found = index.get(req.name)
        if found is None:
            if not index.is_excluded(req.name):
                warnings.append(f"{dist.name} {dist.version} requires {str(req)!r}, "
                                "which is not installed")
            continue
        if req.specifier and not _satisfies(req, found.version):
            warnings.append(f"{dist.name} {dist.version} requires {str(req)!r}, "
                            f"but {found.name} {found.version} is installed")
        if found != dist:
            yield found, frozenset(req.extras)


def _satisfies(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(version, prereleases=True)
    except InvalidVersion:
        return True  # a conda version string PEP 440 cannot read: nothing to say
