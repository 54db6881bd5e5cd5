"""The ptrace tracer program: run a command, trace it and all its descendants, write events.

`python -m auditor.record.ptrace_run -o trace.jsonl -- CMD...` is the fallback for machines
without the strace binary (see `auditor.record.ptrace`). The ptrace calls go through
python-ptrace's bindings; PTRACE_GET_SYSCALL_INFO (Linux 5.3+) tells entry from exit without
per-architecture register juggling. Like `strace --seccomp-bpf`, a seccomp filter makes
tracees stop only at the syscalls we record; without it every syscall stops and all but the
recorded ones are skipped by number before anything is decoded.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import resource
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from ptrace import PtraceError
from ptrace.binding import func as pt

from ..events import Access, CellMark, Connect, Event, Exec, Exit, Spawn, parse_mark, to_json

# Linux x86_64 syscall numbers of what we record; other architectures are not supported.
SYS_OPEN, SYS_CREAT, SYS_OPENAT, SYS_OPENAT2 = 2, 85, 257, 437
SYS_EXECVE, SYS_EXECVEAT, SYS_CONNECT = 59, 322, 42
OPENS = frozenset({SYS_OPEN, SYS_CREAT, SYS_OPENAT, SYS_OPENAT2})
EXECS = frozenset({SYS_EXECVE, SYS_EXECVEAT})
RECORDED = OPENS | EXECS | {SYS_CONNECT}
AUDIT_ARCH_X86_64 = 0xC000003E

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_CREAT, O_TRUNC, O_DIRECTORY = 0o100, 0o1000, 0o200000
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
PATH_MAX, ARG_MAX_COUNT = 4096, 65536

PTRACE_GET_SYSCALL_INFO = 0x420E
SYSCALL_INFO_ENTRY, SYSCALL_INFO_EXIT, SYSCALL_INFO_SECCOMP = 1, 2, 3
PTRACE_EVENT_SECCOMP = 7
PTRACE_O_TRACESECCOMP, PTRACE_O_EXITKILL = 0x80, 0x100000
OPTIONS = (pt.PTRACE_O_TRACESYSGOOD | pt.PTRACE_O_TRACEFORK | pt.PTRACE_O_TRACEVFORK
           | pt.PTRACE_O_TRACECLONE | pt.PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL)
WALL = 0x40000000
SYSCALL_STOP = signal.SIGTRAP | 0x80
STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


class SyscallInfo(ctypes.Structure):
    """struct ptrace_syscall_info; the union is read as raw words (entry/seccomp: nr, args)."""

    _fields_ = [("op", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("arch", ctypes.c_uint32),
                ("ip", ctypes.c_uint64), ("sp", ctypes.c_uint64), ("words", ctypes.c_uint64 * 8)]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


@dataclass(slots=True)
class Task:
    """One traced thread: its thread group and the recorded syscall it is inside, if any."""

    tid: int
    tgid: int
    nr: int | None = None
    args: tuple[int, ...] = ()
    exec_call: tuple[str, list[str]] | None = None  # execve path and argv, read at entry
    in_seccomp_call: bool = False


@dataclass
class Tracer:
    """The wait loop: keeps per-thread state and turns syscall stops into events."""

    out: TextIO
    seccomp: bool
    main_pid: int
    tasks: dict[int, Task] = field(default_factory=dict)
    announced: set[int] = field(default_factory=set)  # new tids whose parent reported them
    held: set[int] = field(default_factory=set)  # new tids stopped before their parent said so
    mem: dict[int, int] = field(default_factory=dict)  # tgid -> fd of /proc/TGID/mem
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
        restart = pt.ptrace_cont if self.seccomp and not task.in_seccomp_call else pt.ptrace_syscall
        try:
            restart(task.tid, sig)
        except PtraceError as exc:  # killed (SIGKILL) while stopped: its exit comes next
            if exc.errno != errno.ESRCH:
                raise

    def loop(self) -> None:
        while True:
            try:
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
            fd = self.mem.pop(tid, None)
            if fd is not None:
                os.close(fd)
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
        event = status >> 16
        if sig == SYSCALL_STOP:
            self.on_syscall(task)
            self.resume(task)
        elif sig == signal.SIGTRAP and event:
            self.on_event(task, event)
            self.resume(task)
        elif sig in STOP_SIGNALS and _is_group_stop(tid):
            self.resume(task)  # without PTRACE_LISTEN a group-stop cannot be kept: let it run
        else:
            self.resume(task, sig)

    def on_event(self, task: Task, event: int) -> None:
        if event in (pt.PTRACE_EVENT_FORK, pt.PTRACE_EVENT_VFORK, pt.PTRACE_EVENT_CLONE):
            child = pt.ptrace_geteventmsg(task.tid)
            thread = event == pt.PTRACE_EVENT_CLONE and _tgid_of(child) == task.tgid
            self.emit(Spawn(pid=task.tgid, child=child, thread=thread, t=time.time()))
            if child in self.held:
                self.held.discard(child)
                self.resume(self.tasks[child])
            else:
                self.announced.add(child)
        elif event == pt.PTRACE_EVENT_EXEC:
            former = pt.ptrace_geteventmsg(task.tid)
            if former != task.tid:  # a non-leader thread exec'd and took the leader's tid
                moved = self.tasks.pop(former, None)
                if moved is not None:
                    task.nr, task.args, task.exec_call = moved.nr, moved.args, moved.exec_call
                    task.in_seccomp_call = moved.in_seccomp_call
            fd = self.mem.pop(task.tgid, None)  # the old mem file still shows the old image
            if fd is not None:
                os.close(fd)
        elif event == PTRACE_EVENT_SECCOMP:
            self.on_syscall(task)

    # -- syscalls ------------------------------------------------------------------------

    def on_syscall(self, task: Task) -> None:
        info = SyscallInfo()
        pt.ptrace(PTRACE_GET_SYSCALL_INFO, task.tid, ctypes.sizeof(info), ctypes.addressof(info))
        if info.op == SYSCALL_INFO_SECCOMP:
            task.in_seccomp_call = True
            self.enter(task, info.words[0], tuple(info.words[1:7]))
        elif info.op == SYSCALL_INFO_ENTRY:
            if task.in_seccomp_call and task.nr is not None:
                return  # the syscall-entry stop that follows a seccomp stop
            if info.words[0] in RECORDED:
                self.enter(task, info.words[0], tuple(info.words[1:7]))
        elif info.op == SYSCALL_INFO_EXIT:
            task.in_seccomp_call = False
            if task.nr is not None:
                nr, args, exec_call = task.nr, task.args, task.exec_call
                task.nr, task.args, task.exec_call = None, (), None
                rval = ctypes.c_int64(info.words[0]).value
                self.leave(task, nr, args, exec_call, rval)

    def enter(self, task: Task, nr: int, args: tuple[int, ...]) -> None:
        task.nr, task.args, task.exec_call = nr, args, None
        if nr in EXECS:  # the new image replaces this memory: read path and argv now
            dirfd = _fd_arg(args[0]) if nr == SYS_EXECVEAT else AT_FDCWD
            at = 1 if nr == SYS_EXECVEAT else 0
            path = self.read_str(task, args[at])
            if nr == SYS_EXECVEAT and not path and args[4] & AT_EMPTY_PATH:
                path = _readlink(f"/proc/{task.tid}/fd/{dirfd}") or ""
            task.exec_call = (self.absolute(task, dirfd, path), self.read_argv(task, args[at + 1]))

    def leave(self, task: Task, nr: int, args: tuple[int, ...],
              exec_call: tuple[str, list[str]] | None, rval: int) -> None:
        now = time.time()
        if nr in OPENS:
            at = 1 if nr in (SYS_OPENAT, SYS_OPENAT2) else 0
            name = self.read_str(task, args[at])
            mark = parse_mark(name)
            if mark is not None:
                self.emit(CellMark(pid=task.tgid, seq=mark[0], phase=mark[1], t=now))
            elif rval >= 0:
                dirfd = _fd_arg(args[0]) if at else AT_FDCWD
                path = self.absolute(task, dirfd, name)
                real = _readlink(f"/proc/{task.tid}/fd/{rval}")
                mode = _mode(self.open_flags(task, nr, args))
                self.emit(Access(pid=task.tgid, path=path, mode=mode,
                                 real=real if real and real.startswith("/") else None,
                                 t=now, source="ptrace"))
        elif nr in EXECS:
            if rval == 0 and exec_call is not None:
                self.emit(Exec(pid=task.tgid, path=exec_call[0], argv=exec_call[1], t=now))
        elif nr == SYS_CONNECT and rval in (0, -errno.EINPROGRESS):
            address = _sockaddr(self.read(task, args[1], min(args[2], 128)))
            if address:
                self.emit(Connect(pid=task.tgid, address=address, t=now))

    def open_flags(self, task: Task, nr: int, args: tuple[int, ...]) -> int:
        if nr == SYS_CREAT:
            return O_CREAT | O_WRONLY | O_TRUNC
        if nr == SYS_OPENAT2:  # struct open_how starts with u64 flags
            raw = self.read(task, args[2], 8)
            return struct.unpack("<Q", raw)[0] if len(raw) == 8 else 0
        return args[1] if nr == SYS_OPEN else args[2]

    # -- tracee memory and /proc ---------------------------------------------------------

    def read(self, task: Task, address: int, size: int) -> bytes:
        fd = self.mem.get(task.tgid)
        if fd is None:
            try:
                fd = self.mem[task.tgid] = os.open(f"/proc/{task.tgid}/mem", os.O_RDONLY)
            except OSError:
                return b""
        try:
            return os.pread(fd, size, address) if address else b""
        except OSError:
            return b""

    def read_str(self, task: Task, address: int) -> str:
        data = b""
        while len(data) < PATH_MAX:
            chunk = self.read(task, address + len(data), 256)
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(data + chunk[:end])
            if not chunk:
                break
            data += chunk
        return os.fsdecode(data)

    def read_argv(self, task: Task, address: int) -> list[str]:
        argv: list[str] = []
        while address and len(argv) < ARG_MAX_COUNT:
            words = self.read(task, address, 8 * 64)
            for (pointer,) in struct.iter_unpack("<Q", words[: len(words) // 8 * 8]):
                if pointer == 0:
                    return argv
                argv.append(self.read_str(task, pointer))
            if len(words) < 8:
                break
            address += len(words) // 8 * 8
        return argv

    def absolute(self, task: Task, dirfd: int, path: str) -> str:
        if not path.startswith("/"):
            where = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
            base = _readlink(f"/proc/{task.tid}/{where}") or "/"
            path = os.path.join(base, path) if path else base
        return "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading "//"


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


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
        pt.ptrace_getsiginfo(tid)
    except PtraceError as exc:
        return exc.errno == errno.EINVAL
    return False


def _fd_arg(word: int) -> int:
    return ctypes.c_int32(word & 0xFFFFFFFF).value


def _mode(flags: int) -> str:
    if flags & O_DIRECTORY:
        return "d"
    if flags & O_ACCMODE == O_RDWR:
        return "rw"
    if flags & O_ACCMODE == O_WRONLY or flags & (O_CREAT | O_TRUNC):
        return "w"
    return "r"


def _sockaddr(raw: bytes) -> str | None:
    if len(raw) >= 8 and struct.unpack("<H", raw[:2])[0] == socket.AF_INET:
        port = struct.unpack(">H", raw[2:4])[0]
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}"
    if len(raw) >= 24 and struct.unpack("<H", raw[:2])[0] == socket.AF_INET6:
        port = struct.unpack(">H", raw[2:4])[0]
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}"
    return None


# -- starting the traced command -----------------------------------------------------------

def _seccomp_program() -> SockFprog:
    """BPF: stop (SECCOMP_RET_TRACE) at the recorded x86_64 syscalls, allow everything else."""
    ld_abs, jeq, ret = 0x20, 0x15, 0x06
    allow, trace = 0x7FFF0000, 0x7FF00000
    nrs = sorted(RECORDED)
    n = len(nrs)
    code = [(ld_abs, 0, 0, 4), (jeq, 0, n + 1, AUDIT_ARCH_X86_64), (ld_abs, 0, 0, 0)]
    code += [(jeq, n - j, 0, nr) for j, nr in enumerate(nrs)]
    code += [(ret, 0, 0, allow), (ret, 0, 0, trace)]
    array = (SockFilter * len(code))(*(SockFilter(*op) for op in code))
    prog = SockFprog(len(code), array)
    prog._keep = array  # the filter array must outlive the prctl call
    return prog


def _install_seccomp() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    prog = _seccomp_program()
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) == 0:
        return True
    # Unprivileged tracers need no_new_privs first (setuid programs then lose their bit).
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) == 0


def _child(argv: list[str], report: int, seccomp: bool) -> None:
    """In the forked child: become a tracee, install the filter, stop, then exec argv."""
    try:
        pt.ptrace_traceme()
    except PtraceError as exc:
        os.write(report, f"E ptrace(PTRACE_TRACEME) failed: {exc}".encode())
        os._exit(126)
    mode = b"S" if seccomp and _install_seccomp() else b"F"
    os.write(report, mode)
    os.close(report)
    os.kill(os.getpid(), signal.SIGSTOP)  # the tracer sets its options during this stop
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"ptrace_run: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)


def trace(argv: list[str], out: TextIO, *, seccomp: bool = True) -> int:
    """Run argv traced, writing events to `out`; returns its exit code or -signal."""
    if platform.machine() != "x86_64":
        raise OSError(f"the ptrace backend supports x86_64 only, not {platform.machine()}")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(argv, write_end, seccomp)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as report:
        said = report.read(4096)
    _, status = os.waitpid(pid, WALL)
    if not said.startswith((b"S", b"F")) or not os.WIFSTOPPED(status):
        if os.WIFSTOPPED(status):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, WALL)
        raise OSError(said[2:].decode(errors="replace") or "the traced command did not start")
    tracer = Tracer(out, seccomp=said == b"S", main_pid=pid)
    tracer.tasks[pid] = Task(pid, pid)
    forward = _forward_signals(tracer)
    try:
        options = OPTIONS | (PTRACE_O_TRACESECCOMP if tracer.seccomp else 0)
        pt.ptrace_setoptions(pid, options)
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


def _forward_signals(tracer: Tracer) -> dict[int, signal.Handlers]:
    """SIGTERM/SIGINT/SIGHUP go to the command, then (once it ended) to all it left behind."""
    def forward(signum: int, _frame: object) -> None:
        tracer.out.flush()
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
    parser.add_argument("command", nargs="+", metavar="CMD")
    options = parser.parse_args(args)
    try:
        with open(options.output, "w", encoding="utf-8") as out:
            code = trace(options.command, out, seccomp=not options.no_seccomp)
    except OSError as exc:
        print(f"ptrace_run: {exc}", file=sys.stderr)
        return 126
    if code < 0:  # die of the same signal, as the command did (without dumping core)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main())
