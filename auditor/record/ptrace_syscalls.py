"""What the ptrace tracer knows of Linux x86_64: syscall numbers and flags, the seccomp
filter that stops tracees only at recorded syscalls, and reading a tracee's memory.

Split from `ptrace_run` (the wait loop) so each reads in one sitting; used only by it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import struct
from typing import Any

# Linux x86_64 syscall numbers of what we record; other architectures are not supported.
SYS_OPEN, SYS_CREAT, SYS_OPENAT, SYS_OPENAT2 = 2, 85, 257, 437
SYS_EXECVE, SYS_EXECVEAT, SYS_CONNECT = 59, 322, 42
SYS_ACCEPT, SYS_ACCEPT4 = 43, 288
SYS_RENAME, SYS_RENAMEAT, SYS_RENAMEAT2 = 82, 264, 316
SYS_PIDFD_OPEN, SYS_PIDFD_GETFD, SYS_SECCOMP = 434, 438, 317
OPENS = frozenset({SYS_OPEN, SYS_CREAT, SYS_OPENAT, SYS_OPENAT2})
EXECS = frozenset({SYS_EXECVE, SYS_EXECVEAT})
ACCEPTS = frozenset({SYS_ACCEPT, SYS_ACCEPT4})
RENAMES = frozenset({SYS_RENAME, SYS_RENAMEAT, SYS_RENAMEAT2})
# What strace records too (auditor/record/strace.py SYSCALLS), less what /proc tells us at
# each stop anyway (the cwd: chdir, fchdir) and what ptrace events report (fork, clone).
RECORDED = OPENS | EXECS | ACCEPTS | RENAMES | {SYS_CONNECT}
AUDIT_ARCH_X86_64 = 0xC000003E

O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_CREAT, O_TRUNC, O_DIRECTORY, O_PATH = 0o100, 0o1000, 0o200000, 0o10000000
O_NOFOLLOW = 0o400000
O_TMPFILE_ONLY = 0o20000000  # __O_TMPFILE: O_TMPFILE is this | O_DIRECTORY
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
PATH_MAX, ARG_MAX_COUNT = 4096, 65536

# ptrace(2) requests, options and stop events.
PTRACE_TRACEME, PTRACE_CONT, PTRACE_SYSCALL = 0, 7, 24
PTRACE_SETOPTIONS, PTRACE_GETEVENTMSG, PTRACE_GETSIGINFO = 0x4200, 0x4201, 0x4202
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_O_TRACESYSGOOD, PTRACE_O_TRACEFORK, PTRACE_O_TRACEVFORK = 0x1, 0x2, 0x4
PTRACE_O_TRACECLONE, PTRACE_O_TRACEEXEC, PTRACE_O_TRACESECCOMP = 0x8, 0x10, 0x80
PTRACE_O_EXITKILL = 0x100000
PTRACE_EVENT_FORK, PTRACE_EVENT_VFORK, PTRACE_EVENT_CLONE = 1, 2, 3
PTRACE_EVENT_EXEC, PTRACE_EVENT_SECCOMP = 4, 7
SYSCALL_INFO_ENTRY, SYSCALL_INFO_EXIT, SYSCALL_INFO_SECCOMP = 1, 2, 3
SIGINFO_SIZE = 128


class SyscallInfo(ctypes.Structure):
    """struct ptrace_syscall_info; the union is read as raw words (entry/seccomp: nr, args)."""

    _fields_ = [("op", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("arch", ctypes.c_uint32),
                ("ip", ctypes.c_uint64), ("sp", ctypes.c_uint64), ("words", ctypes.c_uint64 * 8)]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


class TraceeMemory:
    """Reads tracees' memory through /proc/TGID/mem (one pread, not a ptrace call per word)."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}

    def forget(self, tgid: int) -> None:
        """Drop the open mem file of `tgid`: after execve it still shows the old image."""
        fd = self.fds.pop(tgid, None)
        if fd is not None:
            os.close(fd)

    def read(self, tgid: int, address: int, size: int) -> bytes:
        """Up to `size` bytes at `address`; short or empty where memory is unmapped."""
        fd = self.fds.get(tgid)
        if fd is None:
            try:
                fd = self.fds[tgid] = os.open(f"/proc/{tgid}/mem", os.O_RDONLY)
            except OSError:
                return b""
        try:
            return os.pread(fd, size, address) if address else b""
        except OSError:
            return b""

    def read_str(self, tgid: int, address: int) -> str:
        """A NUL-terminated string (a path), decoded like os.fsdecode; at most PATH_MAX bytes."""
        data = b""
        while len(data) < PATH_MAX:
            chunk = self.read(tgid, address + len(data), 256)
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(data + chunk[:end])
            if not chunk:
                break
            data += chunk
        return os.fsdecode(data)

    def read_argv(self, tgid: int, address: int) -> list[str]:
        """A NULL-terminated array of string pointers (execve's argv)."""
        argv: list[str] = []
        while address and len(argv) < ARG_MAX_COUNT:
            words = self.read(tgid, address, 8 * 64)
            for (pointer,) in struct.iter_unpack("<Q", words[: len(words) // 8 * 8]):
                if pointer == 0:
                    return argv
                argv.append(self.read_str(tgid, pointer))
            if len(words) < 8:
                break
            address += len(words) // 8 * 8
        return argv


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def _ptrace_call() -> Any:
    call = _libc().ptrace
    call.restype = ctypes.c_long
    call.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    return call


def ptrace(request: int, tid: int, address: int = 0, data: int = 0) -> int:
    """ptrace(2) (no PEEK requests: -1 is always an error); OSError with its errno."""
    result = _ptrace_call()(request, tid, address or None, data or None)
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, f"ptrace({request:#x}, {tid}): {os.strerror(number)}")
    return result


def event_message(tid: int) -> int:
    """PTRACE_GETEVENTMSG: the new task's tid at a fork/clone stop, the former tid at exec."""
    message = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(message))
    return message.value


def signal_info(tid: int) -> None:
    """PTRACE_GETSIGINFO, for its error alone: EINVAL at a group-stop."""
    info = ctypes.create_string_buffer(SIGINFO_SIZE)
    ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(info))


def readlink(path: str) -> str | None:
    """The target of a /proc link (a cwd, an fd), or None when the task or fd is gone."""
    try:
        return os.readlink(path)
    except OSError:
        return None


def real_path(tid: int, fd: int) -> str | None:
    """The file a tracee's fd is open on, as strace -y shows it: None for what is no path (a
    pipe, a socket), without the " (deleted)" of an unlinked (an O_TMPFILE) file."""
    real = readlink(f"/proc/{tid}/fd/{fd}")
    if not real or not real.startswith("/"):
        return None
    return real.removesuffix(" (deleted)")


def fd_arg(word: int) -> int:
    """A syscall's int fd argument from its 64-bit register word (AT_FDCWD is negative)."""
    return ctypes.c_int32(word & 0xFFFFFFFF).value


def open_mode(flags: int) -> str | None:
    """Access.mode from open flags: d(irectory), rw, w (write, create or truncate) or r; None
    for an O_PATH handle, which reads nothing (like a stat: not a use), as strace_parse. An
    O_TMPFILE open names its folder and makes an unnamed file there: not a listing."""
    if flags & O_DIRECTORY and not flags & O_TMPFILE_ONLY:
        return "d"
    if flags & O_ACCMODE == O_RDWR and not flags & O_TRUNC:
        return "rw"  # truncating discards what was there: a write, not a read
    if flags & O_ACCMODE == O_WRONLY or flags & (O_CREAT | O_TRUNC):
        return "w"
    if flags & O_PATH:
        return None
    return "r"


def socket_protocol(tid: int, fd: int) -> str:
    """The protocol of a tracee's socket ("TCP", "UDPv6", "UNIX-STREAM"...), as the kernel
    names it (the xattr strace's --decode-fds=socket reads too); "" when the fd is gone."""
    try:
        return os.getxattr(f"/proc/{tid}/fd/{fd}", "system.sockprotoname").rstrip(b"\0").decode()
    except OSError:
        return ""


def local_address(tgid: int, fd: int) -> str | None:
    """"ip:port" ("[v6]:port") a tracee's TCP socket is bound to: a copy of the fd taken with
    pidfd_getfd (Linux 5.6+; the tracer may), asked getsockname. None for other sockets."""
    libc = _libc()
    pidfd = libc.syscall(SYS_PIDFD_OPEN, tgid, 0)
    if pidfd < 0:
        return None
    try:
        copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    if copy < 0:
        return None
    with socket.socket(fileno=copy) as sock:  # closing the copy leaves the tracee's fd open
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                                   socket.AF_INET6):
            return None
        host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def sockaddr_address(raw: bytes) -> str | None:
    """"host:port" ("[v6]:port") of an AF_INET/AF_INET6 sockaddr; None for other families."""
    if len(raw) >= 8 and struct.unpack("<H", raw[:2])[0] == socket.AF_INET:
        port = struct.unpack(">H", raw[2:4])[0]
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}"
    if len(raw) >= 24 and struct.unpack("<H", raw[:2])[0] == socket.AF_INET6:
        port = struct.unpack(">H", raw[2:4])[0]
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}"
    return None


def seccomp_program(quiet_key: int | None = None) -> SockFprog:
    """BPF: stop (SECCOMP_RET_TRACE) at the recorded x86_64 syscalls, allow everything else.

    With `quiet_key`, an openat whose mode argument is that 64-bit value runs without a stop:
    the kernel side's own reads for the import system and the notebook's `open`
    (kernels/flo_kernel.py `_quiet_reads`), which it records itself. The mode of an open that
    creates nothing is ignored by the kernel, and no program passes a random 64-bit value
    there by chance."""
    ld_abs, jeq, ret = 0x20, 0x15, 0x06
    allow, trace = 0x7FFF0000, 0x7FF00000
    nrs = sorted(RECORDED)
    n = len(nrs)
    quiet: list[tuple[int, int, int, int]] = []
    if quiet_key is not None:
        mode_low, mode_high = 16 + 3 * 8, 16 + 3 * 8 + 4  # seccomp_data.args[3], little-endian
        quiet = [(jeq, 0, 4, SYS_OPENAT),
                 (ld_abs, 0, 0, mode_low), (jeq, 0, 2, quiet_key & 0xFFFFFFFF),
                 (ld_abs, 0, 0, mode_high), (jeq, n + 1, 0, quiet_key >> 32),
                 (ld_abs, 0, 0, 0)]
    # [arch?] [nr] [the quiet openat, then nr again] [one jeq per recorded nr] allow trace
    code = [(ld_abs, 0, 0, 4), (jeq, 0, len(quiet) + n + 1, AUDIT_ARCH_X86_64), (ld_abs, 0, 0, 0)]
    code += quiet
    code += [(jeq, n - j, 0, nr) for j, nr in enumerate(nrs)]
    code += [(ret, 0, 0, allow), (ret, 0, 0, trace)]
    array = (SockFilter * len(code))(*(SockFilter(*op) for op in code))
    prog = SockFprog(len(code), array)
    prog._keep = array  # the filter array must outlive the prctl call
    return prog


def install_seccomp(quiet_key: int | None = None) -> bool:
    """Install `seccomp_program` in this process (and so all it starts); False if refused."""
    libc = _libc()
    prog = seccomp_program(quiet_key)
    if _set_filter(libc, prog):
        return True
    # Unprivileged tracers need no_new_privs first (setuid programs then lose their bit).
    pr_set_no_new_privs = 38
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        return False
    return _set_filter(libc, prog)


def _set_filter(libc: ctypes.CDLL, prog: SockFprog) -> bool:
    # seccomp(2) with SPEC_ALLOW: a filter alone must not switch on the speculative store
    # bypass mitigation (SSBD) for the notebook and all it starts, which kernels before 5.16
    # do by default and which slows compute; before 4.17 the flag is unknown (EINVAL) and
    # prctl installs the same filter without it.
    set_mode_filter, flag_spec_allow = 1, 1 << 2
    if libc.syscall(SYS_SECCOMP, set_mode_filter, flag_spec_allow, ctypes.byref(prog)) == 0:
        return True
    pr_set_seccomp, seccomp_mode_filter = 22, 2
    return libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(prog), 0, 0) == 0
