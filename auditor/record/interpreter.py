"""Questions asked of the kernel's interpreter before a recording starts."""

from __future__ import annotations

from .. import process
from ..errors import CommandError, RecordError


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
