"""The execution core (auditor/common/execution.py) against a real kernel: what ends a run, and
how. The recorder and flo-run's runner both run their cells through it; their own tests
(test_session, test_audit_signals, test_run_e2e, test_run_checks) check the rest end to end.

- `connect`: ready once the kernel answers with IOPub connected: a first cell's output,
  printed at once, is all there; a kernel that dies before it answers is a RuntimeError with
  the kernel gone and the channels closed.
- Which cells run: code cells with a source, not tagged `skip-execution`, in order.
- A cell that raises, a cell past the timeout, a kernel killed mid-cell: the run stops there
  with the `Status` and `FailedCell` both sides report; progress says start and end per cell.
- The after-cell hook runs after every cell and can end the run (the audit's worker watch).
- SIGINT or SIGTERM mid-cell (a real process, a real signal): the run stops at once with
  `Stopped` naming the signal, the process's own handlers back; a signal the process ignores
  stays ignored; one that comes as the work ends still stops it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nbformat
import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync

from auditor.common.execution import (
    SKIP_TAG,
    AfterCell,
    CellsRun,
    FailedCell,
    Status,
    cells_to_run,
    connect,
    notebook_client,
    run_cells,
    run_stoppable,
)

REPO = Path(__file__).resolve().parents[1]


#: Cell code that writes the kernel's pid to {path} in one step (the test waits for the file).
MARK = ("import os, pathlib, time\npart = pathlib.Path({path!r} + '.part')\n"
        "part.write_text(str(os.getpid()))\npart.rename({path!r})\n")


def _notebook(*cells: nbformat.NotebookNode | str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(c) if isinstance(c, str) else c for c in cells])


def _run(nb: nbformat.NotebookNode, cwd: Path, *, timeout: float | None = None,
         after_cell: AfterCell | None = None) -> tuple[CellsRun, list[tuple[int, int, str]]]:
    """Run `nb` in a kernel of this interpreter through the core, as both sides do: start
    the kernel, then `run_cells` inside `run_stoppable`; the kernel is shut down after."""
    km = AsyncKernelManager(kernel_name="python3")
    client = notebook_client(nb, km, cwd=cwd, timeout=timeout, startup_timeout=60)
    progress: list[tuple[int, int, str]] = []

    async def work() -> CellsRun:
        await client.async_start_new_kernel()
        await connect(client)
        return await run_cells(client, timeout=timeout, after_cell=after_cell,
                               on_cell=lambda *seen: progress.append(seen))

    try:
        return run_stoppable(work), progress
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)


def _wait_for(path: Path, what: str, alive: Callable[[], bool] = lambda: True,
              seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert alive(), f"ended before {what}"
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)


def _outputs(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []))


def test_connect_is_ready_with_iopub_connected_in_fresh_kernels(tmp_path: Path) -> None:
    """Kernel after kernel, the cell sent right after `connect` has every output it printed
    and displayed: had connect returned before IOPub's subscription was up, the first of them
    (or the status nbclient waits for) would be lost."""
    for _ in range(3):
        nb = _notebook("print('first'); print('second')", "display('shown')")
        ran, _ = _run(nb, tmp_path)
        assert ran.status == Status.COMPLETE
        assert _outputs(nb.cells[0]) == "first\nsecond\n"
        assert [o.get("data", {}).get("text/plain") for o in nb.cells[1].outputs] == [
            "'shown'"]


def test_connect_to_a_kernel_that_dies_at_start_raises_and_cleans_up(tmp_path: Path) -> None:
    """A kernelspec whose process exits at once: RuntimeError saying it died, no kernel left
    to the manager and no client channels (nbclient's clean-up ran)."""
    spec = tmp_path / "kernels" / "dies"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", "import sys; sys.exit(3)", "{connection_file}"],
        "display_name": "dies", "language": "python"}))
    km = AsyncKernelManager(kernel_name="dies", kernel_spec_manager=KernelSpecManager(
        kernel_dirs=[str(tmp_path / "kernels")]))
    client = notebook_client(_notebook("print(1)"), km, cwd=tmp_path, timeout=None,
                             startup_timeout=60)

    async def work() -> None:
        await client.async_start_new_kernel()
        await connect(client)

    started = time.monotonic()
    try:
        run_sync(work)()
    except RuntimeError as exc:
        assert "died" in str(exc), exc
    else:
        raise AssertionError("connect to a dead kernel returned")
    finally:
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
    assert time.monotonic() - started < 30, "it did not wait out the 60 s startup timeout"
    assert client.kc is None and not run_sync(km.is_alive)()


def test_cells_run_in_order_skipping_what_nbclient_skips(tmp_path: Path) -> None:
    skipped = nbformat.v4.new_code_cell("print('skipped')")
    skipped.metadata["tags"] = [SKIP_TAG]
    nb = _notebook(nbformat.v4.new_markdown_cell("# title"), "x = 20", "   \n", skipped,
                   "print(x + 1)", "import os\nprint(os.getcwd())")
    assert cells_to_run(nb) == [1, 4, 5]
    ran, progress = _run(nb, tmp_path)

    assert (ran.status, ran.failed) == (Status.COMPLETE, None)
    assert ran.cells == [(0, 1), (1, 4), (2, 5)]
    assert progress == [(0, 3, "start"), (0, 3, "end"), (1, 3, "start"), (1, 3, "end"),
                        (2, 3, "start"), (2, 3, "end")]
    assert _outputs(nb.cells[4]) == "21\n" and nb.cells[3].get("outputs") == []
    assert _outputs(nb.cells[5]).strip() == str(tmp_path), "the kernel runs in `cwd`"
    assert [nb.cells[i].execution_count for i in (1, 4, 5)] == [1, 2, 3]


def test_a_cell_that_raises_stops_the_run_and_is_named(tmp_path: Path) -> None:
    nb = _notebook("x = 1", "raise ValueError('bad row\\n 7')", "print('never')")
    seen: list[int] = []

    def after_cell(index: int) -> None:
        seen.append(index)

    ran, progress = _run(nb, tmp_path, after_cell=after_cell)

    assert ran.status == Status.FAILED
    assert ran.failed == FailedCell(1, "ValueError", "bad row\n 7")
    assert ran.failed.line == "cell 1 raised ValueError: bad row 7"
    assert ran.cells == [(0, 0), (1, 1)] and seen == [0, 1], "the hook ran after each cell"
    assert progress[-1] == (1, 3, "failed")
    assert nb.cells[2].get("outputs") == [], "nothing ran after the failure"


def test_a_cell_past_the_timeout_stops_the_run(tmp_path: Path) -> None:
    nb = _notebook("import time\ntime.sleep(120)", "print('never')")
    ran, progress = _run(nb, tmp_path, timeout=1.5)

    assert ran.status == Status.TIMEOUT
    assert ran.failed == FailedCell(0, "CellTimeoutError", "the cell ran longer than 1.5 s")
    assert progress == [(0, 2, "start"), (0, 2, "timeout")]
    assert nb.cells[1].get("outputs") == []


def test_a_kernel_killed_mid_cell_ends_the_run_as_kernel_died(tmp_path: Path) -> None:
    marker = tmp_path / "kernel.pid"
    nb = _notebook(MARK.format(path=str(marker)) + "time.sleep(120)", "print('never')")
    killed: list[int] = []

    def kill() -> None:
        _wait_for(marker, "the sleeping cell")
        pid = int(marker.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    ran, progress = _run(nb, tmp_path)
    killer.join(timeout=10)

    assert killed, "the kernel was killed"
    assert ran.status == Status.KERNEL_DIED
    assert ran.failed is not None and (ran.failed.index, ran.failed.ename) == (
        0, "DeadKernelError")
    assert progress == [(0, 2, "start"), (0, 2, "kernel-died")]


def test_the_after_cell_hook_can_end_the_run(tmp_path: Path) -> None:
    """The audit's worker watch: a worker that died while the cell ran ends the run with its
    own status, over what the cell itself did (interrupted, it raised)."""
    nb = _notebook("x = 1", "raise KeyboardInterrupt", "print('never')")

    def watch(index: int) -> tuple[Status, FailedCell] | None:
        if index == 1:
            return Status.WORKER_DIED, FailedCell(index, "WorkerDied", "worker-1 exited 1")
        return None

    ran, progress = _run(nb, tmp_path, after_cell=watch)
    assert (ran.status, ran.failed) == (Status.WORKER_DIED,
                                        FailedCell(1, "WorkerDied", "worker-1 exited 1"))
    assert progress[-1] == (1, 3, "worker-died")


# Runs a notebook through the core in its own process, so that a real signal reaches it;
# prints how the run ended, the progress seen, and whether its own handlers were put back.
STOPPABLE = r"""
import json, signal, sys
from pathlib import Path
import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from auditor.common.execution import (Stopped, connect, notebook_client, run_cells,
                                      run_stoppable)

folder = Path(sys.argv[1])
nb = nbformat.read(folder / "nb.ipynb", as_version=4)
km = AsyncKernelManager(kernel_name="python3")
client = notebook_client(nb, km, cwd=folder, timeout=None, startup_timeout=60)
progress = []
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the process's own handler
before = {int(s): signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

async def work():
    await client.async_start_new_kernel()
    await connect(client)
    return await run_cells(client, on_cell=lambda *seen: progress.append(seen))

result = {}
try:
    result["status"] = run_stoppable(work).status.value
except Stopped as stop:
    result["stopped"] = stop.signum
result["restored"] = all(signal.getsignal(s) is h for s, h in before.items())
result["progress"] = progress
client.kc.stop_channels()
run_sync(km.shutdown_kernel)(now=True)  # the caller's teardown, on the same event loop

async def ends_as_signalled():
    signal.raise_signal(signal.SIGTERM)  # handled before it returns; the work ends first
    return "done"

try:
    result["late"] = run_stoppable(ends_as_signalled)
except Stopped as stop:
    result["late"] = stop.signum
print(json.dumps(result))
"""


def _stop_mid_cell(tmp_path: Path, signals: list[signal.Signals], ignore_sigint: bool
                   ) -> tuple[dict, int]:
    """Run STOPPABLE on a notebook whose cells wait: send `signals[0]` in cell 1; when there
    are two, let cell 1 end and send the second in cell 2. Returns its result, kernel pid."""
    a, go, b = tmp_path / "a", tmp_path / "go", tmp_path / "b"
    nbformat.write(_notebook(
        "x = 1",
        MARK.format(path=str(a)) + f"while not pathlib.Path({str(go)!r}).exists():\n"
        "    time.sleep(0.05)",
        MARK.format(path=str(b)) + "time.sleep(600)",
        "print('never')"), tmp_path / "nb.ipynb")
    sigint = signal.SIG_IGN if ignore_sigint else signal.SIG_DFL  # not inherited otherwise
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        _wait_for(a, "cell 1", lambda: proc.poll() is None)
        proc.send_signal(signals[0])
        if len(signals) > 1:
            go.touch()
            _wait_for(b, "cell 2", lambda: proc.poll() is None)
            proc.send_signal(signals[1])
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return json.loads(out), int(a.read_text())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigint_mid_cell_stops_the_run_at_once(tmp_path: Path) -> None:
    result, kernel = _stop_mid_cell(tmp_path, [signal.SIGINT], ignore_sigint=False)
    assert result["stopped"] == signal.SIGINT
    # stopped in cell 1 with no end reported for it (nbclient's "dead kernel" is ours)
    assert [tuple(p) for p in result["progress"]] == [(0, 4, "start"), (0, 4, "end"),
                                                      (1, 4, "start")]
    assert result["restored"], "the process's own handlers are back"
    assert result["late"] == signal.SIGTERM, "a signal as the work ends still stops it"
    assert _gone(kernel)


def test_sigterm_mid_cell_stops_the_run_and_an_ignored_sigint_stays_ignored(
        tmp_path: Path) -> None:
    """Started with SIGINT ignored (a background job of a script): the SIGINT sent in cell 1
    is dropped, cell 1 ends, and the SIGTERM sent in cell 2 stops the run."""
    result, kernel = _stop_mid_cell(tmp_path, [signal.SIGINT, signal.SIGTERM],
                                    ignore_sigint=True)
    assert result["stopped"] == signal.SIGTERM
    assert [tuple(p) for p in result["progress"]] == [
        (0, 4, "start"), (0, 4, "end"), (1, 4, "start"), (1, 4, "end"), (2, 4, "start")]
    assert result["restored"]
    assert _gone(kernel)
