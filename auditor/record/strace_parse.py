"""Stream parser for `strace -f -ttt -y` text: trace lines in, `auditor.events` out.

Constant memory however long the trace: the only state is per live pid (its cwd, its thread
group, a syscall left `<unfinished ...>`, and lines of a child printed before its parent's
fork returned). One compiled regex per syscall shape, chosen by the syscall name, so a line
costs one split, one dict lookup and at most one match.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterable, Iterator

from ..events import (
    MARK_PREFIX,
    Accept,
    Access,
    CellMark,
    Connect,
    Event,
    Exec,
    Exit,
    Spawn,
    parse_mark,
)

# A C string as strace prints it ("..." after the quote when cut at -s), and an fd argument:
# AT_FDCWD or a number, with the -y decoration `<path>` (strace escapes `<`, `>` inside it).
_STR = r'"([^"\\]*(?:\\.[^"\\]*)*)"(?:\.\.\.)?'
_FD = r"(AT_FDCWD|-?\d+)(?:<([^>]*)>)?"
_RET = r" += (-?\d+)(?:<([^>]*)>)?"
_FLAGS = r"([A-Za-z0-9_|]+)"
_ENVP = r"(?:0x[0-9a-f]+|NULL)(?: /\* \d+ vars? \*/)?"

_OPENAT = re.compile(rf"openat\({_FD}, {_STR}, {_FLAGS}(?:, [0-7]+)?\){_RET}")
_OPENAT2 = re.compile(rf"openat2\({_FD}, {_STR}, \{{flags={_FLAGS}[^}}]*\}}, \d+\){_RET}")
_OPEN = re.compile(rf"open\({_STR}, {_FLAGS}(?:, [0-7]+)?\){_RET}")
_CREAT = re.compile(rf"creat\({_STR}, [0-7]+\){_RET}")
_EXECVE = re.compile(rf"execve\({_STR}, \[(.*)\](?:\.\.\.)?, {_ENVP}\) += (-?\d+)")
_EXECVEAT = re.compile(
    rf"execveat\({_FD}, {_STR}, \[(.*)\](?:\.\.\.)?, {_ENVP}, {_FLAGS}\) += (-?\d+)")
_ARG = re.compile(_STR)
_CHILD = re.compile(r"\) += (\d+)$")
_CHDIR = re.compile(rf"chdir\({_STR}\) += 0$")
_FCHDIR = re.compile(r"fchdir\(\d+<([^>]*)>\) += 0$")
_RENAME = re.compile(rf"rename\({_STR}, {_STR}\) += 0$")
_RENAMEAT = re.compile(rf"renameat2?\({_FD}, {_STR}, {_FD}, {_STR}(?:, {_FLAGS})?\) += 0$")
# A socket's decoration (--decode-fds=socket): `<UDP:[inode]>`, `<TCP:[ip:port->ip:port]>`.
_SOCKET = r"<((?:->|[^>])*)>"
_CONNECT = re.compile(rf"connect\(\d+(?:{_SOCKET})?, \{{sa_family=(AF_INET6?), (.*)\}}, \d+\)"
                      r" += (?:0|-1 EINPROGRESS)")
# The accepted socket names the local (served) address first: `= 6<TCP:[127.0.0.1:8000->...`.
_ACCEPTED = re.compile(r"\) += \d+<TCPv?6?:\[(.+):(\d+)->")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_HOST = re.compile(r'(?:inet_addr\("([^"]*)"\)|inet_pton\(AF_INET6, "([^"]*)")')
_RESUMED = re.compile(r"<\.\.\. [\w?]+ resumed>(.*)$")
_EXIT = re.compile(r"\+\+\+ (?:exited with (\d+)|killed by (SIG\w+)(?: \(core dumped\))?"
                   r"|superseded by execve in pid (\d+)) \+\+\+$")
_PID_CHANGED = re.compile(r"(.*) <pid changed to (\d+) \.\.\.>$")
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)", re.S)
_SIMPLE_ESCAPES = {ord("n"): b"\n", ord("t"): b"\t", ord("r"): b"\r", ord("v"): b"\v",
                   ord("f"): b"\f", ord("a"): b"\a", ord("b"): b"\b"}
_UNFINISHED = " <unfinished ...>"
_FAILED = ") = -1 E"

# Lines a child prints before its parent's fork/clone returns are held until that return names
# the child's parent (its thread group and cwd come from there); past this many, stop waiting.
PENDING_LIMIT = 2000
# Open lines remembered by their text (StraceParser._opened); past this many, start afresh,
# so memory stays constant however long the trace.
OPENED_LIMIT = 20_000


def unescape(text: str) -> str:
    """Decode a string as strace prints it (C escapes, octal/hex bytes) into a filesystem str."""
    if "\\" not in text:
        return text
    raw = _ESCAPE.sub(_unescape_one, text.encode("utf-8", "surrogateescape"))
    return os.fsdecode(raw)


def _unescape_one(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if code[0] == ord("x"):
        return bytes((int(code[1:], 16),))
    if 48 <= code[0] <= 55:  # an octal digit
        return bytes((int(code, 8) & 0xFF,))
    return _SIMPLE_ESCAPES.get(code[0], code)


def _failed_open(rest: str) -> bool:
    """Whether an open line failed (and is no cell mark), told without the full match: the
    last `) = -1 E` is its result only when no quote (the path argument) or `>` (a -y
    decoration, as on a successful open of a file so named) follows it."""
    if MARK_PREFIX in rest:
        return False
    tail = rest[rest.rfind(_FAILED):]
    return '"' not in tail and ">" not in tail


def _normal(path: str) -> str:
    if "/." in path or "//" in path or (path.endswith("/") and len(path) > 1):
        path = os.path.normpath(path)
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
    return path


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[name])
    except KeyError:
        return 0


class StraceParser:
    """Turns strace text into events; `skipped` counts lines it could not make sense of."""

    def __init__(self, cwd: str | None = None) -> None:
        self.skipped = 0
        self.skipped_examples: list[str] = []  # the first few, for diagnostics
        self._initial_cwd = cwd
        self._started = False
        self._known: set[int] = set()  # pids whose creator we have seen (or the root)
        self._leader: dict[int, int] = {}  # thread id -> thread-group leader, threads only
        self._cwd: dict[int, str | None] = {}  # per process (thread-group leader)
        self._heads: dict[int, str] = {}  # pid -> first half of an <unfinished ...> syscall
        self._pending: dict[int, list[tuple[int, str, str]]] = {}
        #: the text after the timestamp of a successful open of an absolute path -> its
        #: (path, mode, real), of a failed open -> (): a process reopening a file, processes
        #: searching for and loading the same modules
        self._opened: dict[str, tuple[str, str, str | None] | tuple[()]] = {}
        self._handlers = {
            "openat": self._openat, "openat2": self._openat2, "open": self._open,
            "creat": self._creat, "execve": self._execve, "execveat": self._execveat,
            "clone": self._spawn, "clone3": self._spawn, "fork": self._spawn,
            "vfork": self._spawn, "chdir": self._chdir, "fchdir": self._fchdir,
            "rename": self._rename, "renameat": self._renameat, "renameat2": self._renameat,
            "connect": self._connect, "accept": self._accept, "accept4": self._accept,
        }

    def parse(self, lines: Iterable[str]) -> Iterator[Event]:
        """Yield the events of `lines` in trace order (a child's early lines follow its Spawn)."""
        known = self._known
        leader = self._leader.get
        opened = self._opened.get
        general = self._general
        for line in lines:
            parts = line.split(None, 2)
            if len(parts) == 3 and (seen := opened(parts[2])) is not None:
                # The text of an open seen before (in any process): the same access again,
                # or again a failed open.
                try:
                    pid, t = int(parts[0]), float(parts[1])
                except ValueError:
                    pass  # the general path skips the line
                else:
                    if pid in known:
                        if seen:
                            yield Access(leader(pid, pid), seen[0], seen[1], seen[2], t)
                        continue
            found = general(parts, line)
            if found is not None:
                if type(found) is list:
                    yield from found
                else:
                    yield found  # type: ignore[misc]
        pending = self._pending
        for pid in list(pending):
            if pid in pending:
                yield from self._adopt(pid)

    def _general(self, parts: list[str], line: str) -> Event | list[Event] | None:
        """The events of one line, `parts` being its pid, timestamp and the rest."""
        if len(parts) < 3:
            if parts:
                self._skip(line)
            return None
        pid_text, ts, rest = parts
        try:
            pid = int(pid_text)
        except ValueError:
            self._skip(line)
            return None
        if pid not in self._known:
            if self._started:
                return self._hold(pid, ts, rest)
            self._started = True
            self._known.add(pid)
            self._cwd[pid] = self._initial_cwd
        try:
            if rest.startswith("openat("):
                return self._openat_line(pid, ts, rest)
            return self._line(pid, ts, rest.rstrip())
        except ValueError:  # a bad timestamp or number the regexes let through
            self._skip(line)
            return None

    def _openat_line(self, pid: int, ts: str, rest: str) -> Event | list[Event] | None:
        # The bulk of any trace. Failed opens (import and library searches) are dropped
        # before any match; a successful one of an absolute path is remembered by its text,
        # since nothing about it depends on the process or its cwd.
        if _FAILED in rest and _failed_open(rest):
            self._remember(rest, ())
            return None
        match = _OPENAT.match(rest)
        if match is None:
            return self._line(pid, ts, rest.rstrip())
        fd, fd_path, raw, flags, ret, ret_path = match.groups()
        if ret[0] == "-" and not raw.startswith(MARK_PREFIX):
            return None
        found = self._access(self._leader.get(pid, pid), ts, fd, fd_path, raw, flags, ret,
                             ret_path)
        if type(found) is Access and raw[:1] == "/" and "/../" not in raw and "\\" not in raw:
            self._remember(rest, (found.path, found.mode, found.real))
        return found

    def _remember(self, rest: str, access: tuple[str, str, str | None] | tuple[()]) -> None:
        if len(self._opened) >= OPENED_LIMIT:
            self._opened.clear()
        self._opened[rest] = access

    def _skip(self, line: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(line.rstrip("\n"))

    def _hold(self, pid: int, ts: str, rest: str) -> list[Event]:
        """Keep a line of a pid not seen created (yet): its Spawn may come later in the trace.
        Past PENDING_LIMIT lines the pid is adopted, and its events come out now."""
        held = self._pending.setdefault(pid, [])
        held.append((pid, ts, rest))
        return self._adopt(pid) if len(held) > PENDING_LIMIT else []

    def _adopt(self, pid: int) -> list[Event]:
        """Treat a pid nobody was seen creating as a process of its own, and replay its lines."""
        self._known.add(pid)
        self._cwd.setdefault(pid, None)
        return self._replay(pid)

    def _replay(self, pid: int) -> list[Event]:
        events: list[Event] = []
        for held_pid, ts, rest in self._pending.pop(pid, ()):
            try:
                found = self._line(held_pid, ts, rest.rstrip())
            except ValueError:
                self._skip(f"{held_pid} {ts} {rest}")
                continue
            if type(found) is list:
                events.extend(found)
            elif found is not None:
                events.append(found)  # type: ignore[arg-type]
        return events

    def _line(self, pid: int, ts: str, rest: str) -> Event | list[Event] | None:
        first = rest[0]
        if first == "<":
            match = _RESUMED.match(rest)
            head = self._heads.pop(pid, None)
            if match is None or head is None:
                self._skip(f"{pid} {ts} {rest}")
                return None
            if not head:  # the exec that changed pid was already handled
                return None
            rest = head + match.group(1)
        elif first == "+":
            return self._exit(pid, ts, rest)
        elif first == "-":
            return None  # --- SIGCHLD {...} ---: signals carry nothing we use
        if rest[-1] == ">":
            if rest.endswith(_UNFINISHED):
                self._heads[pid] = rest[:-len(_UNFINISHED)]
                return None
            changed = _PID_CHANGED.match(rest)
            if changed:  # a non-leader thread's execve: the leader's pid now runs the program
                leader = int(changed.group(2))
                self._heads[leader] = ""
                return self._execve(self._leader.get(pid, leader), ts,
                                    changed.group(1) + ") = 0")
        handler = self._handlers.get(rest[:rest.find("(")])
        if handler is None:
            return None
        return handler(self._leader.get(pid, pid), ts, rest)

    def _exit(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _EXIT.match(rest)
        if match is None:
            self._skip(f"{pid} {ts} {rest}")
            return None
        code, killer, new_pid = match.groups()
        if new_pid is not None:  # a thread's execve replaced this leader: same pid goes on
            self._leader.pop(int(new_pid), None)
            self._known.discard(int(new_pid))
            return None
        leader = self._leader.pop(pid, None)
        self._heads.pop(pid, None)
        self._known.discard(pid)
        if leader is not None:
            return None  # a thread ended, not the process
        self._cwd.pop(pid, None)
        status = int(code) if code is not None else -_signal_number(killer)
        return Exit(pid, status, float(ts))

    def _absolute(self, pid: int, path: str, fd: str | None, fd_path: str | None) -> str:
        """`path` made absolute against the dirfd decoration, or else the process cwd."""
        if path[:1] == "/":
            return _normal(path)
        if fd == "AT_FDCWD" and fd_path is not None:
            base: str | None = unescape(fd_path)
            self._cwd[pid] = base  # -y shows the cwd: free cwd tracking
        elif fd_path is not None:
            base = unescape(fd_path)
            if not path:  # AT_EMPTY_PATH: the fd itself
                return _normal(base)
        else:
            base = self._cwd.get(pid)
        if not base:
            return _normal(path)
        return _normal(f"{base}/{path}")

    def _as_named(self, pid: int, path: str, fd_path: str | None) -> str | None:
        """The relative name a program used: `path` itself when relative, or what follows the
        working directory in a path built as cwd + relative ('/nb/../src/x.py' from cwd /nb,
        as Python's import system builds them from a relative sys.path entry)."""
        if path[:1] != "/":
            return path
        if "/../" not in path:
            return None
        cwd = unescape(fd_path) if fd_path is not None else self._cwd.get(pid)
        return path[len(cwd) + 1:] if cwd and path.startswith(cwd + "/") else None

    def _access(self, pid: int, ts: str, fd: str | None, fd_path: str | None, raw: str,
                flags: str, ret: str, ret_path: str | None) -> Event | None:
        # Hot: called for every successful open, so the common cases skip the helpers.
        if raw.startswith(MARK_PREFIX):
            mark = parse_mark(unescape(raw))
            return CellMark(pid, mark[0], mark[1], float(ts)) if mark else None
        if ret[0] == "-":
            return None
        if "O_DIRECTORY" in flags:
            mode = "d"
        elif "O_RDWR" in flags and "O_TRUNC" not in flags:
            mode = "rw"  # read-write on existing content (sqlite opens so even to read)
        elif "O_WRONLY" in flags or "O_CREAT" in flags or "O_TRUNC" in flags:
            mode = "w"
        elif "O_PATH" in flags:
            return None  # a handle without reading, like a stat: not a use
        else:
            mode = "r"
        path = unescape(raw) if "\\" in raw else raw
        given = None
        if (path[:1] != "/" or "//" in path or "/./" in path or "/../" in path
                or path[-1] in "/."):  # else already absolute and normal
            if fd in (None, "AT_FDCWD"):
                given = self._as_named(pid, path, fd_path)
            path = self._absolute(pid, path, fd, fd_path)
        if ret_path is not None and "\\" in ret_path:
            ret_path = unescape(ret_path)
        return Access(pid, path, mode, ret_path, float(ts), None, "strace", given)

    def _openat(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _OPENAT.match(rest)
        if match is None:
            return self._unparsed(pid, ts, rest)
        return self._access(pid, ts, *match.groups())

    def _openat2(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _OPENAT2.match(rest)
        if match is None:
            return self._unparsed(pid, ts, rest)
        return self._access(pid, ts, *match.groups())

    def _open(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _OPEN.match(rest)
        if match is None:
            return self._unparsed(pid, ts, rest)
        return self._access(pid, ts, None, None, *match.groups())

    def _creat(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _CREAT.match(rest)
        if match is None:
            return self._unparsed(pid, ts, rest)
        raw, ret, ret_path = match.groups()
        return self._access(pid, ts, None, None, raw, "O_CREAT|O_WRONLY|O_TRUNC", ret, ret_path)

    def _execve(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _EXECVE.match(rest)
        if match is None:
            return self._unparsed(pid, ts, rest)
        raw, argv, ret = match.groups()
        if ret != "0":
            return None
        path = self._absolute(pid, unescape(raw), None, None)
        return Exec(pid, path, [unescape(a) for a in _ARG.findall(argv)], float(ts))

    def _execveat(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _EXECVEAT.match(rest)
        if match is None:
            return self._unparsed(pid, ts, rest)
        fd, fd_path, raw, argv, _flags, ret = match.groups()
        if ret != "0":
            return None
        path = self._absolute(pid, unescape(raw), fd, fd_path)
        return Exec(pid, path, [unescape(a) for a in _ARG.findall(argv)], float(ts))

    def _spawn(self, pid: int, ts: str, rest: str) -> Event | list[Event] | None:
        match = _CHILD.search(rest)
        if match is None:
            if " = -1 " in rest:
                return None  # fork failed: no child
            return self._unparsed(pid, ts, rest)
        child = int(match.group(1))
        thread = "CLONE_THREAD" in rest
        if thread:
            self._leader[child] = pid
        else:
            self._leader.pop(child, None)  # a reused thread id is a process now
            self._cwd[child] = self._cwd.get(pid)
        self._known.add(child)
        spawn = Spawn(pid, child, thread, float(ts))
        if child not in self._pending:
            return spawn
        return [spawn, *self._replay(child)]

    def _chdir(self, pid: int, ts: str, rest: str) -> None:
        match = _CHDIR.match(rest)
        if match is None:
            if " = -1 " not in rest:
                self._unparsed(pid, ts, rest)
            return None
        self._cwd[pid] = self._absolute(pid, unescape(match.group(1)), None, None)
        return None

    def _fchdir(self, pid: int, ts: str, rest: str) -> None:
        match = _FCHDIR.match(rest)
        if match is None:
            if " = -1 " not in rest:
                self._unparsed(pid, ts, rest)
            return None
        self._cwd[pid] = unescape(match.group(1))
        return None

    def _rename(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _RENAME.match(rest)
        if match is None:
            return None if " = -1 " in rest else self._unparsed(pid, ts, rest)
        target = self._absolute(pid, unescape(match.group(2)), None, None)
        return Access(pid, target, "w", None, float(ts))

    def _renameat(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _RENAMEAT.match(rest)
        if match is None:
            return None if " = -1 " in rest else self._unparsed(pid, ts, rest)
        _fd, _fd_path, _old, fd, fd_path, raw, _flags = match.groups()
        target = self._absolute(pid, unescape(raw), fd, fd_path)
        return Access(pid, target, "w", None, float(ts))

    def _connect(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _CONNECT.match(rest)
        if match is None:
            return None  # AF_UNIX / AF_NETLINK / a refused or failed connect: not a use
        socket, family, address = match.groups()
        port = _PORT.search(address)
        host = _HOST.search(address)
        if port is None or host is None:
            return self._unparsed(pid, ts, rest)
        datagram = (socket or "").startswith("UDP")
        if family == "AF_INET6":
            return Connect(pid, f"[{host.group(2)}]:{port.group(1)}", float(ts),
                           datagram=datagram)
        return Connect(pid, f"{host.group(1)}:{port.group(1)}", float(ts), datagram=datagram)

    def _accept(self, pid: int, ts: str, rest: str) -> Event | None:
        match = _ACCEPTED.search(rest)
        if match is None:
            return None  # EAGAIN on a non-blocking listener, a Unix socket: not served here
        ip, port = match.groups()
        return Accept(pid, f"{ip}:{port}", float(ts))

    def _unparsed(self, pid: int, ts: str, rest: str) -> Event | None:
        """What a handler returns for a line its pattern did not match: nothing (None)."""
        if not (rest.endswith(" = ?") or " = ? <" in rest):  # ended inside it: no result
            self._skip(f"{pid} {ts} {rest}")
        return None


def parse_strace(lines: Iterable[str], cwd: str | None = None) -> Iterator[Event]:
    """Events of a `strace -f -ttt -y` trace, streamed; `cwd` is the traced command's cwd."""
    return StraceParser(cwd).parse(lines)
