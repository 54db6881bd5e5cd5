"""Questions asked of the kernel's interpreter before a recording starts."""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import process
from .errors import CommandError, RecordError


def require_module(python: str, module: str, why: str) -> None:
    """Raise `RecordError` unless `python` runs and can import `module`; `why` says what the
    module is needed for ("a kernel", "--workers")."""
    try:
        done = process.run([python, "-c", f"import {module}"], check=False, timeout=120,
                           what=f"checking {python} for {module}")
    except CommandError as exc:
        raise RecordError(f"cannot run the kernel interpreter {python}: {exc}") from exc
    if done.returncode != 0:
        raise RecordError(f"{python} has no {module}, needed for {why}; install it with: "
                          f"{python} -m pip install {module}")


def activated(env: Mapping[str, str], python: str | os.PathLike[str]) -> dict[str, str]:
    """`env` with the bin folder of `python`'s environment first on PATH, as when that
    environment is activated: `!pip install`, `!python x.py` and console scripts the notebook
    runs then come from it, not from whatever else is on PATH."""
    folder = os.path.dirname(os.path.abspath(os.fspath(python)))  # a venv's bin, unresolved
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != folder]
    return {**env, "PATH": os.pathsep.join([folder, *rest])}
