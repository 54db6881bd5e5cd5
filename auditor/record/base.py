"""One small interface for tracer backends, and the registry that finds them by name.

A backend wraps the kernel's launch command so the kernel (and everything it starts) runs
under the tracer, writing a raw record into the audit's record folder. Later, the same
backend turns that raw record into the event stream of `auditor.events`, without running
anything: outputs can be re-derived from a saved audit.
"""

from __future__ import annotations

import heapq
import operator
import shutil
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from ..common.errors import TracerUnavailable, UsageError
from ..events import Event


class Tracer(ABC):
    """Base class: subclasses set `name`/`cannot_see` and write `wrap` and `events`."""

    name: ClassVar[str]
    #: One line shown when this backend is chosen as a fallback: what it cannot see.
    cannot_see: ClassVar[str] = ""

    def __init__(self, cwd: str | None = None) -> None:
        """`cwd`: where the recorded run ran (session.json's `cwd`, read by derive), for a
        record that names paths relative to it; None when recording."""
        self.cwd = cwd
        #: The openat mode argument this tracer's filter lets through unrecorded, for the
        #: kernel side to read the import system's files and the notebook's `open` reads with
        #: and record them itself (the `opened` record); None: every open is the tracer's.
        self.quiet_key: int | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the backend can run here, else the reason it cannot."""
        return None

    @abstractmethod
    def wrap(self, argv: list[str], record_dir: Path, stem: str = "trace") -> list[str]:
        """The command that runs `argv` under this tracer, recording into `record_dir`.

        `stem` names the record file; processes traced apart from the kernel (`--workers`)
        use their own stem starting with "trace-", and `events` reads them all.
        """

    def death_signal(self, stem: str = "trace") -> int:
        """The parent-death signal of the process `wrap` returns: what it gets if flo-audit
        dies, chosen so that the traced process dies too (ptrace_run kills its tracees on
        exit; with no tracer, the kernel itself gets it)."""
        return signal.SIGKILL

    @abstractmethod
    def events(self, record_dir: Path) -> Iterator[Event]:
        """Parse the raw records in `record_dir` into events, in the order they happened."""

    def warnings(self, record_dir: Path) -> list[str]:
        """Problems the record itself reveals (a silent seccomp-bpf fallback, lost events)."""
        return []


_REGISTRY: dict[str, type[Tracer]] = {}
#: Order of preference for `--backend auto`. ptrace first: both syscall tracers see the same,
#: but strace 6.1 (Debian 12's) stops every thread and child process at every syscall despite
#: --seccomp-bpf (about 20 us a syscall, against 0.3 under ours: bench/tracer_tasks.py).
AUTO_ORDER = ("ptrace", "strace", "hooks")


def register(cls: type[Tracer]) -> type[Tracer]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_backends() -> None:
    # Imported here so that each backend module registers itself.
    from . import hooks, ptrace, strace  # noqa: F401


def get_tracer(name: str) -> type[Tracer]:
    _load_backends()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown tracer backend {name!r}; choose one of: "
                         + ", ".join(["auto", *AUTO_ORDER])) from None


def choose_tracer(name: str = "auto") -> tuple[Tracer, list[str]]:
    """The backend to use and the warnings to show (one line per fallback taken)."""
    _load_backends()
    if name != "auto":
        cls = get_tracer(name)
        reason = cls.unavailable()
        if reason:
            raise TracerUnavailable(f"backend {name!r} cannot run here: {reason}; "
                                    "try --backend auto")
        # Asked for by name, it still says what it cannot see (hooks: C libraries' files).
        return cls(), ([f"the {cls.name} backend: {cls.cannot_see}"] if cls.cannot_see else [])
    skipped: list[str] = []
    for candidate in AUTO_ORDER:
        cls = _REGISTRY[candidate]
        reason = cls.unavailable()
        if reason is None:
            warnings = []
            if skipped:  # what it cannot see, when anything: strace sees what ptrace does
                warnings.append(f"using the {cls.name} backend ({'; '.join(skipped)})"
                                + (f": {cls.cannot_see}" if cls.cannot_see else ""))
            return cls(), warnings
        skipped.append(f"{candidate}: {reason}")
    raise TracerUnavailable("no tracer backend can run here: " + "; ".join(skipped))


def record_files(record_dir: Path, suffix: str) -> list[Path]:
    """The record files of one audit: the kernel's `trace<suffix>`, then `trace-*<suffix>`."""
    record_dir = Path(record_dir)
    extra = sorted(record_dir.glob(f"trace-*{suffix}"))
    main = record_dir / f"trace{suffix}"
    return ([main] if main.is_file() else []) + extra


def merge_by_time(streams: list[Iterator[Event]]) -> Iterator[Event]:
    """One time-ordered stream from several (one per record file)."""
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=operator.attrgetter("t"))  # C, not a Python call


def which(program: str) -> str | None:
    return shutil.which(program)
