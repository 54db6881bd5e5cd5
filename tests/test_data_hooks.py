"""Without a syscall tracer: the kernel side's own records (open, listdir/glob, url) are enough
for the data draft's folder entry and URL entry (the hooks backend, where ptrace is denied)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import STAND_IN_SHELL

from auditor.backpack.checksums import directory_checksum
from auditor.emit.data.collect import DataRules, draft_data
from auditor.record.hooks import HooksTracer

KERNEL_SIDE = Path(__file__).resolve().parent.parent / "kernels" / "flo_kernel.py"

SCRIPT = r'''
import glob, os, runpy, sys, urllib.request

kernel_side, log, work = sys.argv[1:4]
os.chdir(work)

''' + STAND_IN_SHELL + r'''
shell = Shell()
runpy.run_path(kernel_side, run_name="_flo_backpack_kernel")["attach"](
    shell, {"log": log, "marks": False})
shell.events.handlers["pre_run_cell"][0](None)
texts = [open(p).read() for p in sorted(glob.glob("series/*.txt"))]
try:
    urllib.request.urlopen("http://127.0.0.1:9/none.csv", timeout=1)  # refused: still named
except OSError:
    pass
shell.events.handlers["post_run_cell"][0](None)
'''


def test_hooks_alone_make_folder_and_url_entries(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for i in range(3):
        (work / "series").mkdir(parents=True, exist_ok=True)
        (work / "series" / f"{i}.txt").write_text(str(i) * (i + 1))
    record = tmp_path / "record"
    record.mkdir()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(KERNEL_SIDE),
                           str(record / "hooks.jsonl"), str(work)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = [json.loads(line)["path"] for line in (record / "hooks.jsonl").open()
              if '"listdir"' in line]
    assert str(work / "series" / "*.txt") in listed  # glob's pattern, as the hook saw it
    events = list(HooksTracer().events(record))
    assert any(e.kind == "access" and e.mode == "d" and e.path == str(work / "series")
               for e in events)
    pid = next(e.pid for e in events if e.kind == "access")
    # The kernel's cell marks set cells; here the stream is used as hooks give it.
    for event in events:
        event.cell = 0
    # Everything outside the work folder is the interpreter's (the stdlib the URL opener loads).
    draft = draft_data(events, {pid: "manager"}, owned=lambda p, r: not p.startswith(str(work)),
                       notebook_dir=str(work), cwd=str(work),
                       rules=DataRules(home=str(tmp_path / "home"), environ={}))
    by_target = {e.target_location: e for e in draft.inputs}
    assert set(by_target) == {"series", "none.csv"}
    assert by_target["series"].files == 3
    assert by_target["series"].checksum == directory_checksum(work / "series")
    assert by_target["none.csv"].source == "http://127.0.0.1:9/none.csv"
