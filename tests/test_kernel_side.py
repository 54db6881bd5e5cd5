"""kernels/flo_kernel.py alone, in plain interpreters of every supported version.

The IPython shell is the protocol edge here: a stand-in records the handlers `attach`
registers and the test calls them as IPython would around a cell. Everything else is real:
real opens, a real subprocess, a real TCP connection, a real fork.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import STAND_IN_SHELL

from auditor.events import mark_path as events_mark_path

KERNEL_SIDE = Path(__file__).resolve().parent.parent / "kernels" / "flo_kernel.py"
PYENV = Path.home() / ".pyenv" / "versions"

# Runs inside the interpreter under test; argv: kernel side path, log path, work dir.
SCRIPT = r'''
import json, os, runpy, socket, subprocess, sys, threading, glob, urllib.request

kernel_side, log, work, marks = sys.argv[1:5]
os.chdir(work)

''' + STAND_IN_SHELL + r'''Shell.transform_cell = lambda self, raw: raw.replace("%time ", "")

class Info:
    raw_cell = ("import json\nfrom os import path\nimport email.mime.text\n"
                "from . import local\nimport not_installed_anywhere\n%time import csv\n")

class Result:
    info = Info()

shell = Shell()
path_before = list(sys.path)
result = runpy.run_path(kernel_side, run_name="_flo_backpack_kernel")["attach"](
    shell, {"log": log, "marks": marks == "marks"})
assert result is None
assert "_flo_backpack_kernel" not in sys.modules
assert sys.path == path_before

shell.events.handlers["post_run_cell"][0](Result())   # the bootstrap cell's own end: ignored
shell.events.handlers["pre_run_cell"][0](Info())
open("input.txt").read()
with open("output.txt", "w") as out:
    out.write("x")
os.close(os.open("both.txt", os.O_RDWR | os.O_CREAT))
try:
    open("missing.txt")
except OSError:
    pass
os.listdir("sub")
glob.glob("sub/*.csv")
subprocess.run(["true"], check=True)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname())
client.close()
server.close()
urllib.request.urlopen("file://" + os.path.abspath("input.txt")).close()
import email.mime.text
import csv
child = os.fork()
if child == 0:
    open("child.txt").read()
    os._exit(0)
os.waitpid(child, 0)
shell.events.handlers["post_run_cell"][0](Result())
open("between.txt").read()
sys.stdout.write(json.dumps({"pid": os.getpid(), "child": child,
                             "modules": sorted(sys.modules)}))
'''


def _interpreters() -> list[str]:
    found = [sys.executable]
    for version in ("3.8", "3.13"):
        candidates = sorted(PYENV.glob(f"{version}.*/bin/python"))
        if candidates:
            found.append(str(candidates[-1]))
    return found


def _run(python: str, tmp_path: Path, marks: bool = False) -> tuple[list[dict], dict]:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    for name in ("input.txt", "child.txt", "between.txt"):
        (work / name).write_text("data\n")
    log = tmp_path / "hooks.jsonl"
    done = subprocess.run([python, "-c", SCRIPT, str(KERNEL_SIDE), str(log), str(work),
                           "marks" if marks else "hooks only"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return records, json.loads(done.stdout)


@pytest.mark.parametrize("python", _interpreters(), ids=lambda p: Path(p).parent.parent.name)
def test_kernel_side_logs_one_cell(python: str, tmp_path: Path) -> None:
    records, facts = _run(python, tmp_path)
    work = tmp_path / "work"
    pid = facts["pid"]

    kernel = records[0]
    assert kernel["ev"] == "kernel" and kernel["pid"] == pid and kernel["seq"] is None
    assert Path(kernel["executable"]).name.startswith("python")
    assert kernel["markers"]["python_full_version"] == kernel["version"]
    assert kernel["cwd"] == str(work)
    assert any(p.endswith("os.py") for p in kernel["modules"])

    cells = [(r["seq"], r["phase"]) for r in records if r["ev"] == "cell"]
    assert cells == [(0, "start"), (0, "end")]  # the bootstrap's post_run_cell was ignored

    opens = {(r["path"], r["mode"], r["seq"], r["pid"]) for r in records if r["ev"] == "open"}
    assert (str(work / "input.txt"), "r", 0, pid) in opens
    assert (str(work / "output.txt"), "w", 0, pid) in opens
    assert (str(work / "both.txt"), "rw", 0, pid) in opens
    assert (str(work / "between.txt"), "r", None, pid) in opens  # after the cell: machinery
    assert (str(work / "child.txt"), "r", 0, facts["child"]) in opens
    paths = {path for path, _, _, _ in opens}
    assert str(work / "missing.txt") not in paths  # a failed read is not a use
    assert str(tmp_path / "hooks.jsonl") not in paths
    assert not any(p.startswith("/.flo-backpack-mark/") for p in paths)

    listed = {r["path"] for r in records if r["ev"] == "listdir"}
    assert {str(work / "sub"), str(work / "sub" / "*.csv")} <= listed

    execs = [r for r in records if r["ev"] == "exec"]
    assert len(execs) == 1, execs  # Popen and posix_spawn (3.13) are one exec
    assert execs[0]["argv"] == ["true"] and Path(execs[0]["path"]).name == "true"
    assert Path(execs[0]["path"]).is_absolute()

    connects = [r["address"] for r in records if r["ev"] == "connect"]
    assert len(connects) == 1 and connects[0].startswith("127.0.0.1:")
    assert [r["url"] for r in records if r["ev"] == "url"] == [f"file://{work}/input.txt"]

    forks = [r for r in records if r["ev"] == "fork"]
    assert forks == [dict(forks[0], pid=pid, child=facts["child"], seq=0)]

    imports = {(r["module"], r["static"]) for r in records if r["ev"] == "import"}
    # json and os were loaded long before the cell: named statically, they still count.
    assert {("json", True), ("os", True), ("os.path", True), ("email.mime.text", True),
            ("csv", True)} <= imports
    assert not any(m in ("local", "not_installed_anywhere") for m, _ in imports)
    assert ("email.mime", False) in imports  # loaded as a side effect: seen as new
    by_module = {r["module"]: r for r in records if r["ev"] == "import"}
    assert by_module["json"]["path"].endswith("json/__init__.py")
    assert all(r["seq"] == 0 for r in by_module.values())


def test_mark_path_matches_the_event_model() -> None:
    import runpy

    kernel_side = runpy.run_path(str(KERNEL_SIDE), run_name="_flo_backpack_kernel_test")
    for seq, phase in ((0, "start"), (12, "end")):
        assert kernel_side["mark_path"](seq, phase) == events_mark_path(seq, phase)


def test_markers_match_packaging(tmp_path: Path) -> None:
    from packaging.markers import default_environment

    records, _ = _run(sys.executable, tmp_path)
    assert records[0]["markers"] == default_environment()


def test_with_a_syscall_tracer_opens_and_listings_are_left_to_it(tmp_path: Path) -> None:
    records, _ = _run(sys.executable, tmp_path, marks=True)
    # The tracer records every open (which succeeded, in which mode) and every listing: the
    # kernel side writes none of them, only what a syscall cannot show.
    assert not [r for r in records if r["ev"] in ("open", "listdir")]
    assert [(r["seq"], r["phase"]) for r in records if r["ev"] == "cell"] == [
        (0, "start"), (0, "end")]
    assert {r["module"] for r in records if r["ev"] == "import"} >= {"json", "csv"}
    assert [r["url"] for r in records if r["ev"] == "url"] == [
        f"file://{tmp_path / 'work'}/input.txt"]


def test_open_modes_from_python_mode_strings_and_flags() -> None:
    import runpy

    kernel_side = runpy.run_path(str(KERNEL_SIDE), run_name="_flo_backpack_kernel_test")
    mode = kernel_side["_open_mode"]
    assert [mode(m, None) for m in ("rb", "r+b", "w+b", "a+", "wb", "x")] == \
        ["r", "rw", "w", "rw", "w", "w"]
    assert mode(None, os.O_RDWR | os.O_CREAT | os.O_TRUNC) == "w"
    assert mode(None, os.O_RDWR | os.O_CREAT) == "rw"


def test_relative_names_are_kept_as_the_code_used_them(tmp_path, monkeypatch) -> None:
    """'../data/x.csv' as given, and '<cwd>/../src/m.py' (how the import system joins a
    relative sys.path entry) as '../src/m.py'; a plain absolute path has no relative name."""
    import runpy

    kernel_side = runpy.run_path(str(KERNEL_SIDE), run_name="_flo_backpack_kernel_test")
    as_named = kernel_side["_as_named"]
    monkeypatch.chdir(tmp_path)
    assert as_named("../data/x.csv") == "../data/x.csv"
    assert as_named(f"{tmp_path}/../src/m.py") == "../src/m.py"
    assert as_named("/etc/hosts") is None and as_named("/elsewhere/../x") is None


@pytest.mark.parametrize("cwd", ["tmp", "/"])
def test_absolute_paths_are_those_abspath_gives(tmp_path, monkeypatch, cwd: str) -> None:
    """The open hook's own abspath skips normpath for paths with nothing to normalise; every
    shape that needs it (., .., doubled and trailing slashes, a leading //) must still match."""
    import runpy

    absolute = runpy.run_path(str(KERNEL_SIDE), run_name="_flo_backpack_kernel_test")["_absolute"]
    monkeypatch.chdir(tmp_path if cwd == "tmp" else "/")
    paths = ["x.csv", "data/x.csv", "./x", "../x", "a/./b", "a/../b", "a//b", "a/", ".", "..",
             ".hidden/x", "a/.b", "a/b.", "", "/etc/hosts", "/a/../b", "/a/./b", "//a", "///a",
             "/a//b/", "/", "/.x/y", "é/ü.txt", "x\udcff"]
    assert [absolute(p) for p in paths] == [os.path.abspath(p) for p in paths]


# Runs traced by ptrace_run; argv: kernel side path, log path, work dir, the tracer's key.
QUIET_SCRIPT = r'''
import _io, json, os, runpy, sys

kernel_side, log, work, key = sys.argv[1:5]
os.chdir(work)

''' + STAND_IN_SHELL + r'''
shell = Shell()
runpy.run_path(kernel_side, run_name="_flo_backpack_kernel")["attach"](
    shell, {"log": log, "marks": True, "quiet_key": int(key)})
sys.path[:0] = [os.path.join(work, "absent"), work, os.path.join(work, "zipped.zip")]
shell.events.handlers["pre_run_cell"][0](None)
import quietmod
import inzip
try:
    _io.open_code(os.path.join(work, "missing.py"))
except FileNotFoundError as exc:
    missing = exc.filename
try:
    _io.open_code(os.path.join(work, "quietmod.py") + "\0.txt")
except ValueError:
    missing += " and a NUL refused"
import builtins, io, pathlib
read = [open("input.txt").read(), pathlib.Path("input2.txt").read_bytes().decode(),
        open(file="input3.txt", mode="rt", encoding="utf-8", newline="").read()]
with open("out.txt", "w") as f:
    f.write("x")
with open("input.txt", "r+") as f:
    f.read()
with open("input4.txt", opener=os.open) as f:
    read.append(f.name + ":" + f.read())
try:
    open("absent.txt", "rb")
except FileNotFoundError as exc:
    read.append(str(exc))
try:
    open(".")
except IsADirectoryError as exc:
    read.append(type(exc).__name__)
import pickle
read.append([pickle.loads(pickle.dumps(f)) is f for f in (_io.open, io.open, open)]
            + [io.open is _io.open, open.__name__])
child = os.fork()
if child == 0:
    import inchild
    os.kill(os.getpid(), 9)  # killed in the cell: what it imported is on disk all the same
os.waitpid(child, 0)
shell.events.handlers["post_run_cell"][0](None)
data = quietmod.__loader__.get_data(quietmod.__file__)  # between cells
shell.events.handlers["pre_run_cell"][0](None)
print(json.dumps({"pid": os.getpid(), "child": child, "missing": missing, "read": read,
                  "values": [quietmod.VALUE, inzip.VALUE, type(data).__name__]}), flush=True)
import lastmod
os.kill(os.getpid(), 9)  # the kernel killed in its second cell
'''


@pytest.mark.parametrize("python", _interpreters(), ids=lambda p: Path(p).parent.parent.name)
def test_under_ptrace_the_import_systems_reads_are_the_kernel_sides_to_record(
        python: str, tmp_path: Path) -> None:
    """With the tracer's key, the kernel side reads modules (a source file through a symlink,
    a zip archive on sys.path, in the kernel and in a forked child, and in a kernel killed
    mid-cell), and the files the notebook's code reads through open, without the tracer
    seeing them, and records each as an `opened` record with its real path
    and cell, written through at once; the modules import and the files read as they would,
    a missing file raises FileNotFoundError (the C open's message, with the name as given),
    what opens for writing, with the caller's own opener or through io.open (pathlib) stays
    the tracer's, and open, io.open and the C open still pickle as themselves."""
    import zipfile

    from auditor.record.ptrace import PtraceTracer

    work = tmp_path / "work"
    (work / "real").mkdir(parents=True)
    (work / "real" / "quietmod.py").write_text("VALUE = 'q'\n")
    (work / "quietmod.py").symlink_to(work / "real" / "quietmod.py")
    (work / "inchild.py").write_text("VALUE = 'c'\n")
    (work / "lastmod.py").write_text("VALUE = 'l'\n")
    for name in ("input.txt", "input2.txt", "input3.txt", "input4.txt"):
        (work / name).write_text(f"{name}\r\n")
    with zipfile.ZipFile(work / "zipped.zip", "w") as archive:
        archive.writestr("inzip.py", "VALUE = 'z'\n")
    log, record = tmp_path / "hooks.jsonl", tmp_path / "record"
    record.mkdir()
    tracer = PtraceTracer()
    argv = tracer.wrap([python, "-c", QUIET_SCRIPT, str(KERNEL_SIDE), str(log), str(work),
                        str(tracer.quiet_key)], record)
    env = {**os.environ, "PYTHONPATH": str(KERNEL_SIDE.parents[1]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == -9, done.stderr
    facts = json.loads(done.stdout)
    assert facts["values"] == ["q", "z", "bytes"]
    assert facts["missing"] == f"{work / 'missing.py'} and a NUL refused"
    assert facts["read"] == [
        "input.txt\n", "input2.txt\r\n", "input3.txt\r\n", "input4.txt:input4.txt\n",
        "[Errno 2] No such file or directory: 'absent.txt'", "IsADirectoryError",
        [True, True, True, True, "open"]]

    opened = {(r["path"], r.get("real"), r["seq"], r["pid"])
              for r in map(json.loads, log.read_text().splitlines()) if r["ev"] == "opened"}
    ours = {entry for entry in opened if entry[0].startswith(str(work))}
    assert ours == {
        (str(work / "quietmod.py"), str(work / "real" / "quietmod.py"), 0, facts["pid"]),
        (str(work / "zipped.zip"), str(work / "zipped.zip"), 0, facts["pid"]),
        (str(work / "inchild.py"), str(work / "inchild.py"), 0, facts["child"]),
        # get_data after the cell's end: no cell's (machinery, as the tracer would say)
        (str(work / "quietmod.py"), str(work / "real" / "quietmod.py"), None, facts["pid"]),
        (str(work / "lastmod.py"), str(work / "lastmod.py"), 1, facts["pid"]),
        *((str(work / name), str(work / name), 0, facts["pid"])
          for name in ("input.txt", "input3.txt")),
        (str(work), str(work), 0, facts["pid"]),  # opened, then found to be a folder
    }
    listed = {(r["path"], r.get("real"), r["seq"], r["pid"])
              for r in map(json.loads, log.read_text().splitlines()) if r["ev"] == "listed"}
    # The path finder's listings: the folder on sys.path, listed by the kernel side; the
    # missing one was posix's listdir, a failed open the tracer saw and nobody recorded.
    assert {entry for entry in listed if entry[0].startswith(str(work))} == {
        (str(work), str(work), 0, facts["pid"])}
    attached = json.loads(log.read_text().splitlines()[0])["t"]  # the `kernel` record
    ours_traced = [e for e in tracer.events(record)
                   if getattr(e, "path", "").startswith(str(work)) and e.kind == "access"]
    # (the path finder's listing of the cwd before the kernel side attached is the tracer's)
    assert [e.t < attached for e in ours_traced if e.mode == "d"] == [True]
    traced = {e.path for e in ours_traced if e.mode != "d"}
    # pathlib opens through io.open (3.10+) or an opener of its own: the C open's
    assert traced == {str(work / "out.txt"), str(work / "input.txt"), str(work / "input4.txt"),
                      str(work / "input2.txt")}
    assert not {e.path for e in tracer.events(record) if e.kind == "access"
                and e.path.startswith(str(work)) and e.mode == "r"} & {p for p, _, _, _ in ours}
