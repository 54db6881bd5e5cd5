"""The one root exception of flo-backpack and its structured subclasses.

Library code raises these; the CLIs catch `FloError` once, print `str(error)` as one line
and exit with `error.exit_code`. No `sys.exit` anywhere else.
"""

from __future__ import annotations


class FloError(Exception):
    """Root of every error flo-backpack raises on purpose. The message says what to do."""

    exit_code = 2


class UsageError(FloError):
    """Bad input from the user: a missing file, an invalid notebook, a bad option."""


class CommandError(FloError):
    """An external command failed; carries its argv, exit status and captured output."""

    def __init__(self, message: str, argv: list[str], returncode: int | None,
                 stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class TracerUnavailable(FloError):
    """A tracer backend cannot run on this machine (binary missing, ptrace forbidden)."""


class RecordError(FloError):
    """The traced run could not be started or recorded (kernel missing, kernel died at start)."""


class RecordFormatError(FloError):
    """A saved audit record is missing or malformed, so outputs cannot be re-derived from it."""


class Interrupted(FloError):
    """The user pressed Ctrl-C; everything started was stopped and nothing was written."""

    exit_code = 130
