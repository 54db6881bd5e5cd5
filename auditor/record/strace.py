"""The strace tracer (where ptrace is not usable): the strace binary with a seccomp-bpf
filter, writing raw text.

Only the syscalls that show a use are traced, so with --seccomp-bpf every other syscall runs
at full speed: opens (files read, written, directories listed), execs, process and thread
creation, cwd changes (to make relative paths absolute), renames (a file written in place) and
connects. No stat family: a stat is not a use, and there are far too many. exit/exit_group are
not needed either: strace prints `+++ exited with N +++` / `+++ killed by SIG +++` anyway.

When flo-audit dies, strace dies with it (its parent-death signal), and its tracees must too:
strace only detaches them. A strace with --kill-on-exit (6.2+) kills them all. Older ones: the
kernel sets its own parent-death signal (kernels/flo_kernel.py), and a --workers process runs
under `-I2` so that strace, on its SIGHUP, passes the signal to it before exiting (the default
with -o, `-I3`, blocks fatal signals until the tracees are gone). SIGHUP, because Dask handles
SIGTERM by closing gracefully, which hangs once its tracer is gone (the seccomp filter then
fails every recorded syscall). The kernel's strace keeps `-I3`: teardown SIGTERMs tracees
while strace records how they end.
"""

from __future__ import annotations

import functools
import itertools
import re
import signal
from collections.abc import Iterator
from pathlib import Path

from ..common.errors import CommandError, RecordFormatError
from ..common.process import run
from ..events import Event
from .base import Tracer, merge_by_time, record_files, register, which
from .strace_parse import StraceParser

TRACE_FILE = "trace.strace"
STDERR_FILE = "kernel.stderr"

SYSCALLS = (
    "open", "openat", "openat2", "creat",
    "execve", "execveat",
    "fork", "vfork", "clone", "clone3",
    "chdir", "fchdir",
    "rename", "renameat", "renameat2",
    "connect", "accept", "accept4",
)
#: `-y` plus sockets' protocol and addresses: a connect on a `UDP:` socket sends nothing, and
#: an accept's result names the local port the run served (`TCP:[ip:port->peer]`).
DECODE_FDS = "--decode-fds=path,socket"
# PATH_MAX: a path argument is never cut short.
STRING_LIMIT = 4096

# What strace 6.x says on stderr when it runs without the filter (every syscall then stops).
_SECCOMP_FALLBACK = re.compile(
    r"seccomp[^\n]*?(?:not enabled|cannot be used|unavailable|disabled|no syscalls)[^\n]*",
    re.IGNORECASE)


@register
class StraceTracer(Tracer):
    """`strace -f --seccomp-bpf -y` around the kernel; its text trace is the raw record."""

    name = "strace"
    cannot_see = ""

    def __init__(self, cwd: str | None = None) -> None:
        super().__init__(cwd)
        #: The parser of the last `events` call: `.skipped` counts lines it could not read.
        self.parser: StraceParser | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        return _probe()

    def wrap(self, argv: list[str], record_dir: Path, stem: str = "trace") -> list[str]:
        strace = which("strace") or "strace"
        dying = (["--kill-on-exit"] if _kills_on_exit(strace)
                 else [] if stem == "trace" else ["-I2"])
        return [strace, "-f", "--seccomp-bpf", *dying, "-ttt", "-q", DECODE_FDS,
                "-s", str(STRING_LIMIT), "-e", "trace=" + ",".join(SYSCALLS),
                "-o", str(Path(record_dir) / f"{stem}.strace"), "--", *argv]

    def death_signal(self, stem: str = "trace") -> int:
        if stem == "trace" or _kills_on_exit(which("strace") or "strace"):
            return signal.SIGKILL
        return signal.SIGHUP  # under -I2: strace passes it to its tracee, then exits

    def events(self, record_dir: Path) -> Iterator[Event]:
        """The kernel's trace and every `trace-*.strace` (workers), merged by time."""
        trace = Path(record_dir) / TRACE_FILE
        if not trace.is_file():
            raise RecordFormatError(f"{trace} is missing: the audit was not recorded with the "
                                    "strace backend, or the record folder is incomplete")
        streams, self.parser = [], None
        for path in record_files(Path(record_dir), ".strace"):
            parser = StraceParser(self.cwd)
            self.parser = self.parser or parser  # the kernel's, for `.skipped`
            streams.append(self._stream(path, parser))
        return merge_by_time(streams)

    @staticmethod
    def _stream(trace: Path, parser: StraceParser) -> Iterator[Event]:
        # strace escapes every non-ASCII byte, so decoding cannot fail on its own output.
        with open(trace, encoding="utf-8", errors="surrogateescape") as lines:
            yield from parser.parse(lines)

    def warnings(self, record_dir: Path) -> list[str]:
        message = _seccomp_message(Path(record_dir))
        if message is None:
            return []
        return [f"strace ran without its seccomp-bpf filter ({message}): the trace is complete "
                "but the run was slower than it needed to be"]


def _seccomp_message(record_dir: Path) -> str | None:
    # strace's own notes go to its stderr (kept as kernel.stderr); if they ever end up in the
    # trace file, they come before the first syscalls.
    return (_first_match(record_dir / STDERR_FILE, None)
            or _first_match(record_dir / TRACE_FILE, 50))


def _first_match(path: Path, max_lines: int | None) -> str | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", errors="replace") as text:
        for line in itertools.islice(text, max_lines):
            found = _SECCOMP_FALLBACK.search(line)
            if found:
                return found.group(0).strip()
    return None




@functools.cache
def _kills_on_exit(strace: str) -> bool:
    """Whether this strace has --kill-on-exit (PTRACE_O_EXITKILL: tracees die with it)."""
    try:
        done = run([strace, "--help"], timeout=30, check=False, what="asking strace its options")
    except CommandError:
        return False
    return "--kill-on-exit" in done.stdout + done.stderr


@functools.cache
def _probe() -> str | None:
    """Why strace cannot trace here (no binary, ptrace forbidden), or None when it can."""
    strace = which("strace")
    if strace is None:
        return "the strace binary is not installed (apt-get install strace)"
    try:
        done = run([strace, "-f", "-e", "trace=none", "true"], timeout=30, check=False,
                   what="probing strace")
    except CommandError as error:
        return str(error)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"strace cannot trace processes here ({tail}); ptrace is probably not permitted"
    return None
