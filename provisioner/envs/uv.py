"""Build a venv with uv: the spec's pins with --no-deps, then the role's bootstrap packages
resolved around them (pins as constraints, so no pinned version moves), then `uv pip check`.

Venvs are made `--relocatable` (entry-point scripts find their python relative to themselves,
pyvenv.cfg names only the base interpreter), which is what lets the cache build in a temporary
folder and rename it into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.utils import canonicalize_name

from auditor.backpack.environment import Pin
from auditor.common.errors import CommandError, FloError
from auditor.common.process import run

from .base import BuildOutcome, EnvBuilder, EnvBuildError, EnvRequest, register

# Conda packages whose PyPI distribution has another name.
CONDA_TO_PYPI = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "py-xgboost": "xgboost",
    "py-lightgbm": "lightgbm",
    "matplotlib-base": "matplotlib",
    "pytables": "tables",
    "msgpack-python": "msgpack",
    "python-graphviz": "graphviz",
    "python-kaleido": "kaleido",
    "python-flatbuffers": "flatbuffers",
    "pyqt": "PyQt5",
    "tensorflow-base": "tensorflow",
    "dask-core": "dask",
    "numpy-base": "numpy",
    "pillow-simd": "pillow",
    "gdal": "GDAL",
    "libgdal": "GDAL",
    "arrow-cpp": "pyarrow",
    "importlib_metadata": "importlib-metadata",
}

# Conda packages that are the interpreter's own runtime or C libraries: on PyPI they come with
# the interpreter or inside wheels, so they are skipped (and said so), not installed.
CONDA_RUNTIME = frozenset(canonicalize_name(n) for n in (
    "python_abi", "openssl", "ca-certificates", "tzdata", "ncurses", "readline", "sqlite", "tk",
    "xz", "zlib", "bzip2", "libffi", "libzlib", "libgcc", "libgcc-ng", "libstdcxx",
    "libstdcxx-ng", "libgomp", "_libgcc_mutex", "_openmp_mutex", "ld_impl_linux-64", "libuuid",
    "libnsl", "libsqlite", "liblzma", "libexpat", "libxcrypt", "libmpdec", "libblas",
    "libcblas", "liblapack", "libopenblas", "libgfortran", "libgfortran5", "libgfortran-ng",
    "icu", "krb5", "libedit", "libiconv", "libxml2", "libuv", "libsodium", "zeromq",
    "pip",
))


def uv_command() -> list[str]:
    """argv prefix that runs uv: the `uv` package's binary, else uv on PATH."""
    try:
        import uv  # the PyPI package ships the binary and a finder for it
        return [uv.find_uv_bin()]
    except (ImportError, FileNotFoundError):
        pass
    if found := shutil.which("uv"):
        return [found]
    raise FloError(f"uv is needed to build environments; install it: {sys.executable} -m pip "
                   "install uv")


# Conda packages that flo-run's engines do not use and PyPI does not have: skipped, said so.
CONDA_NOT_NEEDED = {
    "ndcctools": "TaskVine's package (conda-forge only); flo-run runs workers with Dask",
}


def skip_note(pin: Pin) -> str:
    """Why a pin that `requirement_line` turns into None is not installed."""
    reason = CONDA_NOT_NEEDED.get(canonicalize_name(pin.name), "not needed with pip")
    return f"skipped conda package {pin.name}: {reason}"


def requirement_line(pin: Pin) -> str | None:
    """A pip requirement for `pin`, or None for a conda runtime package that pip does not need."""
    name = pin.name
    if pin.source == "conda":
        if canonicalize_name(name) in CONDA_RUNTIME or canonicalize_name(name) in \
                CONDA_NOT_NEEDED:
            return None
        name = CONDA_TO_PYPI.get(name, CONDA_TO_PYPI.get(canonicalize_name(name), name))
    if pin.version is None:
        return name
    if "://" in pin.version or pin.version.startswith("file:"):
        return f"{name} @ {pin.version}"
    return f"{name}=={pin.version}"


UvRun = Callable[[list[str], str], str]  # (uv arguments, what it is doing) -> stdout


def uv_runner(cwd: Path) -> UvRun:
    """Run uv through the one subprocess helper, from `cwd` (outside any project, so uv picks
    up no pyproject.toml or uv.toml around it), without an activated env leaking in."""
    uv = uv_command()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX")}
    env["UV_NO_PROGRESS"] = "1"

    def uv_run(args: list[str], what: str) -> str:
        return run([*uv, *args], cwd=cwd, env=env, timeout=1800, what=what).stdout

    return uv_run


def requirement_lines(pins: Iterable[Pin], notes: list[str]) -> dict[str, str]:
    """{pip requirement line: how the spec names it, for errors} of `pins`; what pip does
    not need (a conda runtime package, ndcctools) is skipped with a line in `notes`."""
    lines: dict[str, str] = {}
    for pin in pins:
        line = requirement_line(pin)
        if line is None:
            notes.append(skip_note(pin))
            continue
        pypi_name = re.split(r"[=@ ]", line)[0]
        if pin.source == "conda":
            lines[line] = f"conda pin {pin.name!r}" + (
                f" (as PyPI {pypi_name!r})" if pypi_name != pin.name else "")
        else:
            lines[line] = pin.name
    return lines


Install = Callable[[list[str], str], object]  # (pip install arguments, what it is doing)


def install_pins(install: Install, target: Path, lines: dict[str, str],
                 also: Iterable[str] = (), what_for: str = "") -> None:
    """The pins with --no-deps, then again as requirements constrained to their own versions,
    with `also` (the bootstrap packages): dependencies a spec left out are filled in, and no
    pinned version moves. `install` runs `pip install ARGS` (uv's or pip's)."""
    also = list(also)
    if lines:
        try:
            install(["--no-deps", *lines], "installing the pinned packages")
        except CommandError as exc:
            raise EnvBuildError(_explain(exc, lines)) from None
    if not (lines or also):
        return
    constraints = target / "flo-constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in lines if "==" in line or " @ "
                                   in line), encoding="utf-8")
    adding = ", ".join(also) or "the dependencies of the pins"
    try:
        install(["-c", str(constraints), *lines, *also], f"adding {adding}")
    except CommandError as exc:
        raise EnvBuildError(f"cannot add {adding}{what_for} without changing a pinned "
                            f"version: {_cause(exc)}; relax the conflicting pin in the "
                            "spec") from None


def checked_listing(uv_run: UvRun, python: Path, kind: str = "") -> dict[str, str]:
    """`uv pip check` of the environment of `python`, then {distribution: version}."""
    try:
        uv_run(["pip", "check", "--python", str(python)], "checking the environment")
    except CommandError as exc:
        raise EnvBuildError(f"the built {kind}environment is inconsistent (uv pip check): "
                            f"{_cause(exc)}; fix the pins in the spec") from None
    listing = uv_run(["pip", "list", "--python", str(python), "--format", "json"],
                     "listing the environment")
    return {d["name"]: d["version"] for d in json.loads(listing or "[]")}


@register
class UvBuilder(EnvBuilder):
    name = "uv"

    def build(self, request: EnvRequest, target: Path) -> BuildOutcome:
        python = target / "bin" / "python"
        uv_run = uv_runner(target.parent)
        notes: list[str] = []
        lines = requirement_lines(request.pins, notes)
        uv_run(["venv", "--relocatable", "--python", request.interpreter.executable,
                "--no-config", "--quiet", str(target)], "creating the venv")
        install_pins(lambda args, what: uv_run(["pip", "install", "--python", str(python),
                                               *args], what),
                     target, lines, request.bootstrap,
                     f" for the {'+'.join(request.roles)} environment")
        return BuildOutcome(checked_listing(uv_run, python), notes)


def _cause(exc: CommandError) -> str:
    lines = [ln.strip() for ln in (exc.stderr or exc.stdout).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("Using Python")]
    return " ".join(useful[-3:]) or str(exc)


def _explain(exc: CommandError, lines: dict[str, str]) -> str:
    """Name the pins uv could not install, from its error text."""
    text = (exc.stderr or "") + (exc.stdout or "")
    bad = [label for line, label in lines.items()
           if re.search(rf"(?<![\w.-]){re.escape(canonicalize_name(re.split('[=@ ]', line)[0]))}"
                        rf"(?![\w.-])", canonicalize_name_text(text))]
    what = ", ".join(bad) if bad else "some pins"
    return (f"cannot install {what} from PyPI: {_cause(exc)}; fix or remove "
            f"{'this pin' if len(bad) == 1 else 'these pins'} in the spec")


def canonicalize_name_text(text: str) -> str:
    """Lower-case with `_`/`.` runs as `-`, so names in uv's messages compare canonically."""
    return re.sub(r"[-_.]+", "-", text.lower())
