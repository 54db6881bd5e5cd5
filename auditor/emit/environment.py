"""The manager's software spec: which distributions to pin, why, and their two renderings.

DESIGN.md rule 6: pin what cells used (not kernel start-up), plus `ipykernel` standing for
the kernel machinery, plus everything workers used. Rule 7: exact installed versions, closed
under `Requires-Dist`, so `--no-deps` installs work. `draft_environment` returns data;
`render_environment_yml` and `render_requirements_txt` turn it into the two files.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..roles import MANAGER, TOOL, TRACER, WORKER, Roles

if TYPE_CHECKING:
    from ..resolve import Distribution, EnvIndex, Resolution

OWN_DISTRIBUTIONS = ("flo-backpack",)
KERNEL_MACHINERY = "ipykernel"
DEFAULT_CHANNEL = "conda-forge"
USED = "used"
MACHINERY = "kernel machinery"
# Written by the `python=` line and the bare `pip` dependency; never pinned twice.
_CONDA_IMPLICIT = {"python", "pip"}
# What IPython loads to format a traceback (ultratb: stack_data and what it needs; Pygments to
# colour it), by distribution -> top-level module. In the kernel these are IPython's machinery:
# they count as used in a cell only when its source imports them by name. Dropping the rest
# loses no pin: IPython requires them (so ipykernel's closure pins them), and a library that
# uses them (rich, icecream) requires them too, so they stay pinned as "required by" it.
TRACEBACK_MACHINERY = {"stack-data": "stack_data", "asttokens": "asttokens",
                       "executing": "executing", "pure-eval": "pure_eval",
                       "pygments": "pygments"}
_IMPORT_LINE = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)",
                          re.MULTILINE)


@dataclass
class DraftPin:
    """One distribution the draft pins, and why (the pin as read back: backpack.environment.Pin)."""

    dist: Distribution
    reason: str  # "used" | "required by <name>" | "kernel machinery"
    cells: list[int] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.dist.name

    @property
    def key(self) -> str:
        return canonicalize_name(self.dist.name)

    @property
    def kind(self) -> str:
        return self.dist.kind

    @property
    def line(self) -> str:
        """The pin as written: `channel::name==version` (conda) or a pip requirement."""
        if self.dist.kind == "conda":
            channel = _channel_name(getattr(self.dist, "channel", None))
            return f"{channel}::{self.dist.name}=={self.dist.version}"
        return self.dist.requirement()

    def to_json(self) -> dict:
        return {"name": self.dist.name, "version": self.dist.version, "kind": self.dist.kind,
                "pin": self.line, "reason": self.reason, "cells": self.cells,
                "roles": self.roles, "local": bool(getattr(self.dist, "local", False))}


@dataclass
class EnvironmentSpec:
    """What `software/environment.yml` and `requirements.txt` say, as data."""

    name: str
    python: str
    pins: list[DraftPin]
    warnings: list[str] = field(default_factory=list)

    @property
    def conda_pins(self) -> list[DraftPin]:
        return sorted((p for p in self.pins if p.kind == "conda"), key=lambda p: p.key)

    @property
    def pip_pins(self) -> list[DraftPin]:
        return sorted((p for p in self.pins if p.kind != "conda"), key=lambda p: p.key)


def env_name(stem: str) -> str:
    """A conda environment name from the notebook's stem (no spaces, slashes, colons, #)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.")
    return name or "notebook"


def _channel_name(channel: str | None) -> str:
    """A channel as conda match specs name it: "conda-forge" from its URL too."""
    if not channel:
        return DEFAULT_CHANNEL
    channel = channel.rstrip("/")
    if "://" in channel:
        parts = channel.split("/")
        # https://conda.anaconda.org/conda-forge[/linux-64] -> conda-forge
        for platform in ("noarch", "linux-64", "linux-aarch64", "osx-64", "osx-arm64", "win-64"):
            if parts[-1] == platform:
                parts = parts[:-1]
        channel = parts[-1]
    return channel or DEFAULT_CHANNEL


def _requires_names(dist: Distribution) -> set[str]:
    names: set[str] = set()
    for text in getattr(dist, "requires", None) or ():
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            head = re.split(r"[\s;<>=!~\[(]", text.strip(), maxsplit=1)[0]
            if head:
                names.add(canonicalize_name(head))
            continue
        if requirement.marker is None or "extra" not in str(requirement.marker):
            names.add(canonicalize_name(requirement.name))
    return names


def _direct_url(dist: Distribution) -> str:
    direct = getattr(dist, "direct_url", None)
    if isinstance(direct, dict):
        return str(direct.get("url", "")) or str(getattr(dist, "location", ""))
    return str(direct or getattr(dist, "location", ""))


def draft_environment(resolution: Resolution, index: EnvIndex, *, python: str, notebook_stem: str,
                      roles: Roles | None = None,
                      exclude: Iterable[str] = OWN_DISTRIBUTIONS,
                      cell_sources: Mapping[int, str] | None = None) -> EnvironmentSpec:
    """Pins for the manager environment from what the run used (DESIGN.md rules 6 and 7).

    `resolution` is an `auditor.resolve.Resolution`, `index` its `EnvIndex`; `roles` tells
    manager from worker processes (without it, every process counts as the manager);
    `cell_sources` (cell index -> source) says which cells import IPython's traceback
    machinery by name (`TRACEBACK_MACHINERY`).
    """
    named = {cell: top_level_imports(source) for cell, source in (cell_sources or {}).items()}
    excluded = {canonicalize_name(n) for n in exclude}
    warnings: list[str] = []
    reasons: dict[str, str] = {}
    cells: dict[str, set[int]] = {}
    used_roles: dict[str, set[str]] = {}
    seeds: dict[str, Any] = {}
    for use in resolution.used.values():
        dist = use.dist
        ckey: str = canonicalize_name(dist.name)
        if ckey in excluded:
            continue
        in_cells = {c for c in use.cells if c is not None}
        if ckey in TRACEBACK_MACHINERY and _kernel_only(use.pids, roles):
            module = TRACEBACK_MACHINERY[ckey]
            in_cells = {c for c in in_cells if module in named.get(c, ())}
        # The --workers pool is flo-audit's, not the notebook's: it counts for the workers'
        # file only (an idle pool must not add Dask to the manager's pins).
        pid_roles = ({roles.of(pid) for pid in use.pids if not roles.from_pool(pid)}
                     if roles else {MANAGER})
        pid_roles.discard(TRACER)
        # A tool counts for the role that ran it; what it used is pinned when a cell ran it.
        if WORKER in pid_roles or (in_cells and pid_roles & {MANAGER, TOOL}):
            seeds[ckey] = _installed(index, dist)
            reasons[ckey] = USED
            cells[ckey] = in_cells
            used_roles[ckey] = pid_roles
    machinery = index.get(KERNEL_MACHINERY)
    if machinery is None:
        warnings.append(f"{KERNEL_MACHINERY} is not installed in the kernel's environment: "
                        "the pins do not include the kernel machinery; add it by hand")
    elif canonicalize_name(KERNEL_MACHINERY) not in seeds:
        seeds[canonicalize_name(KERNEL_MACHINERY)] = machinery
        reasons[canonicalize_name(KERNEL_MACHINERY)] = MACHINERY
    closure, closure_warnings = index.closure(list(seeds.values()))
    warnings.extend(closure_warnings)
    members: dict[str, Any] = {canonicalize_name(d.name): d for d in closure}
    members.update(seeds)
    _explain_requirements(seeds, members, reasons)
    pins = []
    for ckey, dist in members.items():
        if ckey in excluded or (dist.kind == "conda" and ckey in _CONDA_IMPLICIT):
            continue
        pins.append(DraftPin(dist, reasons.get(ckey, "required"), sorted(cells.get(ckey, ())),
                        sorted(used_roles.get(ckey, ()))))
        if getattr(dist, "local", False):
            warnings.append(f"{dist.name} is a local/editable install ({_direct_url(dist)}): "
                            "it will not install elsewhere; publish it or vendor it")
    pins.sort(key=lambda p: p.key)
    return EnvironmentSpec(env_name(notebook_stem), python, pins, warnings)


def _kernel_only(pids: Iterable[int], roles: Roles | None) -> bool:
    """Whether only the kernel process (or its threads) used a distribution."""
    if roles is None:
        return True
    return all(pid == roles.kernel_pid or pid in roles.threads for pid in pids)


def top_level_imports(source: str) -> set[str]:
    """The top-level modules a cell's import statements name (`import a.b, c` -> {a, c};
    `from d.e import f` -> {d}); IPython magics and shell lines are skipped, and a source
    that is not Python once they are is read line by line."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except (SyntaxError, ValueError):
        return {name.strip().split(".")[0] for match in _IMPORT_LINE.finditer(source)
                for name in match.group(1).split(",")}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def _installed(index: Any, dist: Any) -> Any:
    """The index's installed record of `dist` when it is the same version: a project's
    source-tree egg-info can own the files an editable install maps, but the dist-info
    (with direct_url.json) is what says how it was installed."""
    installed = index.get(dist.name)
    if installed is not None and installed.version == dist.version \
            and installed.kind == dist.kind:
        return installed
    return dist


def _explain_requirements(seeds: dict[str, Any], members: dict[str, Any],
                          reasons: dict[str, str]) -> None:
    """Give every closure member a "required by X" reason: X the nearest pinned requirer."""
    frontier = sorted(seeds)
    while frontier:
        following = []
        for ckey in frontier:
            for needed in sorted(_requires_names(members[ckey])):
                if needed in members and needed not in reasons:
                    reasons[needed] = f"required by {members[ckey].name}"
                    following.append(needed)
        frontier = following


def _comment(pin: DraftPin) -> str:
    if pin.reason == USED and pin.cells:
        where = "cell" if len(pin.cells) == 1 else "cells"
        return f"used in {where} {', '.join(str(c) for c in pin.cells)}"
    if pin.reason == USED and WORKER in pin.roles:
        return "used by workers"
    return pin.reason


def _yaml_scalar(text: str) -> str:
    """`text` as a plain YAML scalar when that is safe, else double-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_.\-+=<>!~:@/,]+( @ [A-Za-z0-9_.\-+=:@/%#?&~]+)?", text) \
            and not text.startswith(("-", ":", "@")) and ": " not in text and " #" not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_environment_yml(spec: EnvironmentSpec, notebook: str, date: str) -> str:
    """`software/environment.yml`: conda format, `conda env create -f` accepts it."""
    lines = [
        f"# Drafted by flo-audit from a traced run of {notebook} on {date}.",
        "# Pins are the exact versions the run used, closed under their requirements;",
        "# which cells used what is in audit/summary.json.",
        f"name: {spec.name}",
        "channels:",
        f"  - {DEFAULT_CHANNEL}",
        "dependencies:",
        f"  - python={spec.python}",
    ]
    for pin in spec.conda_pins:
        lines.append(f"  - {_yaml_scalar(pin.line)}  # {_comment(pin)}")
    lines.append("  - pip")
    pip_pins = spec.pip_pins
    if pip_pins:
        lines.append("  - pip:")
        for pin in pip_pins:
            lines.append(f"      - {_yaml_scalar(pin.line)}  # {_comment(pin)}")
    return "\n".join(lines) + "\n"


def render_requirements_txt(spec: EnvironmentSpec, notebook: str, date: str) -> str:
    """`software/requirements.txt`: the same pip pins, one per line, for pip/Binder users."""
    lines = [
        f"# Drafted by flo-audit from a traced run of {notebook} on {date}.",
        f"# Python {spec.python}. Install with: pip install --no-deps -r requirements.txt",
    ]
    if spec.conda_pins:
        lines.append(f"# {len(spec.conda_pins)} conda packages are pinned in environment.yml only.")
    for pin in spec.pip_pins:
        lines.append(f"{pin.line}  # {_comment(pin)}")
    return "\n".join(lines) + "\n"
