"""The ptrace backend (the default on x86_64): trace with python-ptrace.

The kernel runs under `python -m auditor.record.ptrace_run` (flo-audit's own interpreter,
which has python-ptrace), a tracer process that writes the events of `auditor.events`
straight to `trace.jsonl`, so reading the record back is just loading it. Its seccomp filter
holds in every thread and child (strace 6.1 restarts those to stop at every syscall), so a
kernel's zmq threads and a notebook's workers run at full speed between recorded syscalls.
"""

from __future__ import annotations

import functools
import os
import platform
import secrets
import sys
import tempfile
from collections.abc import Iterator
from importlib.machinery import PathFinder
from pathlib import Path

from ..common.errors import CommandError, RecordFormatError
from ..common.process import run
from ..events import Event, read_jsonl
from .base import Tracer, merge_by_time, record_files, register

RECORD_FILE = "trace.jsonl"


@register
class PtraceTracer(Tracer):
    """Trace the kernel and all its descendants with ptrace (strace's view, less cost)."""

    name = "ptrace"
    cannot_see = ""

    def __init__(self, cwd: str | None = None) -> None:
        super().__init__(cwd)
        # The mode argument that lets the kernel side's own reads for imports pass the
        # filter unstopped (it records them itself): random per audit, never a real mode.
        self.quiet_key = secrets.randbits(64) | 1 << 63

    @classmethod
    def unavailable(cls) -> str | None:
        return _probe()

    def wrap(self, argv: list[str], record_dir: Path, stem: str = "trace") -> list[str]:
        quiet = ["--quiet-key", f"{self.quiet_key:x}"] if self.quiet_key is not None else []
        return [sys.executable, "-m", "auditor.record.ptrace_run",
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
    try:
        from . import ptrace_run
    except ImportError:
        return "python-ptrace is not installed (pip install python-ptrace)"
    if platform.machine() != "x86_64":
        return f"the ptrace backend supports x86_64 only, not {platform.machine()}"
    if not _importable_elsewhere():
        return _probe_by_tracing()  # flo-backpack may be importable from this cwd only
    return ptrace_run.probe()


def _importable_elsewhere() -> bool:
    """Whether `python -m auditor...` imports this package from another cwd: a finder of
    sys.meta_path finds it (an editable install's, or the path finder over the absolute
    sys.path entries that are not the cwd)."""
    mine = os.path.realpath(Path(__file__).parents[1] / "__init__.py")
    cwd = os.path.realpath(os.getcwd())
    entries = [e for e in sys.path if os.path.isabs(e) and os.path.realpath(e) != cwd]
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec("auditor", entries if finder is PathFinder else None)
        except Exception:  # a third-party finder that cannot answer: ask the next one
            continue
        if spec is not None and spec.origin and os.path.realpath(spec.origin) == mine:
            return True
    return False


def _probe_by_tracing() -> str | None:
    """Why ptrace cannot trace here, found by tracing /bin/true from a neutral cwd, as the
    kernel will run (`-m auditor...` must import there), or None."""
    with tempfile.TemporaryDirectory(prefix="flo-ptrace-probe-") as tmp:
        argv = PtraceTracer().wrap(["/bin/true"], Path(tmp))
        try:
            done = run(argv, timeout=30, check=False, cwd=tmp, what="probing ptrace")
        except CommandError as exc:
            return str(exc)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    last = lines[-1] if lines else f"exit {done.returncode}"
    if "No module named 'auditor'" in last:
        return "the tracer cannot import flo-backpack; install it (pip install -e .)"
    return f"tracing /bin/true failed: {last}"
