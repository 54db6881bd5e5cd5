"""Build a conda environment with micromamba, mamba or conda: one solve of `python=`, the conda
pins and the role's unpinned bootstrap packages, then the pip pins with uv (--no-deps, missing
dependencies filled in around them), then `uv pip check`.

All three tools take the same `create --yes --prefix P [--override-channels -c CH] SPECS`.
A conda prefix is not relocatable (its path is written into its files), so this builder says
`relocatable = False` and the cache builds it at its final path. The interpreter comes from the
solve, so planning needs no matching interpreter on the machine (`requested_interpreter`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sysconfig
from pathlib import Path

from packaging.utils import canonicalize_name

from auditor.backpack.environment import EnvSpec, Pin
from auditor.common.errors import CommandError
from auditor.common.process import run

from .base import BuildOutcome, EnvBuilder, EnvBuildError, EnvRequest, register
from .interpreters import Interpreter, probe
from .uv import (
    _cause,
    canonicalize_name_text,
    checked_listing,
    install_pins,
    requirement_line,
    uv_runner,
)

# Looked up on PATH in this order; $MAMBA_EXE / $CONDA_EXE (set by the tools' shell hooks,
# which may keep the binary off PATH) after them.
TOOLS = ("micromamba", "mamba", "conda")
BUILDERS = ("auto", "uv", "pip", "conda")


class NoCondaTool(EnvBuildError):
    """The conda builder was asked for but no conda-family tool is installed."""


def find_conda_tool() -> str | None:
    """Path of micromamba, mamba or conda (first found), or None."""
    for name in TOOLS:
        if found := shutil.which(name):
            return found
    for var in ("MAMBA_EXE", "CONDA_EXE"):
        path = os.environ.get(var)
        if path and os.access(path, os.X_OK):
            return path
    return None


def has_conda_pins(spec: EnvSpec) -> bool:
    """Whether the spec asks for conda packages (besides python and pip, which every env has)."""
    return any(pin.source == "conda" and pin.key not in ("python", "pip")
               for pin in spec.pins.values())


def choose_builder(asked: str, spec: EnvSpec) -> str:
    """`auto`: conda when the spec has conda pins and a conda-family tool is installed, else
    uv. Asking for conda without a tool is an error, raised before any build."""
    if asked not in BUILDERS:
        raise EnvBuildError(f"unknown builder {asked!r}; use one of {', '.join(BUILDERS)}")
    if asked == "auto":
        return "conda" if has_conda_pins(spec) and find_conda_tool() else "uv"
    if asked == "conda" and find_conda_tool() is None:
        raise NoCondaTool("--builder conda: no micromamba, mamba or conda found on PATH; "
                          "install one of them or use --builder uv")
    return asked


def requested_interpreter(version: str | None) -> Interpreter:
    """The interpreter a conda env will bring, as far as it is known before the solve: the
    `python=` version asked for, on this platform. It keys the cache like a probed one."""
    return Interpreter(executable=f"conda python={version or '*'}", version=version or "",
                       implementation="cpython", platform=sysconfig.get_platform())


def conda_spec(pin: Pin) -> str:
    """A conda match spec for `pin`: `[channel::]name[==version]`."""
    name = f"{pin.channel}::{pin.name}" if pin.channel else pin.name
    return f"{name}=={pin.version}" if pin.version else name


@register
class CondaBuilder(EnvBuilder):
    name = "conda"
    relocatable = False

    def build(self, request: EnvRequest, target: Path) -> BuildOutcome:
        tool = find_conda_tool()
        if tool is None:
            raise NoCondaTool("no micromamba, mamba or conda found on PATH; install one of "
                              "them or use --builder uv")
        notes = [f"built with {Path(tool).name} ({tool})"]
        pinned = {pin.key for pin in request.pins}
        labels: dict[str, str] = {}  # canonical name -> how the spec says it, for errors
        specs: list[str] = []
        if request.spec.python:
            specs.append(f"python={request.spec.python}")
            labels["python"] = f"python={request.spec.python}"
        for pin in request.pins:
            if pin.source == "conda":
                specs.append(conda_spec(pin))
                labels[pin.key] = f"{pin.name}=={pin.version}" if pin.version else pin.name
        # Unpinned, in the same solve, so the solver fits them around the pins.
        role = "+".join(request.roles)
        for name in request.bootstrap:
            if canonicalize_name(name) not in pinned:
                specs.append(name)
                labels[canonicalize_name(name)] = f"{name} (needed by the {role} role)"
        channels = [arg for ch in request.spec.channels for arg in ("-c", ch)]
        argv = [tool, "create", "--yes", "--prefix", str(target),
                *(["--override-channels", *channels] if channels else []), *specs]
        try:
            run_tool(argv)
        except CommandError as exc:
            raise EnvBuildError(_explain_solve(exc, labels, Path(tool).name,
                                               request.spec.channels)) from None
        python = target / "bin" / "python"
        interp = probe(python)
        if interp is None:
            raise EnvBuildError(f"{Path(tool).name} made {target} without a working "
                                "bin/python; add python=X.Y to the spec's dependencies")
        pip_lines = {line: pin.name for pin in request.pins
                     if pin.source == "pip" and (line := requirement_line(pin))}
        pip_names = _install_pip_pins(python, target, pip_lines)
        installed = conda_installed(target)
        conda_keys = {canonicalize_name(n): n for n in installed}
        for name, version in pip_names.items():
            installed.pop(conda_keys.get(canonicalize_name(name), ""), None)
            installed[name] = version
        return BuildOutcome(installed, notes, interp.version)


def run_tool(argv: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CONDA_PREFIX", "VIRTUAL_ENV")}
    run(argv, env=env, timeout=3600, what="solving and creating the conda environment")


def _install_pip_pins(python: Path, target: Path, lines: dict[str, str]) -> dict[str, str]:
    """The spec's pip pins into the conda env with uv (dependencies the solve did not bring
    filled in around them), then a check; returns `uv pip list`."""
    uv_run = uv_runner(target.parent)
    install_pins(lambda args, what: uv_run(["pip", "install", "--python", str(python), *args],
                                           what),
                 target, lines, what_for=" to the conda environment")
    return checked_listing(uv_run, python, "conda ")


def conda_installed(prefix: Path) -> dict[str, str]:
    """{name: version} of the conda packages in `prefix`, from its conda-meta/*.json records."""
    found = {}
    for record in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            meta = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("name") and meta.get("version"):
            found[meta["name"]] = str(meta["version"])
    return found


# How the tools name a spec they cannot provide: micromamba 2 ("└─ numpy ==9.9 does not
# exist"), libsolv ("nothing provides requested numpy ==9.9"), conda ("  - numpy==9.9" under
# PackagesNotFoundError), and a dependency's culprit ("... needed by numpy-1.0-0").
_CULPRITS = (
    re.compile(r"nothing provides (?:requested )?([\w.-]+)"),
    re.compile(r"^[\s│├└─-]*([\w.-]+)(?:[\s=<>!~*]|$).*(?:does not exist|not available|"
               r"cannot be installed|is not installable)"),
    re.compile(r"needed by ([\w.-]+?)-\d"),
)


def _explain_solve(exc: CommandError, labels: dict[str, str], tool: str,
                   channels: tuple[str, ...]) -> str:
    """One line naming the pins the solve could not provide, from the tool's error text."""
    text = (exc.stderr or "") + "\n" + (exc.stdout or "")
    named: list[str] = []
    listing = False  # inside conda's "not available from current channels:" list
    for line in text.splitlines():
        candidates = [m.group(1) for pattern in _CULPRITS if (m := pattern.search(line))]
        if listing and (m := re.match(r"^\s+-\s+(?:[\w.-]+::)?([\w.-]+)", line)):
            candidates.append(m.group(1))
        listing = listing or "PackagesNotFoundError" in line or "not available from" in line
        for name in candidates:
            key = canonicalize_name_text(name)
            if key in labels and labels[key] not in named:
                named.append(labels[key])
    where = f" in channel(s) {', '.join(channels)}" if channels else ""
    if not named:
        return (f"{tool} could not create the conda environment{where}: {_cause(exc)}; check "
                "the spec's conda pins and channels, or use --builder uv")
    what = ", ".join(named)
    return (f"{tool} cannot provide {what}{where}: {_cause(exc)}; fix or remove "
            f"{'this pin' if len(named) == 1 else 'these pins'} in the spec, or use --builder uv")
