"""Run a notebook headless, cell by cell, in a kernel started under a tracer; keep the record.

The kernel's launch command is wrapped by the tracer (a KernelManager that overrides
`format_kernel_cmd`), so the kernel and everything it starts run traced. Before the first
cell, a bootstrap cell injects kernels/flo_kernel.py by path, which logs cell boundaries and
Python-level events to hooks.jsonl (both in traced_kernel.py). The record folder then holds
session.json, executed.ipynb, hooks.jsonl, kernel.stderr and the tracer's raw record
(docs/internals.md).

The cells run in the execution core flo-run's runner uses too (auditor/common/execution.py:
`run_cells` inside `run_stoppable`, from the kernel's start to the last cell); the recorder's
after-cell hook has the process tree snapshotted (on its watcher's thread) and reads the
--workers watch. However the run ends (a failing cell, a timeout, a dead kernel, SIGINT or
SIGTERM), no process the recorder started is left running when `record` returns or raises.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import nbformat
import psutil
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbformat import NotebookNode

from ..backpack.session import Session, write_session
from ..common.errors import Interrupted, RecordError
from ..common.execution import (
    STOP_SIGNALS,
    CellProgress,
    FailedCell,
    Status,
    connect,
    notebook_client,
    run_cells,
    run_stoppable,
)
from ..common.interpreter import activated, require_module
from ..common.process import parent_death
from ..common.stale import owned_folder
from ..common.tree import TOKEN_VARIABLE, ProcessTree
from .base import Tracer
from .companions import SAMPLES_FILE, Companions
from .hooks import HOOK_LOG, kernel_record
from .traced_kernel import TracedKernelManager, bootstrap_code, kernel_name
from .workers import WorkerWatch

if TYPE_CHECKING:
    from jupyter_client.asynchronous import AsyncKernelClient

log = logging.getLogger("flo.record")

EXECUTED_NOTEBOOK = "executed.ipynb"
KERNEL_STDERR = "kernel.stderr"
#: How long a kernel asked to quit after the last cell gets before teardown stops it.
EXIT_WAIT_S = 2.0
#: How long the notebook's own pools get to close before the kernel is asked to quit.
CLOSE_WAIT_S = 15.0
#: Run silently (no cell marks) after the last cell, while the kernel has child processes:
#: the exit handlers the pool libraries register themselves, called before the kernel quits.
#: ipykernel's shutdown SIGTERMs the kernel's children first, and a Dask nanny restarts a
#: worker it did not stop itself, again and again, until teardown. Stdlib only; every step
#: optional (a module not loaded, a private name renamed: skipped).
CLOSE_POOLS = """\
def _flo_close_pools():
    import sys
    for module, name in (("distributed.client", "_close_global_client"),
                         ("distributed.deploy.spec", "close_clusters"),
                         ("multiprocessing.util", "_exit_function")):
        handler = getattr(sys.modules.get(module), name, None)
        if handler is not None:
            try:
                handler()
            except Exception:
                pass
_flo_close_pools()
del _flo_close_pools
"""


@dataclass
class RecordOptions:
    """What to run and how. `cwd` defaults to the notebook's folder."""

    notebook: NotebookNode
    notebook_path: Path
    record_dir: Path
    tracer: Tracer
    kernel_name: str | None = None  # None: the notebook's kernelspec name, else "python3"
    python: str | None = None  # run `python -m ipykernel_launcher` instead of a kernelspec
    timeout: float | None = None  # seconds per cell; None: no limit
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    user_file: Path | None = None  # sets `__file__` in the user namespace (.py workflows)
    on_cell: CellProgress | None = None
    workers: int = 0  # start a Dask scheduler and this many traced workers (--workers)
    #: Called with the kernel side's `kernel` record once it is attached, before any cell
    #: (the audit starts indexing the environment it names: resolve/ahead.py). Must not block.
    on_kernel: Callable[[dict], None] | None = None


@dataclass
class Recording(Session):
    """How the run ended (what session.json holds) and where its record is."""

    record_dir: Path = field(kw_only=True)
    connection_file: str | None = field(default=None, kw_only=True)


def record(options: RecordOptions) -> Recording:
    """Execute the notebook under `options.tracer`, writing the record folder.

    A failing cell, a timeout or a dead kernel ends the run early and is reported in the
    returned Recording's status; a missing kernel raises RecordError; Ctrl-C or SIGTERM raises
    Interrupted. Every process started here is stopped before this returns or raises.
    """
    run = _Run(options)
    try:
        env = run.prepare()
        run_stoppable(lambda: run.execute(env))
        run.shutdown()
    except KeyboardInterrupt:  # the execution core's Stopped, or Ctrl-C outside it
        run.teardown()
        raise Interrupted("interrupted: the kernel and every process it started were "
                          "stopped; run flo-audit again to record") from None
    except BaseException:
        run.teardown()
        raise
    run.teardown()
    return run.finish()


class _Run:
    """The state of one recording, from kernel start to teardown."""

    def __init__(self, options: RecordOptions) -> None:
        self.options = options
        self.record_dir = Path(options.record_dir).resolve()
        self.record_dir.mkdir(parents=True, exist_ok=True)
        self.notebook_path = Path(options.notebook_path).resolve()
        self.cwd = Path(options.cwd or self.notebook_path.parent).resolve()
        self.warnings: list[str] = []
        self.kernel_name = kernel_name(options.kernel_name, options.notebook, options.python,
                                       self.warnings)
        if options.python:
            require_module(options.python, "ipykernel", "a Jupyter kernel")
        self.nb = copy.deepcopy(options.notebook)
        self.code_cells = sum(1 for cell in self.nb.cells if cell.cell_type == "code")
        self.cells: list[tuple[int, int]] = []
        self.status = Status.COMPLETE
        self.failed: FailedCell | None = None
        self.tree = ProcessTree(uuid.uuid4().hex)
        self.connection_dir = str(owned_folder("flo-kernel-"))
        self.km = TracedKernelManager(
            tracer=options.tracer, record_dir=self.record_dir, python=options.python,
            kernel_name=self.kernel_name)
        self.km.connection_file = os.path.join(self.connection_dir, "kernel.json")
        self.client = notebook_client(self.nb, self.km, cwd=self.cwd, timeout=options.timeout,
                                      startup_timeout=120, kernel_name=self.kernel_name)
        self.stderr = open(self.record_dir / KERNEL_STDERR, "wb")  # noqa: SIM115
        self.started = time.time()
        self.ended = self.started
        self.launched_pid: int | None = None
        self.kernel_pid: int | None = None
        self.closing: float | None = None  # when the notebook's pools were asked to close
        self.companions = Companions(  # the sampler, and the --workers pool
            workers=options.workers, kernel_name=self.kernel_name, python=options.python,
            tracer=options.tracer, record_dir=self.record_dir, cwd=self.cwd, roots=self.tree.roots)

    def prepare(self) -> dict[str, str]:
        """Watch the process tree and start the companions; returns the kernel's environment."""
        env = {**os.environ, **self.options.env, TOKEN_VARIABLE: self.tree.token}
        if self.options.python:  # the kernel's environment, as if activated
            env = activated(env, self.options.python)
        self.tree.start_watching()
        return self.companions.start(env)

    async def execute(self, env: dict[str, str]) -> None:
        """From the kernel's start to the last cell (run by `run_stoppable`)."""
        await self.start(env)
        await self.bootstrap()
        await self.execute_cells()

    async def start(self, env: dict[str, str]) -> None:
        try:
            # The tracer (or, with hooks, the kernel) dies with us, even on SIGKILL.
            await self.client.async_start_new_kernel(
                cwd=str(self.cwd), env=env, stdout=self.stderr, stderr=self.stderr,
                preexec_fn=parent_death(self.options.tracer.death_signal()))
            self._remember_kernel()
            await connect(self.client)
        except RecordError:
            raise
        except Exception as exc:
            raise RecordError(f"the kernel did not start ({exc}); see "
                              f"{self.record_dir / KERNEL_STDERR}{self._stderr_tail()}") from exc

    def _remember_kernel(self) -> None:
        provisioner = self.km.provisioner
        pid = getattr(provisioner, "pid", None)
        if pid:
            self.launched_pid = pid
            self.tree.add_root(pid)

    async def bootstrap(self) -> None:
        config = {"log": str(self.record_dir / HOOK_LOG),
                  "marks": self.options.tracer.name != "hooks"}
        if self.options.tracer.quiet_key is not None:  # the kernel side reads files itself
            config["quiet_key"] = self.options.tracer.quiet_key
        code = bootstrap_code(config, self.options.user_file)
        # nbclient stores the executed cell back at its index: lend it a slot past the end.
        self.nb.cells.append(nbformat.v4.new_code_cell(code))
        try:
            await self.client.async_execute_cell(self.nb.cells[-1], len(self.nb.cells) - 1,
                                                 store_history=False)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            raise RecordError(f"could not attach the kernel side ({exc}); the kernel's Python "
                              "must be CPython 3.8 or newer"
                              f"{self._stderr_tail()}") from exc
        finally:
            self.nb.cells.pop()
        kernel = kernel_record(self.record_dir)
        self.kernel_pid = kernel.get("pid")
        if self.kernel_pid:
            self.tree.add_root(self.kernel_pid)
        if self.options.on_kernel is not None and kernel:
            self.options.on_kernel(kernel)

    async def execute_cells(self) -> None:
        pool = self.companions.pool
        watch = WorkerWatch(pool, self.kernel_pid) if pool and self.kernel_pid else None

        def after_cell(index: int) -> tuple[Status, FailedCell] | None:
            died = None
            if watch is not None and watch.dead is not None:
                died = Status.WORKER_DIED, FailedCell(index, "WorkerDied", watch.message())
            self.tree.snapshot_soon()
            return died

        try:
            ran = await run_cells(self.client, timeout=self.options.timeout,
                                  on_cell=self.options.on_cell, after_cell=after_cell)
        finally:
            if watch is not None:
                watch.stop()
        self.cells, self.status, self.failed = ran.cells, ran.status, ran.failed

    def shutdown(self) -> None:
        """Ask the kernel to quit and wait for it, so its exit handlers flush the hook log.

        Waits for the kernel process itself, not the tracer: a tracer also waits for every
        process the notebook left running, and teardown stops those.
        """
        if self.status == Status.KERNEL_DIED:
            return
        try:
            if self.status == Status.TIMEOUT:  # end the running cell, then ask the kernel to quit
                run_sync(self.km.interrupt_kernel)()
            pid = self.kernel_pid or (None if self.km.flo_wrapped else self.launched_pid)
            if pid is None:
                run_sync(self.km.shutdown_kernel)(now=False)
                return
            kernel = psutil.Process(pid)
            if self.status != Status.TIMEOUT and kernel.children():
                self.closing = time.time()  # what ends from here on is teardown, not a crash
                self._close_pools()
            run_sync(self.km.request_shutdown)()
            # Every cell's records are flushed at its end, so only the exit's own files are
            # at stake: a kernel that does not quit promptly (now and then one sits out the
            # whole default wait) is stopped by teardown instead of costing seconds.
            kernel.wait(timeout=min(self.km.shutdown_wait_time, EXIT_WAIT_S))
        except Exception as exc:  # psutil.TimeoutExpired too: teardown kills what is left
            log.debug("graceful kernel shutdown failed: %s", exc)

    def _close_pools(self) -> None:
        """Let the notebook's pools close the way they would at exit (`CLOSE_POOLS`), bounded
        by `CLOSE_WAIT_S`; whatever is left then is frozen and killed by teardown."""
        # nbclient types kc as the base KernelClient; its async manager makes an AsyncKernelClient.
        kc = cast("AsyncKernelClient | None", self.client.kc)
        if kc is None:
            return
        msg_id = kc.execute(CLOSE_POOLS, silent=True, store_history=False)
        deadline = time.monotonic() + CLOSE_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = run_sync(kc.get_shell_msg)(timeout=left)
            except Exception:  # queue.Empty: the pools did not close in time
                break
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return
        log.debug("the notebook's pools did not close within %s s", CLOSE_WAIT_S)

    def teardown(self) -> None:
        """Kill what is still running, close channels and files; safe to call after errors."""
        with _signals_held():
            self.ended = self.closing or time.time()
            self.companions.stop()
            try:
                if self.client.kc is not None:
                    self.client.kc.stop_channels()
            except Exception as exc:
                log.debug("stopping kernel channels failed: %s", exc)
            tracer = {self.launched_pid} if self.km.flo_wrapped and self.launched_pid else set()
            survivors = self.tree.stop_all(spare=tracer)
            launched = getattr(self.km.provisioner, "process", None)
            if launched is not None:
                launched.poll()  # reap it: it is our child
            for proc in survivors:
                self.warnings.append(f"process {proc.pid} started by the notebook could not "
                                     "be stopped; kill it by hand")
            try:
                run_sync(self.km.cleanup_resources)()
            except Exception as exc:
                log.debug("kernel manager cleanup failed: %s", exc)
            self.stderr.close()
            shutil.rmtree(self.connection_dir, ignore_errors=True)

    def finish(self) -> Recording:
        kernel = kernel_record(self.record_dir)
        if not kernel:
            self.warnings.append("the kernel side wrote no kernel record to hooks.jsonl; "
                                 "see kernel.stderr")
        kernel_pid = kernel.get("pid")
        if kernel_pid is None and not self.km.flo_wrapped:
            kernel_pid = self.launched_pid
        recording = Recording(
            record_dir=self.record_dir, notebook=str(self.notebook_path), cwd=str(self.cwd),
            backend=self.options.tracer.name, status=self.status, started=self.started,
            ended=self.ended, cells=list(self.cells), code_cells=self.code_cells,
            failed_cell=self.failed, kernel=kernel, kernel_pid=kernel_pid,
            tracer_pid=self.launched_pid if self.km.flo_wrapped else None,
            warnings=list(self.warnings), connection_file=self.km.connection_file,
            samples=SAMPLES_FILE, pool=self.companions.pool_json())
        nbformat.write(self.nb, str(self.record_dir / EXECUTED_NOTEBOOK))
        write_session(self.record_dir, recording)
        return recording

    def _stderr_tail(self) -> str:
        self.stderr.flush()
        try:
            lines = (self.record_dir / KERNEL_STDERR).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        lines = [line for line in lines if line.strip()]
        return f": {lines[-1].strip()}" if lines else ""


@contextmanager
def _signals_held() -> Iterator[None]:
    """Let teardown finish even if Ctrl-C is pressed again or SIGTERM comes (flo-audit's own
    SIGTERM handler raises KeyboardInterrupt, as Ctrl-C does)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
