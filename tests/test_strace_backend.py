"""The strace backend with the real strace binary: the command it builds, what it records,
and what it tells about the machine and the record."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from auditor.api import record_events
from auditor.common.errors import RecordFormatError
from auditor.common.process import run
from auditor.events import Access, CellMark, Exec, Exit, Spawn
from auditor.record import base, strace
from auditor.record.strace import StraceTracer

NAMES = ["with space", 'quo"te', "back\\slash", "nön-ascii ü", "new\nline", "tab\there",
         "gt>lt<", "paren) = 3", "semi;colon $HOME", os.fsdecode(b"\xff\xfebytes")]

WRITER = f"names = {NAMES!r}\n" + r"""
import os, sys, threading, subprocess
out = sys.argv[1]
def write(name):
    with open(os.path.join(out, name), "w") as f:
        f.write("x")
threads = [threading.Thread(target=write, args=(n,)) for n in names[:3]]
for t in threads: t.start()
for t in threads: t.join()
for n in names[3:]:
    write(n)
os.chdir(out)
open(names[0]).read()
try:
    open("/.flo-backpack-mark/cell/2/start")
except OSError:
    pass
subprocess.run(["true"])
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, Path, list, StraceTracer]:
    if StraceTracer.unavailable():
        pytest.skip(f"strace cannot run here: {StraceTracer.unavailable()}")
    record = tmp_path_factory.mktemp("record")
    out = tmp_path_factory.mktemp("out")
    tracer = StraceTracer()
    argv = tracer.wrap([sys.executable, "-c", WRITER, str(out)], record)
    run(argv, timeout=60, what="tracing the writer")
    return record, out, list(tracer.events(record)), tracer


def test_wrap_builds_the_strace_command(tmp_path):
    argv = StraceTracer().wrap(["python", "-m", "ipykernel"], tmp_path)
    assert Path(argv[0]).name == "strace"
    assert argv[1:argv.index("--")] == [
        "-f", "--seccomp-bpf", "-ttt", "-q", "--decode-fds=path,socket", "-s", "4096",
        "-e", "trace=open,openat,openat2,creat,execve,execveat,fork,vfork,clone,clone3,"
              "chdir,fchdir,rename,renameat,renameat2,connect,accept,accept4",
        "-o", str(tmp_path / "trace.strace")]
    assert argv[argv.index("--") + 1:] == ["python", "-m", "ipykernel"]


def test_live_trace_gives_the_real_names(recorded):
    record, out, events, tracer = recorded
    assert tracer.parser is not None and tracer.parser.skipped == 0
    assert (record / "trace.strace").stat().st_size > 0
    written = {e.path for e in events if isinstance(e, Access) and e.mode == "w"}
    real = {e.real for e in events if isinstance(e, Access) and e.mode == "w"}
    on_disk = {str(p) for p in out.iterdir()}
    assert {str(out / n) for n in NAMES} == on_disk  # the program did write them all
    assert on_disk <= written and on_disk <= real
    reread = [e for e in events if isinstance(e, Access) and e.mode == "r"
              and e.path == str(out / NAMES[0])]
    assert reread, "the relative open after chdir was not resolved"


def test_live_trace_has_processes_threads_and_marks(recorded):
    _, _, events, _ = recorded
    root = events[0].pid
    assert isinstance(events[0], Exec) and events[0].path == sys.executable
    threads = [e for e in events if isinstance(e, Spawn) and e.thread]
    assert len(threads) >= 3
    # writes from the three threads are attributed to the process
    assert all(e.pid == root for e in events if isinstance(e, Access) and "with space" in e.path)
    assert [(e.pid, e.seq, e.phase) for e in events if isinstance(e, CellMark)] == \
        [(root, 2, "start")]
    true = [e for e in events if isinstance(e, Exec) and e.argv == ["true"]]
    assert len(true) == 1 and true[0].pid != root
    assert Exit(root, 0, events[-1].t) == events[-1]


def test_no_warning_when_the_filter_was_used(recorded):
    assert StraceTracer().warnings(recorded[0]) == []


def test_seccomp_fallback_is_reported(tmp_path):
    if StraceTracer.unavailable():
        pytest.skip("strace cannot run here")
    # without -f strace refuses the filter, and says so on stderr (as it would in kernel.stderr)
    done = run(["strace", "--seccomp-bpf", "-e", "trace=openat", "-o", os.devnull, "true"],
               timeout=30, check=False)
    (tmp_path / "kernel.stderr").write_text("kernel starting\n" + done.stderr)
    (tmp_path / "trace.strace").write_text("")
    warnings = StraceTracer().warnings(tmp_path)
    assert len(warnings) == 1 and "seccomp" in warnings[0]
    assert "\n" not in warnings[0]


def test_events_use_the_cwd_derive_passes(tmp_path):
    """The run's cwd comes from session.json as derive read it (record_events), not from a
    second read of the file: the tracer is told it, and reads no session.json itself."""
    (tmp_path / "trace.strace").write_text(
        '10  1.5 open("data/x.csv", O_RDONLY) = 3</home/u/nb/data/x.csv>\n'
        '10  1.6 +++ exited with 0 +++\n')
    tracer = StraceTracer(cwd="/home/u/nb")
    events = list(tracer.events(tmp_path))
    assert events[0] == Access(10, "/home/u/nb/data/x.csv", "r", "/home/u/nb/data/x.csv", 1.5,
                               given="data/x.csv")
    assert tracer.parser is not None and tracer.parser.skipped == 0
    # A session.json beside the trace is not read: a tracer told no cwd leaves the relative
    # name relative, and only the cwd derive passes counts.
    (tmp_path / "session.json").write_text(json.dumps({"schema": 1, "cwd": "/elsewhere"}))
    assert next(iter(StraceTracer().events(tmp_path))).path == "data/x.csv"
    events, _ = record_events(tmp_path, "strace", "/home/u/nb")
    assert next(events).path == "/home/u/nb/data/x.csv"


def test_missing_trace_is_a_clear_error(tmp_path):
    with pytest.raises(RecordFormatError, match="trace.strace"):
        StraceTracer().events(tmp_path)


def test_unavailable_without_the_binary(monkeypatch, tmp_path):
    strace._probe.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))
    try:
        assert "not installed" in (StraceTracer.unavailable() or "")
    finally:
        strace._probe.cache_clear()


def test_registered_by_name():
    assert base._REGISTRY["strace"] is StraceTracer
