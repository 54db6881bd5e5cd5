"""The ptrace tracer program: run a command, trace it and all its descendants, write events.

`python -m auditor.record.ptrace_run -o trace.jsonl -- CMD...` is the ptrace backend's tracer
(see `auditor.record.ptrace`, which starts it with -S); it records what the strace backend
does. The ptrace calls are libc's, through ctypes (`ptrace_syscalls.ptrace`: the standard
library is all the tracer imports); PTRACE_GET_SYSCALL_INFO (Linux 5.3+) tells entry from exit
without per-architecture register juggling. Like `strace --seccomp-bpf`, a seccomp filter makes
tracees stop only at the syscalls we record; without it every syscall stops and all but the
recorded ones are skipped by number before anything is decoded. A recorded syscall costs
three stops (seccomp, entry, exit); a read-only open whose outcome the tracer can tell from
outside (the file is there and readable, or it is missing) is recorded at the first and
costs one (`WaitLoop.open_at_entry`).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import resource
import signal
import stat
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from ..common.realpaths import RealPaths
from ..events import (
    Accept,
    Access,
    CellMark,
    Connect,
    Event,
    Exec,
    Exit,
    Spawn,
    parse_mark,
    to_json,
)
from . import ptrace_syscalls as linux

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    #: What signal.signal takes and returns (typeshed's private _HANDLER).
    SignalHandler = Callable[[int, FrameType | None], Any] | int | None

OPTIONS = (linux.PTRACE_O_TRACESYSGOOD | linux.PTRACE_O_TRACEFORK | linux.PTRACE_O_TRACEVFORK
           | linux.PTRACE_O_TRACECLONE | linux.PTRACE_O_TRACEEXEC | linux.PTRACE_O_EXITKILL)
WALL = 0x40000000
SYSCALL_STOP = signal.SIGTRAP | 0x80
# After each stop the tracer polls for the next one this long before it sleeps in waitpid:
# recorded syscalls come in bursts (an import opens many files), and waking a sleeping
# tracer costs more than the poll where an idle CPU halts (a VM's vCPU: tens of µs;
# bench/tracer_tasks.py). The CPU it spends is bounded by this per recorded syscall.
SPIN_S = 50e-6
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


@dataclass(slots=True)
class Task:
    """One traced thread: its thread group and the recorded syscall it is inside, if any."""

    tid: int
    tgid: int
    nr: int | None = None
    args: tuple[int, ...] = ()
    # What its entry stop read for the exit to record: an exec's path and argv (the new image
    # replaces that memory), an open's path, mode and name (its real path is the fd's).
    entered: Exec | Access | None = None
    in_seccomp_call: bool = False


@dataclass
class WaitLoop:
    """The wait loop: keeps per-thread state and turns syscall stops into events."""

    out: TextIO
    seccomp: bool
    main_pid: int
    tasks: dict[int, Task] = field(default_factory=dict)
    announced: set[int] = field(default_factory=set)  # new tids whose parent reported them
    held: set[int] = field(default_factory=set)  # new tids stopped before their parent said so
    memory: linux.TraceeMemory = field(default_factory=linux.TraceeMemory)
    real: RealPaths = field(default_factory=RealPaths)  # real paths of opens at entry
    # Opens settled at entry, to record once the tracee runs on; and whether each is a symlink.
    settling: list[tuple[Access, bool]] = field(default_factory=list)
    main_status: int | None = None
    stop_signal: int | None = None  # a SIGTERM/SIGINT/SIGHUP we were sent and passed on

    def emit(self, event: Event) -> None:
        self.out.write(to_json(event))
        self.out.write("\n")

    def signal_all(self, signum: int) -> None:
        for pid in sorted({task.tgid for task in self.tasks.values()}):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # -- running -------------------------------------------------------------------------

    def resume(self, task: Task, sig: int = 0) -> None:
        restart = (linux.PTRACE_CONT if self.seccomp and not task.in_seccomp_call
                   else linux.PTRACE_SYSCALL)
        try:
            linux.ptrace(restart, task.tid, 0, sig)
        except OSError as exc:  # killed (SIGKILL) while stopped: its exit comes next
            if exc.errno != errno.ESRCH:
                raise

    def loop(self) -> None:
        clock = time.perf_counter
        while True:
            try:
                until, tid, status = clock() + SPIN_S, 0, 0
                while not tid and clock() < until:  # the next stop often comes soon
                    tid, status = os.waitpid(-1, WALL | os.WNOHANG)
                if not tid:
                    tid, status = os.waitpid(-1, WALL)
            except ChildProcessError:
                return
            if os.WIFSTOPPED(status):
                self.on_stop(tid, status)
            else:
                self.on_end(tid, status)

    def on_end(self, tid: int, status: int) -> None:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        task = self.tasks.pop(tid, None)
        if tid == self.main_pid:
            self.main_status = code
            if self.stop_signal is not None:  # asked to stop: so is what the command left
                self.signal_all(self.stop_signal)
        if task is not None and task.tid == task.tgid:
            self.emit(Exit(pid=tid, status=code, t=time.time()))
            self.memory.forget(tid)
        self.announced.discard(tid)
        self.held.discard(tid)

    def on_stop(self, tid: int, status: int) -> None:
        sig = os.WSTOPSIG(status)
        task = self.tasks.get(tid)
        if task is None:  # a new thread or process, auto-attached; its first stop
            task = self.tasks[tid] = Task(tid, _tgid_of(tid))
            if tid in self.announced:
                self.announced.discard(tid)
                self.resume(task)
            else:
                self.held.add(tid)  # resumed once the parent's fork/clone event is recorded
            return
        event, deliver = status >> 16, 0
        try:
            if sig == SYSCALL_STOP:
                self.on_syscall(task)
            elif sig == signal.SIGTRAP and event:
                self.on_event(task, event)
            elif not (sig in STOP_SIGNALS and _is_group_stop(tid)):
                deliver = sig  # a signal for the tracee: pass it on
            # (a group-stop cannot be kept without PTRACE_LISTEN: the tracee runs on)
        except OSError as exc:  # SIGKILLed while stopped: its exit is reported next
            if exc.errno != errno.ESRCH:
                raise
        self.resume(task, deliver)
        if self.settling:
            self.settle()

    def on_event(self, task: Task, event: int) -> None:
        if event in (linux.PTRACE_EVENT_FORK, linux.PTRACE_EVENT_VFORK,
                     linux.PTRACE_EVENT_CLONE):
            child = linux.event_message(task.tid)
            thread = event == linux.PTRACE_EVENT_CLONE and _tgid_of(child) == task.tgid
            self.emit(Spawn(pid=task.tgid, child=child, thread=thread, t=time.time()))
            if child in self.held:
                self.held.discard(child)
                self.resume(self.tasks[child])
            else:
                self.announced.add(child)
        elif event == linux.PTRACE_EVENT_EXEC:
            former = linux.event_message(task.tid)
            if former != task.tid:  # a non-leader thread exec'd and took the leader's tid
                moved = self.tasks.pop(former, None)
                if moved is not None:
                    task.nr, task.args, task.entered = moved.nr, moved.args, moved.entered
                    task.in_seccomp_call = moved.in_seccomp_call
            self.memory.forget(task.tgid)
        elif event == linux.PTRACE_EVENT_SECCOMP:
            self.on_syscall(task)

    # -- syscalls ------------------------------------------------------------------------

    def on_syscall(self, task: Task) -> None:
        info = linux.SyscallInfo()
        linux.ptrace(linux.PTRACE_GET_SYSCALL_INFO, task.tid, ctypes.sizeof(info),
                     ctypes.addressof(info))
        if info.op == linux.SYSCALL_INFO_SECCOMP:
            task.in_seccomp_call = True
            self.enter(task, info.words[0], tuple(info.words[1:7]))
        elif info.op == linux.SYSCALL_INFO_ENTRY:
            if task.in_seccomp_call and task.nr is not None:
                return  # the syscall-entry stop that follows a seccomp stop
            if info.words[0] in linux.RECORDED:
                self.enter(task, info.words[0], tuple(info.words[1:7]))
        elif info.op == linux.SYSCALL_INFO_EXIT:
            task.in_seccomp_call = False
            if task.nr is not None:
                nr, args, entered = task.nr, task.args, task.entered
                task.nr, task.args, task.entered = None, (), None
                rval = ctypes.c_int64(info.words[0]).value
                self.leave(task, nr, args, entered, rval)

    def enter(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        task.nr, task.args, task.entered = nr, args, None
        if nr in linux.OPENS and self.open_at_entry(task, nr, args):
            task.nr, task.entered = None, None
            task.in_seccomp_call = False  # settled already: run on without its exit stop
            return
        if nr in linux.EXECS:  # the new image replaces this memory: read path and argv now
            dirfd = linux.fd_arg(args[0]) if nr == linux.SYS_EXECVEAT else linux.AT_FDCWD
            at = 1 if nr == linux.SYS_EXECVEAT else 0
            path = self.memory.read_str(task.tgid, args[at])
            if nr == linux.SYS_EXECVEAT and not path and args[4] & linux.AT_EMPTY_PATH:
                path = linux.readlink(f"/proc/{task.tid}/fd/{dirfd}") or ""
            argv = self.memory.read_argv(task.tgid, args[at + 1])
            task.entered = Exec(pid=task.tgid, path=self.absolute(task, dirfd, path), argv=argv)

    def open_at_entry(self, task: Task, nr: int, args: tuple[int, ...]) -> bool:
        """Read an open at its entry stop, and settle it there when its outcome is known
        already, sparing the two stops its exit costs (a recorded syscall's stops are most of
        an audit's cost): a cell mark; an O_PATH handle (not a use); a read of a missing file
        (it fails: not recorded) or of one that is there outside /proc and /dev (it opens:
        recorded, by `settle` once the tracee runs on, with the real path its fd would show).
        False leaves it to the exit stop (`task.entered` holds what the entry read): creating,
        writing or truncating opens, and whatever the tracer cannot judge from outside
        (sockets, FIFOs, a symlink opened O_NOFOLLOW, openat2)."""
        at = 1 if nr in (linux.SYS_OPENAT, linux.SYS_OPENAT2) else 0
        name = self.memory.read_str(task.tgid, args[at])
        mark = parse_mark(name)
        if mark is not None:
            self.emit(CellMark(pid=task.tgid, seq=mark[0], phase=mark[1], t=time.time()))
            return True
        flags = self.open_flags(task, nr, args)
        mode = linux.open_mode(flags)
        if mode is None:
            return True
        dirfd = linux.fd_arg(args[0]) if at else linux.AT_FDCWD
        path = self.absolute(task, dirfd, name)
        given = self.as_named(task, name) if dirfd == linux.AT_FDCWD else None
        task.entered = access = Access(pid=task.tgid, path=path, mode=mode, t=time.time(),
                                       source="ptrace", given=given)
        if mode not in ("r", "d") or flags & linux.O_CREAT or nr == linux.SYS_OPENAT2:
            return False  # (openat2's resolve flags may refuse what a stat finds)
        if path.startswith(("/proc/", "/dev/")) or path in ("/proc", "/dev"):
            return False  # /proc/self is the tracer's here; devices may refuse or block
        try:
            st = os.lstat(path)
            link = stat.S_ISLNK(st.st_mode)
            if link:
                if flags & linux.O_NOFOLLOW:
                    return False  # ELOOP, unless the kernel's view differs: ask it
                st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return True  # it fails with ENOENT or ENOTDIR: a failed open is not recorded
        except OSError:
            return False
        if mode == "d" and not stat.S_ISDIR(st.st_mode):
            return True  # O_DIRECTORY of a file: ENOTDIR
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return False  # a FIFO, socket or device: ask the kernel
        self.settling.append((access, link))
        return True

    def settle(self) -> None:
        """Record the opens `open_at_entry` let run on: their real paths and the check that
        the tracee may read them are the tracer's work while the tracee runs again."""
        for access, link in self.settling:
            if os.access(access.path, os.R_OK):  # else it failed with EACCES
                access.real = self.real(access.path, link)
                self.emit(access)
        self.settling.clear()

    def leave(self, task: Task, nr: int, args: tuple[int, ...],
              entered: Exec | Access | None, rval: int) -> None:
        now = time.time()
        if isinstance(entered, Access):  # an open the entry could not settle
            if rval >= 0:
                entered.real, entered.t = linux.real_path(task.tid, rval), now
                self.emit(entered)
        elif isinstance(entered, Exec):
            if rval == 0:
                entered.t = now
                self.emit(entered)
        elif nr == linux.SYS_CONNECT and rval in (0, -errno.EINPROGRESS):
            raw = self.memory.read(task.tgid, args[1], min(args[2], 128))
            address = linux.sockaddr_address(raw)
            if address:
                protocol = linux.socket_protocol(task.tid, linux.fd_arg(args[0]))
                self.emit(Connect(pid=task.tgid, address=address, t=now,
                                  datagram=protocol.startswith("UDP")))
        elif nr in linux.ACCEPTS and rval >= 0:
            served = linux.local_address(task.tgid, rval)
            if served:  # a TCP connection the run served (a Unix socket is no address)
                self.emit(Accept(pid=task.tgid, address=served, t=now))
        elif nr in linux.RENAMES and rval == 0:  # a file written in place: its new name
            dirfd, at = ((linux.AT_FDCWD, 1) if nr == linux.SYS_RENAME
                         else (linux.fd_arg(args[2]), 3))
            target = self.absolute(task, dirfd, self.memory.read_str(task.tgid, args[at]))
            self.emit(Access(pid=task.tgid, path=target, mode="w", t=now, source="ptrace"))

    def open_flags(self, task: Task, nr: int, args: tuple[int, ...]) -> int:
        if nr == linux.SYS_CREAT:
            return linux.O_CREAT | linux.O_WRONLY | linux.O_TRUNC
        if nr == linux.SYS_OPENAT2:  # struct open_how starts with u64 flags
            raw = self.memory.read(task.tgid, args[2], 8)
            return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        return args[1] if nr == linux.SYS_OPEN else args[2]

    def as_named(self, task: Task, path: str) -> str | None:
        """The relative name a program opened against its cwd: `path` itself, or what follows
        the cwd in a path built as cwd + relative ('/nb/../src/x.py' from cwd /nb, as Python's
        import system builds them from a relative sys.path entry); as strace_parse does."""
        if path[:1] != "/":
            return path or None
        if "/../" not in path:
            return None
        cwd = linux.readlink(f"/proc/{task.tid}/cwd")
        return path[len(cwd) + 1:] if cwd and path.startswith(cwd + "/") else None

    def absolute(self, task: Task, dirfd: int, path: str) -> str:
        if not path.startswith("/"):
            where = "cwd" if dirfd == linux.AT_FDCWD else f"fd/{dirfd}"
            base = linux.readlink(f"/proc/{task.tid}/{where}") or "/"
            path = os.path.join(base, path) if path else base
        return "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading "//"


def _tgid_of(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid


def _is_group_stop(tid: int) -> bool:
    try:
        linux.signal_info(tid)
    except OSError as exc:
        return exc.errno == errno.EINVAL
    return False


# -- starting the traced command -----------------------------------------------------------

def _child(argv: list[str] | None, report: int, seccomp: bool,
           quiet_key: int | None = None) -> None:
    """In the forked child: become a tracee, install the filter, stop, then exec argv (with
    None, wait to be killed: the probe's child)."""
    try:
        linux.ptrace(linux.PTRACE_TRACEME, 0)
    except OSError as exc:
        os.write(report, f"E ptrace(PTRACE_TRACEME) failed: {exc.strerror}".encode())
        os._exit(126)
    mode = b"S" if seccomp and linux.install_seccomp(quiet_key) else b"F"
    os.write(report, mode)
    os.close(report)
    os.kill(os.getpid(), signal.SIGSTOP)  # the tracer sets its options during this stop
    if argv is None:
        os._exit(0)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"ptrace_run: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)


def _start(argv: list[str] | None, seccomp: bool,
           quiet_key: int | None = None) -> tuple[int, bool]:
    """Fork the child `_child` makes of argv and wait for its stop: (pid, whether the seccomp
    filter holds). OSError saying why when it could not become a tracee (nothing is left)."""
    if platform.machine() != "x86_64":
        raise OSError(f"the ptrace backend supports x86_64 only, not {platform.machine()}")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(argv, write_end, seccomp, quiet_key)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        said = report.read(4096)
    _, status = os.waitpid(pid, WALL)
    if not said.startswith((b"S", b"F")) or not os.WIFSTOPPED(status):
        if os.WIFSTOPPED(status):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, WALL)
        raise OSError(said[2:].decode(errors="replace") or "the traced command did not start")
    return pid, said == b"S"


def probe() -> str | None:
    """Why this process cannot trace as `trace` does, or None, without starting a program: a
    forked child asks to be traced and installs the seccomp filter, the tracer sets its
    options on it, then kills it (a few ms, where tracing /bin/true costs a Python start)."""
    try:
        pid, seccomp = _start(None, seccomp=True)
    except OSError as exc:
        return str(exc)
    try:
        linux.ptrace(linux.PTRACE_SETOPTIONS, pid, 0,
                     OPTIONS | (linux.PTRACE_O_TRACESECCOMP if seccomp else 0))
        return None
    except OSError as exc:
        return f"ptrace(PTRACE_SETOPTIONS) failed: {exc.strerror}"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, WALL)


def trace(argv: list[str], out: TextIO, *, seccomp: bool = True,
          quiet_key: int | None = None) -> int:
    """Run argv traced, writing events to `out`; returns its exit code or -signal.
    `quiet_key`: openats with this mode argument do not stop (`linux.seccomp_program`)."""
    pid, seccomp = _start(argv, seccomp, quiet_key)
    tracer = WaitLoop(out, seccomp=seccomp, main_pid=pid)
    tracer.tasks[pid] = Task(pid, pid)
    forward = _forward_signals(tracer)
    try:
        options = OPTIONS | (linux.PTRACE_O_TRACESECCOMP if tracer.seccomp else 0)
        linux.ptrace(linux.PTRACE_SETOPTIONS, pid, 0, options)
        tracer.resume(tracer.tasks[pid])
        tracer.loop()
    finally:
        for signum, previous in forward.items():
            signal.signal(signum, previous)
        for tid in list(tracer.tasks):  # only after a failure of ours: leave nothing stopped
            try:
                os.kill(tid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.flush()
    return tracer.main_status if tracer.main_status is not None else -signal.SIGKILL


def _forward_signals(tracer: WaitLoop) -> dict[int, SignalHandler]:
    """SIGTERM/SIGINT/SIGHUP go to the command, then (once it ended) to all it left behind."""
    def forward(signum: int, _frame: object) -> None:
        tracer.stop_signal = signum
        if tracer.main_pid in tracer.tasks:
            try:
                os.kill(tracer.main_pid, signum)
                return
            except ProcessLookupError:
                pass
        tracer.signal_all(signum)
    return {signum: signal.signal(signum, forward)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auditor.record.ptrace_run",
                                     description="Trace CMD and its descendants with ptrace.")
    parser.add_argument("-o", "--output", required=True, help="events file (JSON lines)")
    parser.add_argument("--no-seccomp", action="store_true",
                        help="stop at every syscall instead of filtering with seccomp-bpf")
    parser.add_argument("--quiet-key", type=lambda text: int(text, 16), default=None,
                        metavar="HEX", help="openat with this mode argument is not recorded "
                        "(the kernel side records those reads itself)")
    parser.add_argument("command", nargs="+", metavar="CMD")
    options = parser.parse_args(args)
    try:
        with open(options.output, "w", encoding="utf-8") as out:
            code = trace(options.command, out, seccomp=not options.no_seccomp,
                         quiet_key=options.quiet_key)
    except OSError as exc:
        print(f"ptrace_run: {exc}", file=sys.stderr)
        return 126
    if code < 0:  # die of the same signal, as the command did (without dumping core)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two take no handler
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main())
