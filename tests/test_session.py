"""The recorder with real kernels: what it records, how runs end, and that nothing is left running.

Notebooks here start stray processes on purpose (one in its own session, one daemonised by a
double fork) so that "no process left behind" is checked against processes that a plain
kernel shutdown would leave running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest

from auditor.common.errors import RecordError
from auditor.events import Access, Bind, Import, assign_cells, mark_path
from auditor.record.base import Tracer
from auditor.record.hooks import HooksTracer, hook_events, read_hook_log
from auditor.record.session import Recording, RecordOptions, record

REPO = Path(__file__).resolve().parents[1]
#: Set in each test's kernel environment (every descendant inherits it), naming the test's
#: folder: tells this test's processes from those of other recordings running meanwhile.
TEST_MARK = "FLO_TEST_RECORDING"

# Cell code that leaves two processes behind: one in its own session, one reparented to init.
STRAYS = ("import subprocess\n"
          "subprocess.Popen(['sleep', '3917'], start_new_session=True)\n"
          "subprocess.run(['setsid', 'sh', '-c', 'sleep 3918 &'], check=True)")


def _notebook(tmp_path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# a test notebook")]
    nb.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    path = tmp_path / "analysis.ipynb"
    nbformat.write(nb, str(path))
    return path


def _record(path: Path, tracer: Tracer | None = None, **options: object) -> Recording:
    return record(RecordOptions(notebook=nbformat.read(str(path), as_version=4),
                                notebook_path=path, record_dir=path.parent / "record",
                                tracer=tracer or HooksTracer(),
                                env={TEST_MARK: str(path.parent)},
                                **options))  # type: ignore[arg-type]


def _leftovers(tmp_path: Path, *needles: str) -> list[str]:
    """Running processes that came from this test's recording: our descendants, processes
    whose environment carries the test's mark, or whose command line names its files."""
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == me or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(proc.cmdline())
            ours = any(parent.pid == me for parent in proc.parents())
            if (ours or proc.environ().get(TEST_MARK) == str(tmp_path)
                    or any(needle in command for needle in needles)):
                found.append(f"{proc.pid}: {command}")
        except psutil.Error:
            continue
    return found


def _assert_nothing_left(recording: Recording | None, tmp_path: Path) -> None:
    needles = [str(tmp_path / "record")]
    if recording is not None and recording.connection_file:
        needles.append(recording.connection_file)
    assert _leftovers(tmp_path, *needles) == []


def _session(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "record" / "session.json").read_text())


def test_hooks_run_records_kernel_cells_opens_and_imports(tmp_path: Path) -> None:
    (tmp_path / "measurements.csv").write_text("a,b\n1,2\n")
    path = _notebook(
        tmp_path,
        "rows = open('measurements.csv').read().splitlines()",
        "import json\nprint(json.dumps(rows))",
        "print(json.dumps(sorted(globals())))\nimport sys\n" + STRAYS,
    )
    progress: list[tuple[int, int, str]] = []
    recording = _record(path, on_cell=lambda *args: progress.append(args))

    assert recording.status == "complete" and recording.failed_cell is None
    assert recording.cells == [(0, 1), (1, 2), (2, 3)]
    assert progress == [(0, 3, "start"), (0, 3, "end"), (1, 3, "start"), (1, 3, "end"),
                        (2, 3, "start"), (2, 3, "end")]
    records = list(read_hook_log(tmp_path / "record"))
    kernel = records[0]
    assert kernel["ev"] == "kernel"
    assert Path(kernel["executable"]).resolve() == Path(sys.executable).resolve()
    assert kernel["cwd"] == str(tmp_path)
    assert recording.kernel_pid == kernel["pid"] and recording.tracer_pid is None

    marks = [(r["seq"], r["phase"]) for r in records if r["ev"] == "cell"]
    assert marks == [(0, "start"), (0, "end"), (1, "start"), (1, "end"), (2, "start"),
                     (2, "end")]
    opened = [r for r in records if r["ev"] == "open" and r["path"].endswith("measurements.csv")]
    assert [(r["path"], r["mode"], r["seq"]) for r in opened] == [
        (str(tmp_path / "measurements.csv"), "r", 0)]
    static = [r for r in records if r["ev"] == "import" and r["static"]]
    # json was loaded by the kernel long before: named in cell 2, it still counts there.
    assert ("json", 1) in {(r["module"], r["seq"]) for r in static}

    # Nothing of the bootstrap is left in the user namespace.
    executed = nbformat.read(str(tmp_path / "record" / "executed.ipynb"), as_version=4)
    names = json.loads(executed.cells[3].outputs[0]["text"])
    assert not [n for n in names if "flo" in n.lower() or n in ("runpy", "attach")]
    assert executed.cells[2].outputs[0]["text"] == '["a,b", "1,2"]\n'

    session = _session(tmp_path)
    assert session["schema"] == 1 and session["backend"] == "hooks"
    assert session["status"] == "complete" and session["code_cells"] == 3
    assert session["cells"] == [{"seq": 0, "index": 1}, {"seq": 1, "index": 2},
                                {"seq": 2, "index": 3}]
    assert session["kernel"]["executable"] == kernel["executable"]
    assert session["notebook"] == str(path) and session["cwd"] == str(tmp_path)

    # The backend's event stream, cells assigned, puts each use in its notebook cell.
    events = list(assign_cells(HooksTracer().events(tmp_path / "record"),
                               recording.cell_of_seq))
    data = [e for e in events if isinstance(e, Access) and e.path.endswith("measurements.csv")]
    assert [(e.cell, e.source) for e in data] == [(1, "hook")]
    json_import = [e for e in events if isinstance(e, Import) and e.module == "json"]
    assert json_import and json_import[0].cell == 2
    json_file = json_import[0].path
    assert any(isinstance(e, Access) and e.path == json_file and e.cell == 2 for e in events)
    assert all(isinstance(e, (Import, Bind)) or e.url for e in hook_events(tmp_path / "record"))

    _assert_nothing_left(recording, tmp_path)


def test_the_hook_log_is_read_by_kind(tmp_path: Path) -> None:
    """Records of the kinds asked for, in file order, whether `ev` comes first (as the kernel
    side writes it) or not; other kinds, a torn last line and non-objects are left out."""
    (tmp_path / "hooks.jsonl").write_text(
        '{"ev":"open","pid":1,"t":1.0,"path":"/a"}\n'
        '{"ev":"opened","pid":1,"t":2.0,"path":"/b"}\n'
        '[1, 2]\n'
        '{"pid":1,"ev":"opened","t":3.0,"path":"/c"}\n'
        '{"pid":1,"ev":"open","t":4.0,"path":"/d"}\n'
        '{"ev":"opened","pid":1,"t":5.0,"pa')
    assert [r["path"] for r in read_hook_log(tmp_path, ("opened",))] == ["/b", "/c"]
    assert [r["path"] for r in read_hook_log(tmp_path)] == ["/a", "/b", "/c", "/d"]


def test_failing_cell_stops_the_run_and_names_the_cell(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "x = 1", "raise ValueError('bad input row 7')",
                     "open('never-written.txt', 'w')")
    recording = _record(path)

    assert recording.status == "failed"
    assert (recording.failed_cell.index, recording.failed_cell.ename,  # type: ignore[union-attr]
            recording.failed_cell.evalue) == (2, "ValueError", "bad input row 7")  # type: ignore[union-attr]
    assert recording.cells == [(0, 1), (1, 2)]
    assert not (tmp_path / "never-written.txt").exists()
    assert _session(tmp_path)["failed_cell"] == {"index": 2, "ename": "ValueError",
                                                 "evalue": "bad input row 7"}
    _assert_nothing_left(recording, tmp_path)


def test_kernel_that_dies_mid_run(tmp_path: Path) -> None:
    path = _notebook(tmp_path, STRAYS, "import os\nos._exit(1)", "print('never')")
    recording = _record(path)

    assert recording.status == "kernel-died"
    assert recording.failed_cell is not None and recording.failed_cell.index == 2
    assert _session(tmp_path)["status"] == "kernel-died"
    _assert_nothing_left(recording, tmp_path)


def test_timeout_interrupts_the_cell(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "import time\ntime.sleep(60)", "print('never')")
    started = time.monotonic()
    recording = _record(path, timeout=2)

    assert time.monotonic() - started < 40
    assert recording.status == "timeout"
    assert recording.failed_cell is not None and recording.failed_cell.index == 1
    assert recording.cells == [(0, 1)]
    # The kernel was interrupted, not killed: the timed-out cell's end reached the log.
    marks = [(r["seq"], r["phase"]) for r in read_hook_log(tmp_path / "record")
             if r["ev"] == "cell"]
    assert marks == [(0, "start"), (0, "end")]
    _assert_nothing_left(recording, tmp_path)


def test_unknown_kernel_name_is_a_clear_error(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "print(1)")
    with pytest.raises(RecordError, match=r"no-such-kernel-xyz.*jupyter kernelspec list"):
        _record(path, kernel_name="no-such-kernel-xyz")
    _assert_nothing_left(None, tmp_path)


def test_python_without_ipykernel_is_a_clear_error(tmp_path: Path) -> None:
    bare = Path.home() / ".pyenv" / "versions" / "3.8.18" / "bin" / "python"
    if not bare.exists():
        pytest.skip("needs a Python 3.8 without ipykernel under ~/.pyenv")
    if subprocess.run([str(bare), "-c", "import ipykernel"], capture_output=True).returncode == 0:
        pytest.skip(f"{bare} has ipykernel")
    path = _notebook(tmp_path, "print(1)")
    with pytest.raises(RecordError, match="has no ipykernel.*pip install ipykernel"):
        _record(path, python=str(bare))


def test_python_option_runs_that_interpreter(tmp_path: Path) -> None:
    path = _notebook(tmp_path, "import sys\nprint(sys.executable)")
    recording = _record(path, python=sys.executable, kernel_name="no-such-kernel-xyz")
    assert recording.status == "complete"
    assert recording.kernel["executable"] == sys.executable
    _assert_nothing_left(recording, tmp_path)


def test_strace_sees_the_cell_marks(tmp_path: Path) -> None:
    from auditor.record.strace import StraceTracer

    if reason := StraceTracer.unavailable():
        pytest.skip(f"strace backend unavailable: {reason}")
    path = _notebook(tmp_path, "x = 1", STRAYS)
    recording = _record(path, StraceTracer())

    assert recording.status == "complete"
    assert recording.tracer_pid is not None and recording.tracer_pid != recording.kernel_pid
    trace = (tmp_path / "record" / "trace.strace").read_text(errors="replace")
    positions = [trace.find(f'"{mark_path(seq, phase)}"')
                 for seq in (0, 1) for phase in ("start", "end")]
    assert -1 not in positions and positions == sorted(positions), positions
    assert str(recording.kernel_pid) in trace
    _assert_nothing_left(recording, tmp_path)


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    path = _notebook(tmp_path, STRAYS, "import time\ntime.sleep(120)")
    record_dir = tmp_path / "record"
    script = (
        "import sys, nbformat\n"
        "from pathlib import Path\n"
        "from auditor.common.errors import Interrupted\n"
        "from auditor.record.hooks import HooksTracer\n"
        "from auditor.record.session import RecordOptions, record\n"
        f"path = Path({str(path)!r})\n"
        "try:\n"
        "    record(RecordOptions(notebook=nbformat.read(str(path), as_version=4),\n"
        f"                         notebook_path=path, record_dir=Path({str(record_dir)!r}),\n"
        "                         tracer=HooksTracer(),\n"
        f"                         env={{{TEST_MARK!r}: {str(tmp_path)!r}}}))\n"
        "except Interrupted as exc:\n"
        "    print('interrupted:', exc)\n"
        "    sys.exit(130)\n"
        "print('ran to the end')\n"
    )
    recorder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not _cell_started(record_dir, seq=1):
            assert recorder.poll() is None, recorder.communicate()
            assert time.monotonic() < deadline, "the sleeping cell never started"
            time.sleep(0.1)
        recorder.send_signal(signal.SIGINT)
        out, err = recorder.communicate(timeout=60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert recorder.returncode == 130, (out, err)
    assert "interrupted" in out
    _assert_nothing_left(None, tmp_path)


def _cell_started(record_dir: Path, seq: int) -> bool:
    return any(r.get("ev") == "cell" and r.get("seq") == seq and r.get("phase") == "start"
               for r in read_hook_log(record_dir))


# A parent whose children come from its main thread and from another thread (each thread has
# its own /proc children file), one of them with a child of its own; prints the pids, waits.
FAMILY = r"""
import subprocess, sys, threading
kids, started, done = [subprocess.Popen(["sh", "-c", "sleep 3919 & wait"])], \
    threading.Event(), threading.Event()
def start():  # the thread stays alive: its child stays listed under it, not the main thread
    kids.append(subprocess.Popen(["sleep", "3920"])); started.set(); done.wait()
threading.Thread(target=start, daemon=True).start()
started.wait()
print(" ".join(str(k.pid) for k in kids), flush=True)
sys.stdin.read()
"""


def test_descendants_are_found_from_every_thread_as_psutil_finds_them() -> None:
    from auditor.common import tree as cleanup

    parent = subprocess.Popen([sys.executable, "-c", FAMILY], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        kids = [int(pid) for pid in parent.stdout.readline().split()]  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while len(psutil.Process(kids[0]).children()) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # the shell starts its sleep
        grandchild = psutil.Process(kids[0]).children()[0].pid
        found = cleanup.descendant_pids([parent.pid])
        assert cleanup._PROC_CHILDREN  # this machine's kernel lists children: the fast path
        assert sorted(found) == sorted([*kids, grandchild])
        assert found.index(kids[0]) < found.index(grandchild)  # parents first
        by_ppid = cleanup._descendants_by_ppid([parent.pid])
        assert sorted(by_ppid) == sorted(found)
        assert sorted(p.pid for p in psutil.Process(parent.pid).children(recursive=True)) == \
            sorted(found)
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()


def test_a_snapshot_asked_for_after_a_cell_comes_at_once_on_the_watcher_thread() -> None:
    from auditor.common.tree import ProcessTree

    parent = subprocess.Popen([sys.executable, "-c", FAMILY], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    tree = ProcessTree("test-soon")
    try:
        tree.add_root(parent.pid)  # before its children exist: the first snapshot misses them
        tree.start_watching(interval=3600)  # its own ticks never come within the test
        kids = {int(pid) for pid in parent.stdout.readline().split()}  # type: ignore[union-attr]
        assert not kids & {pid for pid, _ in tree.seen}
        tree.snapshot_soon()
        deadline = time.monotonic() + 5
        while not kids <= {pid for pid, _ in tree.seen} and time.monotonic() < deadline:
            time.sleep(0.005)
        assert kids <= {pid for pid, _ in tree.seen}
        assert tree.stop_all() == []  # the watcher ends promptly and everything is stopped
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                       for pid in kids)
    finally:
        parent.kill()
        parent.wait()
