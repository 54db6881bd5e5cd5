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


class SpecError(UsageError):
    """A backpack's spec file breaks its schema. The fields are the problem itself, so a
    validator lists them without reading the message back: `file`, `key` (dotted, "" for
    the file as a whole), `expected` (what the schema wants, as a phrase) and `found` (what
    was there, when worth showing). `entry` labels a data.yml entry the key belongs to.
    The message is `file: [entry E: ][key 'k': ]expected[, got found]`."""

    def __init__(self, file: object, key: str = "", expected: str = "",
                 found: str | None = None, *, entry: str = "") -> None:
        self.file = str(file)
        self.key = key
        self.expected = expected
        self.found = found
        self.entry = entry
        super().__init__(f"{self.file}: {self.detail}")

    @property
    def expectation(self) -> str:
        """What was expected and, when known, what was found: the message after the key."""
        return self.expected + (f", got {self.found}" if self.found is not None else "")

    @property
    def detail(self) -> str:
        """The message after the file name."""
        where = f"entry {self.entry}: " if self.entry else ""
        key = f"key {self.key!r}: " if self.key else ""
        return f"{where}{key}{self.expectation}"


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
