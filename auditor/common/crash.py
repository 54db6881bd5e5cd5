"""The last resort of both CLIs: an exception nobody raised on purpose (not a `FloError`) becomes
one line on stderr, and its traceback goes to a log file whose path that line names.

Logs go where the XDG base-directory spec puts state worth keeping but not worth backing up:
`$XDG_STATE_HOME/flo-backpack/crashes/` (an absolute XDG_STATE_HOME only, as the spec asks),
else `~/.local/state/flo-backpack/crashes/`; when that cannot be written (a read-only home), the
temporary folder's `flo-backpack-crashes/`. One file per crash, named by program, time and pid.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__

#: The exit status of an internal error (bad input stays 2, as each FloError says).
EXIT_CODE = 1


#: The exit status after the reader of our output went away (`flo-audit diff A B | head`):
#: what a shell reports for a program ended by SIGPIPE.
BROKEN_PIPE = 128 + 13


def reader_gone() -> int:
    """stdout's reader closed the pipe: not an error of ours, nothing to print. Points stdout
    at /dev/null so the interpreter's own flush at exit does not complain again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return BROKEN_PIPE


def last_resort(prog: str, error: Exception, argv: Sequence[str], console: Any) -> int:
    """What both CLIs do with an exception nobody raised on purpose: quiet when the reader of
    our output went away (`reader_gone`), else one line on `console` (a rich Console on stderr)
    naming the crash log; returns the exit status."""
    if isinstance(error, BrokenPipeError):
        return reader_gone()
    console.print(internal_error(prog, error, argv), markup=False, highlight=False,
                  soft_wrap=True)
    return EXIT_CODE


def crash_dirs() -> list[Path]:
    """Where a crash log may go, in order of preference."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    state = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return [state / "flo-backpack" / "crashes",
            Path(tempfile.gettempdir()) / "flo-backpack-crashes"]


def internal_error(prog: str, error: BaseException, argv: Sequence[str]) -> str:
    """Write `error`'s traceback to a new crash log; the one line to print about it."""
    what = " ".join(str(error).split())
    if len(what) > 300:
        what = what[:297] + "..."
    head = (f"{prog}: internal error{_where(error)}: {type(error).__name__}"
            + (f": {what}" if what else ""))
    log = _write(prog, error, argv)
    if log is None:
        return f"{head}; its traceback could not be saved (no writable state folder); " \
               "please report it with the command you ran"
    return f"{head}; the traceback is in {log}; please report it"


def _where(error: BaseException) -> str:
    """' in auditor/diff.py:117 (_cells_of)': the innermost frame of our own code, the place a
    maintainer looks first (a library's frame only when none of ours is on the stack)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = Path(__file__).resolve().parents[1]
    for frame in reversed(frames):
        path = Path(frame.filename)
        if path.is_relative_to(ours) and path.parts[len(ours.parts)] in _PACKAGES:
            return f" in {path.relative_to(ours)}:{frame.lineno} ({frame.name})"
    return f" in {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


_PACKAGES = ("auditor", "provisioner", "kernels")


def _write(prog: str, error: BaseException, argv: Sequence[str]) -> Path | None:
    text = "".join([
        f"command: {shlex.join([prog, *argv])}\n",
        f"cwd: {_cwd()}\n",
        f"flo-backpack {__version__}, Python {platform.python_version()} "
        f"({sys.executable}), {platform.platform()}\n",
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n\n",
        *traceback.format_exception(type(error), error, error.__traceback__),
    ])
    name = f"{prog}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in crash_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
        except OSError:
            continue
        return path
    return None


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError as exc:  # the folder was removed under us
        return f"(unknown: {exc.strerror})"
