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


def _running(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{pid}: {' '.join(proc.cmdline())[:160]}")
        except psutil.Error:
            continue
    return found


def _gone_within(pids: list[int], seconds: float) -> list[str]:
    """The processes of `pids` still running after a bounded wait for their death signal."""
    deadline = time.monotonic() + seconds
    while (left := _running(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.parametrize(("backend", "workers"), [
    ("strace", 0), ("strace", 1), ("ptrace", 0), ("ptrace", 1), ("hooks", 0)],
    ids=["strace", "strace-workers", "ptrace", "ptrace-workers", "hooks"])
def test_sigkill_mid_cell_leaves_nothing_running_and_the_next_start_sweeps(
        tmp_path: Path, backend: str, workers: int) -> None:
    """SIGKILL runs no teardown: the tracers, the kernel and the --workers scheduler and worker
    die by their parent-death signal, and the folders left in the temporary directory are
    removed by the next flo-audit. With --workers the cell first waits for its worker, as a
    notebook using the pool does, so the kill comes with the pool up (not while a worker is
    still starting)."""
    from auditor.record.base import get_tracer

    if (reason := get_tracer(backend).unavailable()) is not None:
        pytest.skip(reason)
    marker = tmp_path / "started.json"
    nb = nbformat.v4.new_notebook()
    wait = (f"from distributed import Client\nClient().wait_for_workers({workers}, timeout=120)\n"
            if workers else "")
    nb.cells = [nbformat.v4.new_code_cell(
        wait + "import json, os, pathlib, time\n"
        f"part = pathlib.Path({str(marker)!r} + '.part')\n"
        "part.write_text(json.dumps(os.getpid()))\n"
        f"part.rename({str(marker)!r})\n"
        "time.sleep(600)")]
    nbformat.write(nb, tmp_path / "sleepy.ipynb")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]),
                   tmp_path / "quick.ipynb")
    temp = tmp_path / "tmp"
    temp.mkdir()
    foreign = temp / "flo-audit-not-ours"  # no owner file: never removed
    foreign.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    audit = [sys.executable, "-m", "auditor", "--backend", backend]
    pool = ["--workers", str(workers)] if workers else []
    proc = subprocess.Popen([*audit, *pool, "sleepy.ipynb", "-o", "bp"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"flo-audit exited {proc.returncode}"
            assert time.monotonic() < deadline, "the sleeping cell never started"
            time.sleep(0.1)
        kernel = json.loads(marker.read_text())
        started = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert kernel in started, "the kernel runs under flo-audit"
        assert len(started) >= (1 if backend == "hooks" else 2) + 4 * workers, \
            "a tracer above the kernel, and above the scheduler and each worker"
    finally:
        proc.kill()
        proc.wait()
    assert _gone_within(started, 10) == [], "tracer and kernel die with flo-audit"
    left = sorted(p.name for p in temp.iterdir() if p != foreign)
    assert any(name.startswith("flo-audit-sleepy-") for name in left), left

    done = subprocess.run([*audit, "quick.ipynb", "-o", "quick-bp"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ours = sorted(p.name for p in temp.iterdir() if p.name.startswith("flo-"))
    assert ours == [foreign.name], "the next start removes what the killed audit left, only that"
    strays = [f"{p.pid}: {' '.join(p.info['cmdline'])[:160]}"
              for p in psutil.process_iter(["cmdline", "status"])
              if p.info["status"] != psutil.STATUS_ZOMBIE
              and str(temp) in " ".join(p.info["cmdline"] or [])]
    assert strays == [], "no process of the killed audit runs on"


def test_strace_passes_its_death_on_to_what_it_traces() -> None:
    """A --workers process has no kernel side to set its own parent-death signal: its strace
    kills it on exit (--kill-on-exit) or, older, passes on the SIGHUP it gets (-I2)."""
    from auditor.record.strace import StraceTracer

    tracer = StraceTracer()
    for stem in ("trace", "trace-worker-1"):
        argv = tracer.wrap(["python"], Path("/tmp"), stem=stem)
        options = argv[:argv.index("--")]
        if "--kill-on-exit" in options:
            assert tracer.death_signal(stem) == signal.SIGKILL
        elif stem == "trace":  # the kernel kills itself (kernels/flo_kernel.py)
            assert "-I2" not in options and tracer.death_signal(stem) == signal.SIGKILL
        else:
            assert "-I2" in options and tracer.death_signal(stem) == signal.SIGHUP
