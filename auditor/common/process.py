"""The one subprocess helper: every external command flo-backpack runs goes through `run`,
every long-lived process (tracer, Dask scheduler and workers, JupyterLab) through `launch`.

Both tie the child to us with a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`, set in
the child between fork and exec), so even a SIGKILL of flo-audit or flo-run, which runs no
teardown, takes what we started with it. Jupyter kernels are started by jupyter_client's own
Popen: they get the same hook by passing `preexec_fn=parent_death(...)` to `start_kernel`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

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
            preexec_fn=parent_death(signal.SIGKILL),
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


def launch(argv: Sequence[str | os.PathLike[str]], *, die_with: int = signal.SIGKILL,
           cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
           stdout: int | IO[bytes] | None = None, stderr: int | IO[bytes] | None = None,
           what: str | None = None) -> subprocess.Popen[bytes]:
    """Start a long-lived process in its own session and return at once; it gets `die_with`
    when we die (SIGTERM for programs that stop their own children on it, a Dask nanny, a
    Jupyter server; SIGKILL otherwise). Raises `CommandError` when the program does not exist.

    The signal fires when the *thread* that called `launch` ends, not the process: call it
    from the main thread, or from a thread that lives as long as the process must (a Dask
    engine's scaling thread runs until the cluster stops, so its workers may die with it).
    """
    args = [os.fspath(a) for a in argv]
    log.debug("launch: %s", shlex.join(args))
    if threading.current_thread() is not threading.main_thread():
        log.debug("launched from thread %s: it dies when that thread ends",
                  threading.current_thread().name)
    try:
        return subprocess.Popen(args, cwd=cwd, env=dict(env) if env is not None else None,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True, preexec_fn=parent_death(die_with))
    except FileNotFoundError as exc:
        raise CommandError(f"{what or args[0]}: program not found: {args[0]}; install it or put "
                           "it on PATH", args, None) from exc


PR_SET_PDEATHSIG = 1


def parent_death(signum: int) -> Callable[[], None]:
    """A `preexec_fn` that sends the child `signum` when the thread that forked it ends.

    Runs in the forked child of a threaded parent, so it only calls the already resolved
    prctl and getppid (no import, lock or logging). A parent that died between fork and
    prctl is caught by the ppid check (the child exits instead of running orphaned). A no-op
    where prctl does not exist (not Linux).
    """
    prctl, parent = _prctl(), os.getpid()

    def set_parent_death_signal() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent is gone already: never exec
            os._exit(128 + signum)

    return set_parent_death_signal


@functools.cache
def _prctl() -> Callable[..., int] | None:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl
