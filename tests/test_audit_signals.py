"""flo-audit stopped by Ctrl-C (SIGINT) or `kill` (SIGTERM) while a cell runs, through the CLI:
exit 130 with one line, no backpack, no temporary record folder, and no process left (kernel,
tracer, and a process the notebook started in a session of its own)."""

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

MARK = "FLO_SIGNAL_TEST"  # inherited by everything flo-audit starts, so we can find it


def _carriers(mark: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if (proc.environ().get(MARK) == mark
                    and proc.info["status"] != psutil.STATUS_ZOMBIE):
                found.append(f"{proc.pid}: {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_cell_stops_everything_and_writes_nothing(tmp_path: Path, signum) -> None:
    marker = tmp_path / "started.json"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell(
        "import json, os, pathlib, subprocess, sys, time\n"
        "stray = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        "                         start_new_session=True)\n"
        f"part = pathlib.Path({str(marker)!r} + '.part')\n"
        "part.write_text(json.dumps([os.getpid(), stray.pid]))\n"
        f"part.rename({str(marker)!r})\n"
        "time.sleep(600)")]
    nbformat.write(nb, tmp_path / "sleepy.ipynb")
    temp = tmp_path / "tmp"
    temp.mkdir()
    mark = str(tmp_path)
    env = {**os.environ, MARK: mark, "TMPDIR": str(temp)}
    sigint = signal.SIG_IGN if signum == signal.SIGTERM else signal.SIG_DFL  # not inherited
    proc = subprocess.Popen([sys.executable, "-m", "auditor", "sleepy.ipynb", "-o", "bp"],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sleeping cell never started"
            time.sleep(0.1)
        kernel, stray = json.loads(marker.read_text())
        assert psutil.pid_exists(stray) and _carriers(mark)
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - sent < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [err.strip()] and "interrupted" in err, err
    assert not (tmp_path / "bp").exists(), "nothing is written"
    assert list(temp.iterdir()) == [], "the temporary record folder is removed"
    assert _carriers(mark) == [], "kernel, tracer and the notebook's stray process are stopped"
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in (kernel, stray))
