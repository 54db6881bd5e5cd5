"""The ptrace backend (the default on x86_64): trace with ptrace(2), through ctypes.

The kernel runs under `auditor.record.ptrace_run` (flo-audit's own interpreter, started with
-S and this package's folder on its path: the tracer needs nothing but the standard library,
and skipping site-packages' start-up is most of its own start), a tracer process that writes
the events of `auditor.events` straight to `trace.jsonl`, so reading the record back is just
loading it. Its seccomp filter holds in every thread and child (strace 6.1 restarts those to
stop at every syscall), so a kernel's zmq threads and a notebook's workers run at full speed
between recorded syscalls.
"""

from __future__ import annotations

import functools
import platform
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from ..common.errors import RecordFormatError
from ..events import Event, read_jsonl
from .base import Tracer, merge_by_time, record_files, register

RECORD_FILE = "trace.jsonl"
# The tracer process's program: its first argument is the folder holding this package, put
# after the standard library on its path (the tracer runs from any cwd, site or no site).
_TRACER = ("import sys; sys.path.append(sys.argv.pop(1)); "
           "from auditor.record.ptrace_run import main; sys.exit(main())")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@register
class PtraceTracer(Tracer):
    """Trace the kernel and all its descendants with ptrace (strace's view, less cost)."""

    name = "ptrace"
    cannot_see = ""

    def __init__(self, cwd: str | None = None) -> None:
        super().__init__(cwd)
        # The mode argument that lets the kernel side's own reads (imports, the notebook's
        # open) pass the filter unstopped (it records them itself): random per audit, never a
        # real mode.
        self.quiet_key = secrets.randbits(64) | 1 << 63

    @classmethod
    def unavailable(cls) -> str | None:
        return _probe()

    def wrap(self, argv: list[str], record_dir: Path, stem: str = "trace") -> list[str]:
        quiet = ["--quiet-key", f"{self.quiet_key:x}"] if self.quiet_key is not None else []
        return [sys.executable, "-S", "-c", _TRACER, _PACKAGE_ROOT,
                "-o", str(Path(record_dir) / f"{stem}.jsonl"), *quiet, "--", *argv]

    def events(self, record_dir: Path) -> Iterator[Event]:
        path = Path(record_dir) / RECORD_FILE
        if not path.is_file():
            raise RecordFormatError(f"{path} is missing: this audit was not recorded with the "
                                    "ptrace backend, or the run did not start; re-run flo-audit")
        return merge_by_time([read_jsonl(str(p)) for p in record_files(Path(record_dir),
                                                                           ".jsonl")])


@functools.cache
def _probe() -> str | None:
    """Why ptrace cannot trace here (checked once, in this process), or None."""
    from . import ptrace_run

    if platform.machine() != "x86_64":
        return f"the ptrace backend supports x86_64 only, not {platform.machine()}"
    return ptrace_run.probe()


