"""The one subprocess helper: every external command flo-backpack runs goes through `run`."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import CommandError

log = logging.getLogger("flo.process")


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(argv: Sequence[str | os.PathLike[str]], *, timeout: float | None = 600,
        check: bool = True, cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None, input: str | None = None,
        what: str | None = None) -> Completed:
    """Run argv to completion, capturing both streams without deadlock.

    Raises `CommandError` (with the captured output) on a non-zero exit when `check`, on a
    timeout (the process group is killed first) and when the program does not exist.
    `what` names the step in the error message ("building the worker environment").
    """
    args = [os.fspath(a) for a in argv]
    label = what or args[0]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.Popen(
            args, cwd=cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            errors="replace", start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(f"{label}: program not found: {args[0]}; install it or put it on PATH",
                           args, None) from exc
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise CommandError(f"{label}: timed out after {timeout:g} s: {shlex.join(args)}",
                           args, None, out, err) from None
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    if check and proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-1:] or [""]
        raise CommandError(
            f"{label} failed (exit {proc.returncode}): {shlex.join(args)}: {tail[0]}",
            args, proc.returncode, out, err)
    return Completed(args, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        proc.kill()
