"""The ptrace backend traces real processes: files, forks, threads, execs, marks, sockets."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from auditor.common.errors import RecordFormatError
from auditor.events import (
    Accept,
    Access,
    CellMark,
    Connect,
    Exec,
    Exit,
    Spawn,
    mark_path,
    read_jsonl,
)
from auditor.record.ptrace import PtraceTracer, _probe

REPO = Path(__file__).resolve().parents[1]
ODD_NAME = "data file ü.txt"

PROGRAM = r"""
import json, os, signal, socket, subprocess, sys, threading

got_signal = []
signal.signal(signal.SIGUSR1, lambda *_: got_signal.append(1))
os.kill(os.getpid(), signal.SIGUSR1)   # must reach us through the tracer

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
port = server.getsockname()[1]
socket.create_connection(("127.0.0.1", port)).close()

open(sys.argv[1], "w").close()                       # relative: against the cwd
os.mkdir("sub")
sub = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
os.close(os.open("in sub.txt", os.O_WRONLY | os.O_CREAT, dir_fd=sub))  # against a dirfd

child = os.fork()
if child == 0:
    open("child.txt", "w").close()
    os._exit(0)
os.waitpid(child, 0)

tids = []
def in_thread():
    tids.append(threading.get_native_id())
    open("thread.txt", "w").close()
thread = threading.Thread(target=in_thread)
thread.start()
thread.join()

subprocess.run(["/bin/true"], check=True)
try:
    open(sys.argv[2])
except OSError:
    pass
print(json.dumps({"pid": os.getpid(), "child": child, "tid": tids[0], "port": port}))
sys.exit(3 if got_signal else 4)
"""


def _env() -> dict[str, str]:
    # The tracer runs `python -m auditor...`: make this checkout importable wherever it runs.
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wrapped(tmp_path: Path, argv: list[str], seccomp: bool = True,
             tracer: PtraceTracer | None = None) -> list[str]:
    command = (tracer or PtraceTracer()).wrap(argv, tmp_path)
    if not seccomp:
        command.insert(command.index("-o"), "--no-seccomp")
    return command


def _assert_all_gone(pids: set[int]) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, f"processes left running after the tracer ended: {alive}"


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp-bpf", "every-syscall"])
def test_records_files_processes_threads_marks_and_connects(tmp_path: Path, seccomp: bool) -> None:
    work = tmp_path / "work"
    work.mkdir()
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    mark = mark_path(7, "start")
    argv = [sys.executable, str(program), ODD_NAME, mark]
    done = subprocess.run(_wrapped(tmp_path, argv, seccomp), cwd=work, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    ids = json.loads(done.stdout)
    pid, child, tid = ids["pid"], ids["child"], ids["tid"]
    events = list(PtraceTracer().events(tmp_path))

    def accesses(name: str) -> list[Access]:
        return [e for e in events if isinstance(e, Access) and e.path == str(work / name)]

    odd = accesses(ODD_NAME)
    assert [(e.pid, e.mode, e.real, e.source) for e in odd] == [
        (pid, "w", str(work / ODD_NAME), "ptrace")]
    assert [(e.pid, e.mode) for e in accesses("sub/in sub.txt")] == [(pid, "w")]
    assert (pid, "d") in [(e.pid, e.mode) for e in accesses("sub")]
    assert [e.pid for e in accesses("child.txt")] == [child]
    assert [e.pid for e in accesses("thread.txt")] == [pid]  # the thread's process, not its tid
    assert any(e.path == sys.executable or e.path.endswith("python") for e in events
               if isinstance(e, Exec) and e.pid == pid)

    spawns = [(e.pid, e.child, e.thread) for e in events if isinstance(e, Spawn)]
    assert (pid, child, False) in spawns
    assert (pid, tid, True) in spawns
    true_runs = [e.pid for e in events if isinstance(e, Exec) and e.argv == ["/bin/true"]]
    assert len(true_runs) == 1 and (pid, true_runs[0], False) in spawns
    assert [e.path for e in events if isinstance(e, Exec) and e.pid == true_runs[0]] == [
        "/bin/true"]

    marks = [(e.pid, e.seq, e.phase) for e in events if isinstance(e, CellMark)]
    assert marks == [(pid, 7, "start")]
    assert not [e for e in events if isinstance(e, Access) and "flo-backpack-mark" in e.path]
    assert [(e.pid, e.address) for e in events if isinstance(e, Connect)] == [
        (pid, f"127.0.0.1:{ids['port']}")]

    exits = {e.pid: e.status for e in events if isinstance(e, Exit)}
    assert exits == {pid: 3, child: 0, true_runs[0]: 0}
    assert tid not in exits  # a thread ending is not a process ending
    # Order: the fork is recorded before anything the child did, the exit after.
    fork_at = next(i for i, e in enumerate(events) if isinstance(e, Spawn) and e.child == child)
    child_events = [i for i, e in enumerate(events) if e.pid == child]
    assert fork_at < child_events[0] and isinstance(events[child_events[-1]], Exit)
    assert isinstance(events[-1], Exit) and events[-1].pid == pid
    assert all(a.t <= b.t for a, b in zip(events, events[1:], strict=False))
    _assert_all_gone({pid, child, tid, *true_runs})


def _start_waiting(tmp_path: Path, argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    """Start a traced command that prints its pid and then waits; return the tracer and pid."""
    tracer = subprocess.Popen(_wrapped(tmp_path, argv), cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([tracer.stdout], [], [], 60)
    assert ready, "the traced command did not start within 60 s"
    line = tracer.stdout.readline()
    assert line.strip().isdigit(), f"unexpected output {line!r}: {tracer.stderr.read()}"
    return tracer, int(line)


WAITER = ("import os, signal, subprocess; child = subprocess.Popen(['sleep', '300']); "
          "print(os.getpid(), flush=True); signal.pause()")


def test_sigterm_is_forwarded_and_the_exit_signal_passed_on(tmp_path: Path) -> None:
    tracer, pid = _start_waiting(tmp_path, [sys.executable, "-c", WAITER])
    grandchildren = {p.pid for p in psutil.Process(pid).children()}
    tracer.send_signal(signal.SIGTERM)
    tracer.wait(timeout=30)
    assert tracer.returncode == -signal.SIGTERM, tracer.stderr.read()
    exits = {e.pid: e.status for e in read_jsonl(str(tmp_path / "trace.jsonl"))
             if isinstance(e, Exit)}
    assert exits[pid] == -signal.SIGTERM
    # The orphaned `sleep` is still traced, so the tracer waits for it: SIGTERM reached it too
    # (as the signal to what is left once the command is gone) or the tracer would not end.
    _assert_all_gone({pid, *grandchildren})


def test_a_command_killed_by_sigkill_ends_the_tracer_by_sigkill_without_a_traceback(
        tmp_path: Path) -> None:
    """SIGKILL (the OOM killer's) takes no handler: the tracer still dies of it, quietly."""
    done = subprocess.run(_wrapped(tmp_path, [sys.executable, "-c",
                                              "import os; os.kill(os.getpid(), 9)"]),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert done.stderr == ""


def test_tracees_die_with_a_killed_tracer(tmp_path: Path) -> None:
    tracer, pid = _start_waiting(tmp_path, [sys.executable, "-c", WAITER])
    tracees = {pid, *(p.pid for p in psutil.Process(pid).children())}
    tracer.kill()
    tracer.wait(timeout=30)
    _assert_all_gone(tracees)


def test_missing_command_fails_with_its_exit_code(tmp_path: Path) -> None:
    done = subprocess.run(_wrapped(tmp_path, [str(tmp_path / "no such program")]),
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 127
    assert "no such program" in done.stderr


def test_probe_finds_ptrace_usable_and_asks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    _probe.cache_clear()
    try:
        assert PtraceTracer.unavailable() is None
        assert PtraceTracer.unavailable() is None
        assert _probe.cache_info().hits == 1  # the second answer did not trace again
    finally:
        _probe.cache_clear()


def test_the_probe_is_a_forked_child_it_reaps() -> None:
    _probe.cache_clear()
    try:
        assert _probe() is None
        assert not psutil.Process().children()  # the probe's child was reaped
    finally:
        _probe.cache_clear()


def test_the_tracer_runs_on_the_bare_interpreter_from_any_cwd(tmp_path: Path) -> None:
    """The tracer process needs the standard library and this package's folder only: run by
    an interpreter of this version where flo-backpack is not installed (no site-packages of
    ours), with no PYTHONPATH, from a folder that holds nothing of it, it traces."""
    bare = Path.home() / ".pyenv" / "versions"
    version = ".".join(map(str, sys.version_info[:2]))
    found = sorted(bare.glob(f"{version}.*/bin/python{version}"))
    if not found:
        pytest.skip(f"no pyenv CPython {version} here")
    (tmp_path / "input.txt").write_text("x\n")
    argv = PtraceTracer().wrap(["/bin/sh", "-c", "cat input.txt > /dev/null"], tmp_path)
    assert argv[1:3] == ["-S", "-c"]  # no site: none of its start-up
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([str(found[0]), *argv[1:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    paths = {e.path for e in PtraceTracer().events(tmp_path) if e.kind == "access"}
    assert str(tmp_path / "input.txt") in paths


def test_events_of_a_record_without_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RecordFormatError, match="trace.jsonl is missing"):
        PtraceTracer().events(tmp_path)


SOCKETS_AND_RENAMES = r"""
import ctypes, json, os, socket, sys

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", 9))   # sets the default peer only: nothing is sent
udp.close()

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
port = server.getsockname()[1]
client = socket.create_connection(("127.0.0.1", port))
served, _ = server.accept()     # accept4 (what Python calls)
served.close(), client.close()
again = socket.create_connection(("127.0.0.1", port))
fd = ctypes.CDLL(None, use_errno=True).accept(server.fileno(), None, None)  # accept itself
assert fd >= 0, ctypes.get_errno()
os.close(fd), again.close()

open("draft.tmp", "w").close()
os.rename("draft.tmp", "result.txt")       # written in place: the new name is an output
os.close(os.open("result.txt", os.O_PATH))  # a handle that reads nothing, like a stat
os.mkdir("sub")
open("sub/../result.txt").close()
os.close(os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600))  # an unnamed file, no listing
print(json.dumps({"pid": os.getpid(), "port": port}))
"""


def test_udp_connects_accepts_renames_and_names_as_strace_records_them(tmp_path: Path) -> None:
    """What strace's parser reads off its -y decorations, the ptrace backend records too:
    a UDP connect is a datagram, an accepted connection names the served port, a rename
    writes its new name, an O_PATH open is no access, a relative name is kept as given, an
    O_TMPFILE open is no folder listing."""
    work = tmp_path / "work"
    work.mkdir()
    program = tmp_path / "program.py"
    program.write_text(SOCKETS_AND_RENAMES)
    done = subprocess.run(_wrapped(tmp_path, [sys.executable, str(program)]), cwd=work,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout)
    pid, served = ids["pid"], f"127.0.0.1:{ids['port']}"
    events = list(PtraceTracer().events(tmp_path))

    connects = [(e.pid, e.address, e.datagram) for e in events if isinstance(e, Connect)]
    assert connects == [(pid, "127.0.0.1:9", True), (pid, served, False), (pid, served, False)]
    assert [(e.pid, e.address) for e in events if isinstance(e, Accept)] == [
        (pid, served), (pid, served)]

    def accesses(name: str) -> list[tuple[str, str | None]]:
        return [(e.mode, e.given) for e in events
                if isinstance(e, Access) and e.path == str(work / name)]

    assert accesses("draft.tmp") == [("w", "draft.tmp")]
    assert accesses("result.txt") == [("w", None), ("r", "sub/../result.txt")]
    unnamed = [e for e in events if isinstance(e, Access) and e.path == str(work)]
    assert [(e.mode, e.given) for e in unnamed] == [("rw", ".")], unnamed
    assert unnamed[0].real and unnamed[0].real.startswith(f"{work}/#"), unnamed  # not "(deleted)"


READS = r"""
import json, os, sys
os.mkdir("real")
open("real/data.txt", "w").close()
os.symlink("real", "linked")                   # a folder reached through a symlink
os.symlink("data.txt", "real/alias.txt")       # a file that is a symlink
os.mkfifo("pipe")
for name in ("linked/data.txt", "real/alias.txt", "real", "/proc/self/status"):
    open(name, "rb").close() if name != "real" else os.close(os.open(name, os.O_RDONLY))
for name, flags in (("missing.txt", os.O_RDONLY), ("real/data.txt/x", os.O_RDONLY),
                    ("real/data.txt", os.O_RDONLY | os.O_DIRECTORY)):
    try:
        os.open(name, flags)
    except OSError:
        pass
os.close(os.open("pipe", os.O_RDONLY | os.O_NONBLOCK))
print(os.getpid())
"""


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp-bpf", "every-syscall"])
def test_reads_judged_at_entry_are_recorded_as_the_kernel_opens_them(tmp_path: Path,
                                                                    seccomp: bool) -> None:
    """A read-only open is recorded at its first stop when the tracer can tell its outcome:
    the same paths, modes and real paths as the fd would show, nothing for the ones that
    fail, and the tracee's own /proc/self."""
    work = tmp_path / "work"
    work.mkdir()
    program = tmp_path / "program.py"
    program.write_text(READS)
    done = subprocess.run(_wrapped(tmp_path, [sys.executable, str(program)], seccomp),
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    mine = [(e.path, e.mode, e.real) for e in PtraceTracer().events(tmp_path)
            if isinstance(e, Access) and e.pid == pid
            and (e.path.startswith(str(work)) or e.path.startswith("/proc/self"))]
    data = str(work / "real" / "data.txt")
    assert [m for m in mine if m[1] == "r"] == [
        (str(work / "linked" / "data.txt"), "r", data),
        (str(work / "real" / "alias.txt"), "r", data),
        (str(work / "real"), "r", str(work / "real")),
        ("/proc/self/status", "r", f"/proc/{pid}/status"),
        (str(work / "pipe"), "r", str(work / "pipe")),
    ]
    assert not [m for m in mine if "missing" in m[0] or m[0].endswith("/x")]
    assert [m for m in mine if m[0] == data] == [(data, "w", data)]  # not the O_DIRECTORY try


def test_open_at_entry_decides_only_what_the_kernel_would_agree_with(tmp_path: Path) -> None:
    """The decision itself, on this process's own memory: a readable file is recorded and
    needs no exit stop, a missing one is skipped, a write, a /proc path and a FIFO wait for
    the kernel's answer."""
    import ctypes
    import io

    from auditor.record import ptrace_syscalls as linux
    from auditor.record.ptrace_run import Task, WaitLoop

    (tmp_path / "there.txt").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    os.symlink("there.txt", tmp_path / "link.txt")
    out = io.StringIO()
    loop = WaitLoop(out, seccomp=True, main_pid=os.getpid())
    task = Task(os.getpid(), os.getpid())
    keep = []

    def decide(path: str, flags: int) -> tuple[bool, list[dict[str, object]]]:
        name = ctypes.create_string_buffer(os.fsencode(path))
        keep.append(name)
        out.seek(0), out.truncate()
        at_fdcwd = linux.AT_FDCWD & 0xFFFFFFFFFFFFFFFF
        decided = loop.open_at_entry(task, linux.SYS_OPENAT,
                                     (at_fdcwd, ctypes.addressof(name), flags, 0, 0, 0))
        loop.settle()  # what the wait loop does once the tracee runs on
        return decided, [json.loads(line) for line in out.getvalue().splitlines()]

    there = str(tmp_path / "there.txt")
    decided, events = decide(there, os.O_RDONLY)
    assert decided and [(e["path"], e["mode"], e["real"]) for e in events] == [
        (there, "r", there)]
    assert decide(str(tmp_path / "missing"), os.O_RDONLY) == (True, [])
    assert decide(there, os.O_WRONLY) == (False, [])
    assert decide(there, os.O_RDONLY | os.O_CREAT) == (False, [])
    assert decide(str(tmp_path / "link.txt"), os.O_RDONLY | os.O_NOFOLLOW) == (False, [])
    assert decide("/proc/self/status", os.O_RDONLY) == (False, [])
    assert decide(str(tmp_path / "fifo"), os.O_RDONLY) == (False, [])
    decided, events = decide(mark_path(3, "end"), os.O_RDONLY)
    assert decided and [(e["seq"], e["phase"]) for e in events] == [(3, "end")]


def test_the_filter_goes_in_by_seccomp_2_so_it_can_ask_for_no_ssbd() -> None:
    """install_seccomp asks seccomp(2) for SECCOMP_FILTER_FLAG_SPEC_ALLOW (kernels >= 4.17, as
    here), so the filter does not force the speculative store bypass mitigation on what it
    traces; prctl, which cannot ask, is the fallback. A child with prctl taken away must
    still end up filtered: /proc says mode 2 (read by the parent: an untraced child's opens
    now fail with ENOSYS)."""
    import ctypes

    from auditor.record import ptrace_syscalls as linux

    class NoPrctl:
        def __init__(self, libc: ctypes.CDLL) -> None:
            self.syscall = libc.syscall

        def prctl(self, *args: object) -> int:
            raise AssertionError("prctl used: seccomp(2) with SPEC_ALLOW failed")

    pid = os.fork()
    if pid == 0:  # the child: filter itself, stop to be looked at, report by exit code
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)  # no_new_privs, as an unprivileged tracer needs
            code = 0 if linux._set_filter(NoPrctl(libc), linux.seccomp_program()) else 2
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(code)
    _, stopped = os.waitpid(pid, os.WUNTRACED)
    filtered = "Seccomp:\t2" in Path(f"/proc/{pid}/status").read_text()
    os.kill(pid, signal.SIGCONT)
    _, ended = os.waitpid(pid, 0)
    assert os.WIFSTOPPED(stopped) and os.WIFEXITED(ended) and os.WEXITSTATUS(ended) == 0
    assert filtered


QUIET = r"""
import ctypes, os, sys
syscall = ctypes.CDLL(None, use_errno=True).syscall
syscall.restype = ctypes.c_long
syscall.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long, ctypes.c_ulong)
key = int(sys.argv[1], 16)
for name, mode in (("quiet.txt", key), ("other mode.txt", key ^ 1), ("high half.txt", key >> 32),
                   ("low half.txt", key & 0xFFFFFFFF)):
    fd = syscall(257, -100, os.fsencode(os.path.abspath(name)), os.O_RDONLY, mode)
    assert fd >= 0, ctypes.get_errno()
    os.close(fd)
os.close(os.open("plain.txt", os.O_RDONLY))
print(os.getpid())
"""


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp-bpf", "every-syscall"])
def test_an_open_with_the_quiet_key_as_its_mode_passes_the_filter_unrecorded(
        tmp_path: Path, seccomp: bool) -> None:
    """The tracer's filter lets an openat through without a stop only when its mode argument
    is the whole 64-bit key (either half alone, or the key with one bit changed, stops and is
    recorded); without the filter every open is recorded, the quiet one too."""
    work = tmp_path / "work"
    work.mkdir()
    names = ["quiet.txt", "other mode.txt", "high half.txt", "low half.txt", "plain.txt"]
    for name in names:
        (work / name).write_text(name)
    program = tmp_path / "program.py"
    program.write_text(QUIET)
    tracer = PtraceTracer()
    argv = _wrapped(tmp_path, [sys.executable, str(program), f"{tracer.quiet_key:x}"], seccomp,
                    tracer)
    done = subprocess.run(argv, cwd=work, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    seen = {Path(e.path).name for e in PtraceTracer().events(tmp_path)
            if isinstance(e, Access) and e.pid == pid and e.path.startswith(str(work))}
    assert seen == set(names[1:]) | ({"quiet.txt"} if not seccomp else set())
