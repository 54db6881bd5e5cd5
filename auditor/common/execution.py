"""The one execution core of flo-audit and flo-run: which cells run, running them, how a run ends.

The audit's recorder (auditor/record/session.py) and flo-run's runner (provisioner/runner.py)
each start a kernel their own way (under a tracer; in the manager environment), then run the
notebook's cells here:

- `connect`: the client's channels to the started kernel, ready once the kernel answers
  and its IOPub is seen connected (without jupyter_client's fixed waits).
- `cells_to_run`: the cells nbclient sends to a kernel (code, not blank, not tagged
  `skip-execution`), in notebook order.
- `run_cells` executes them one at a time, reports each start and end (`CellProgress`), calls
  the caller's `AfterCell` hook (the audit's process-tree snapshot and worker watch, which may
  end the run), maps nbclient's exceptions to a `Status` and a `FailedCell`, and stops at the
  first failure.
- `run_stoppable` runs that work with SIGINT and SIGTERM handlers of its own: the first of
  them cancels the work at once, and `Stopped` (a KeyboardInterrupt) says which signal.

Both report the end the same way: one `Status` (session.json's `status`, summary.json's,
flo-run's `--json`) and, for a cell that did not complete, one `FailedCell`.

Why not nbclient's `NotebookClient.execute`: its event-loop handlers for SIGINT and SIGTERM
only start a kernel shutdown and let the wait for the cell go on (minutes). Neither side calls
it, so those handlers are never installed.
"""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from types import FrameType

    from jupyter_client.asynchronous.client import AsyncKernelClient
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbformat import NotebookNode

T = TypeVar("T")

#: nbclient does not execute a cell with this tag (its `skip_cells_with_tag` default).
SKIP_TAG = "skip-execution"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: How long `connect` waits, after a kernel_info reply, for the IOPub message that shows the
#: subscription is connected before it asks again (a request and its reply take about 1 ms).
IOPUB_PROBE_S = 0.05

class Status(str, Enum):
    """How a run ended (a `str`: compares and serialises as its value)."""

    COMPLETE = "complete"
    FAILED = "failed"  # a cell raised
    TIMEOUT = "timeout"  # a cell ran longer than --timeout
    KERNEL_DIED = "kernel-died"
    WORKER_DIED = "worker-died"  # a worker ended while a cell ran (audit --workers, derive)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FailedCell:
    """The cell that raised: its notebook index (0-based, markdown counted) and the error."""

    index: int
    ename: str
    evalue: str

    @property
    def line(self) -> str:
        """`cell 3 raised ValueError: bad input`, on one line however long the value."""
        said = f"cell {self.index} raised {self.ename or 'an error'}"
        value = " ".join(self.evalue.split())
        return f"{said}: {value}" if value else said

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "ename": self.ename, "evalue": self.evalue}

    @classmethod
    def from_json(cls, data: Any) -> FailedCell | None:
        """The record in `data` (a JSON object), or None for none; KeyError/TypeError/
        ValueError when it is malformed (the caller names the file)."""
        if not data:
            return None
        return cls(int(data["index"]), str(data.get("ename") or ""),
                   str(data.get("evalue") or ""))


#: on_cell(position, count, phase): `position` is the 0-based rank of the cell among the
#: `count` cells that will run; phase is "start", then "end" or the run's failure status.
CellProgress = Callable[[int, int, str], None]
#: after_cell(index): called after each cell however it ended; returns how the run ends when
#: something besides the cell ended it (a --workers worker died), else None.
AfterCell = Callable[[int], "tuple[Status, FailedCell] | None"]


def will_run(cell: NotebookNode) -> bool:
    """Whether the cell is sent to the kernel (nbclient skips the others silently)."""
    return (cell.cell_type == "code" and bool(cell.source.strip())
            and SKIP_TAG not in cell.get("metadata", {}).get("tags", []))


def cells_to_run(nb: NotebookNode) -> list[int]:
    """The notebook indices of the cells a run executes, in order."""
    return [index for index, cell in enumerate(nb.cells) if will_run(cell)]


@dataclass
class CellsRun:
    """What `run_cells` did: the cells started, as (seq, index) in execution order, and how
    the run ended (`failed` for any status but complete)."""

    cells: list[tuple[int, int]] = field(default_factory=list)
    status: Status = Status.COMPLETE
    failed: FailedCell | None = None


def notebook_client(nb: NotebookNode, km: KernelManager, *, cwd: Path,
                    timeout: float | None, startup_timeout: int,
                    kernel_name: str | None = None) -> NotebookClient:
    """An nbclient client of `km` for `nb`, run in `cwd`: a cell raising ends the run, and one
    running longer than `timeout` seconds (rounded up: nbclient counts whole seconds) too."""
    from nbclient import NotebookClient

    seconds = math.ceil(timeout) if timeout is not None and timeout > 0 else None
    names = {"kernel_name": kernel_name} if kernel_name else {}
    return NotebookClient(nb, km=km, timeout=seconds, startup_timeout=startup_timeout,
                          allow_errors=False, resources={"metadata": {"path": str(cwd)}},
                          **names)


async def connect(client: NotebookClient) -> None:
    """Open `client.kc` to the kernel `client.km` started, as nbclient's
    `async_start_new_kernel_client` does, and wait until the kernel is ready: its kernel_info
    reply has come and IOPub has delivered a message (so no output of the first cell is lost).

    jupyter_client's own wait has two fixed timeouts: 0.2 s for that IOPub message before it
    asks again, then 0.2 s of silence on IOPub before it returns, on every kernel start (in
    nbclient's start and so in a plain run too). Here a reply whose IOPub message has not
    come within `IOPUB_PROBE_S` is asked for again at once, and what IOPub holds then is
    dropped without waiting (nbclient reads only the messages of the cell it runs). A kernel
    that dies or does not answer within `client.startup_timeout` raises RuntimeError, with
    the kernel shut down and the channels closed, as nbclient's does."""
    from queue import Empty

    from nbclient.util import run_hook

    assert client.km is not None
    # An async manager (both callers') makes an AsyncKernelClient; nbclient types it as the base.
    kc = cast("AsyncKernelClient", client.km.client())
    client.kc = kc
    deadline = time.monotonic() + client.startup_timeout
    try:
        kc.start_channels()
        while True:
            kc.kernel_info()
            try:
                reply = await kc.shell_channel.get_msg(timeout=1)
            except Empty:
                reply = None
            if reply is not None and reply["msg_type"] == "kernel_info_reply":
                try:
                    await kc.iopub_channel.get_msg(timeout=IOPUB_PROBE_S)
                except Empty:
                    pass  # IOPub not subscribed yet: the next request's status will show it
                else:
                    kc._handle_kernel_info_reply(reply)  # the protocol version it adapts to
                    break
            if not await kc.is_alive():
                raise RuntimeError("the kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the kernel did not reply to kernel_info within "
                                   f"{client.startup_timeout} s")
        while True:  # (the async channel's get_msgs waits for ever: it polls with no timeout)
            try:
                await kc.iopub_channel.get_msg(timeout=0)
            except Empty:
                break
    except Exception:
        await client._async_cleanup_kernel()
        raise
    kc.allow_stdin = False
    await run_hook(client.on_notebook_start, notebook=client.nb)


async def run_cells(client: NotebookClient, *, timeout: float | None = None,
                    on_cell: CellProgress | None = None,
                    after_cell: AfterCell | None = None) -> CellsRun:
    """Execute `cells_to_run(client.nb)` in the started kernel of `client`, up to the first
    cell that does not complete. `timeout` is the limit as the user gave it (for the message).
    A stop by `run_stoppable` raises CancelledError, whatever nbclient made of it."""
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = client.nb
    to_run = cells_to_run(nb)
    run = CellsRun()

    def progress(position: int, phase: str) -> None:
        if on_cell is not None:
            on_cell(position, len(to_run), phase)

    for seq, index in enumerate(to_run):
        progress(seq, "start")
        run.cells.append((seq, index))
        ending: tuple[Status, FailedCell] | None = None
        try:
            await client.async_execute_cell(nb.cells[index], index)
        except CellTimeoutError:
            limit = timeout if timeout is not None else client.timeout
            ending = Status.TIMEOUT, FailedCell(index, "CellTimeoutError",
                                                f"the cell ran longer than {limit:g} s")
        except CellExecutionError as exc:
            ending = Status.FAILED, FailedCell(index, exc.ename, exc.evalue)
        except DeadKernelError as exc:
            ending = Status.KERNEL_DIED, FailedCell(index, "DeadKernelError",
                                                    str(exc) or "kernel died")
        if _stopping():  # nbclient reports a cancelled wait as a dead kernel
            raise asyncio.CancelledError
        if after_cell is not None:
            ending = after_cell(index) or ending
        if ending is not None:
            run.status, run.failed = ending
        progress(seq, "end" if ending is None else run.status.value)
        if ending is not None:
            break
    return run


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM ended a `run_stoppable` execution; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_stoppable(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `work()` to its end, unless SIGINT or SIGTERM comes first: then it is cancelled at
    once and `Stopped` is raised (whatever the cancelled work raised meanwhile). Runs on the
    event loop jupyter_core's `run_sync` uses in this thread, so what the work started (the
    kernel client's sockets) can be used and closed by `run_sync` calls afterwards. The
    process's own handlers are back when this returns; a signal it ignores stays ignored.
    In a thread other than the main one, no handler is installed."""
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    stop = _Stop()
    token = _current_stop.set(stop)
    try:
        task = loop.create_task(work())  # the task sees `stop` (its context is a copy)
    finally:
        _current_stop.reset(token)
    previous = stop.install(loop, task)
    try:
        result = loop.run_until_complete(task)
    except BaseException:
        if stop.signum is None:
            raise
        raise Stopped(stop.signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stop.signum is not None:  # it came as the work ended: the caller still learns of it
        raise Stopped(stop.signum)
    return result


class _Stop:
    """The signal that stopped a `run_stoppable` run, if any.

    A Python-level handler (not the loop's `add_signal_handler`) because it runs in the main
    thread as soon as the signal arrives and records it before anything else happens: a run
    whose last cell ends at the same moment (Ctrl-C reaches the kernel too) is still stopped.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any],
                ) -> dict[int, Any]:
        """Handlers for `STOP_SIGNALS` that cancel `task`; returns the ones they replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.signum is None:  # the first one stops; teardown is the caller's
                self.signum = signum
                loop.call_soon_threadsafe(task.cancel)

        previous: dict[int, Any] = {}
        for signum in STOP_SIGNALS:
            old = signal.getsignal(signum)
            if old is signal.SIG_IGN:  # e.g. SIGINT of a background job of a script
                continue
            previous[signum] = old if old is not None else signal.SIG_DFL
            signal.signal(signum, handler)
        return previous


_current_stop: ContextVar[_Stop | None] = ContextVar("flo_current_stop", default=None)


def _stopping() -> bool:
    """Whether a signal stopped the `run_stoppable` run this task belongs to."""
    stop = _current_stop.get()
    return stop is not None and stop.signum is not None
