"""Run the notebook in the manager environment: headless (nbclient) or interactive (JupyterLab).

Headless: a kernelspec written for this run in a temporary JUPYTER_PATH-style folder names the
manager environment's python (`-m ipykernel_launcher`), so the kernel is that environment's
whatever flo-run itself runs in. The workflow is read by the backpack's one loader
(`auditor.backpack.workflow.load_workflow`): a `.py` script runs as the notebook the audit ran
(one cell per `# %%`, else one cell; `__file__` set as under the audit), so cell numbers agree.
Parameters are injected papermill-style. Once the kernel is up, the executed notebook is
written whatever happens to the cells; `Execution.status` says how it ended. A kernel that
cannot start is a `KernelStartFailed` naming the environment and the kernel log, and nothing
is written.

SIGINT and SIGTERM during execution: nbclient installs its own event-loop handlers for both, which
only start a kernel shutdown and let the cell wait go on (flo-run kept running for minutes). Our
client replaces them with handlers that end the execution at once; `execute` then writes the
notebook as far as it ran and raises `ExecutionStopped` (a KeyboardInterrupt), and puts back the
process's own handlers, which nbclient would leave at the defaults.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import json
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import nbformat

from auditor.backpack.workflow import load_workflow
from auditor.common.errors import FloError
from auditor.common.execution import FailedCell, Status
from auditor.common.interpreter import activated
from auditor.common.process import parent_death

from .engines.base import env_prefix, free_port, wait_for

if TYPE_CHECKING:
    from types import FrameType

    from jupyter_client.client import KernelClient

    #: What signal.signal takes and getsignal returns (typeshed's private _HANDLER).
    SignalHandler = Callable[[int, FrameType | None], Any] | int | None

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class RunnerError(FloError):
    """The kernel or JupyterLab could not be started."""


class KernelStartFailed(RunnerError):
    """The manager environment's kernel did not start (or never answered); no notebook was
    written. `environment` is the env folder, `log` the kernel's stdout and stderr."""

    exit_code = 1  # not bad input: the environment is broken

    def __init__(self, environment: Path, log: Path | None, cause: str) -> None:
        where = f"; its log is {log}" if log is not None else ""
        super().__init__(f"the kernel of the manager environment {environment} could not start "
                         f"({cause}){where}; check that its python can import ipykernel, or "
                         "remove that folder so that the next run rebuilds it")
        self.environment, self.log, self.cause = environment, log, cause


class ExecutionStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM ended a headless execution; the kernel is stopped and `output` holds
    the notebook as far as it ran (None if it could not be written)."""

    def __init__(self, signum: int, output: Path | None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.output = signum, output


def parse_value(text: str) -> object:
    """A `-p NAME VALUE` value: a Python literal when it is one (1, 0.5, True, [1, 2]), else the
    string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def inject_parameters(notebook: nbformat.NotebookNode, parameters: Mapping[str, object]) -> int:
    """Insert (or replace) the `injected-parameters` cell: after the cell tagged `parameters`,
    else at the top. Returns its index, or -1 when there are no parameters."""
    if not parameters:
        return -1
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n"
                                       for name, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [INJECTED_TAG]
    cells = notebook.cells
    old = next((i for i, c in enumerate(cells) if INJECTED_TAG in _tags(c)), None)
    if old is not None:
        cells[old] = cell
        return old
    after = next((i for i, c in enumerate(cells) if PARAMETERS_TAG in _tags(c)), None)
    index = 0 if after is None else after + 1
    cells.insert(index, cell)
    return index


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


@dataclass
class Execution:
    """How a headless run ended (the audit's words: `Status`), and the cell that raised."""

    output: Path
    status: Status
    seconds: float
    failed_cell: FailedCell | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == Status.COMPLETE

    def to_dict(self) -> dict:
        return {"output": str(self.output), "status": self.status.value,
                "seconds": round(self.seconds, 3),
                "failed_cell": self.failed_cell.to_json() if self.failed_cell else None,
                "message": self.message}


def write_kernelspec(folder: Path, python: Path, env: Mapping[str, str]) -> str:
    """A kernelspec for this run under `folder/kernels/`; returns its name."""
    name = "flo-run-manager"
    spec_dir = folder / "kernels" / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "flo-run manager", "language": "python",
            "env": dict(env), "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    return name


def kernel_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """flo-run's own environment minus what would make the manager python use flo-run's
    packages (VIRTUAL_ENV, PYTHONPATH), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "JUPYTER_PATH")}
    env.update(extra)
    return env


def execute(workflow: Path, output: Path, *, python: Path, cwd: Path,
            env: Mapping[str, str] | None = None, parameters: Mapping[str, object] | None = None,
            timeout: float | None = None, kernel_log: Path | None = None,
            on_cell: Callable[[int, int], None] | None = None,
            only: Collection[int] | None = None,
            before_cells: Callable[[], None] | None = None) -> Execution:
    """Execute `workflow` (a notebook, or a `.py` script read as the audit reads it) in a
    kernel of `python`'s environment with cwd `cwd`; once the kernel is up, write the executed
    notebook to `output` even when a cell fails or the kernel dies. The kernel's own stdout and
    stderr go to `kernel_log` when given. Raises `KernelStartFailed` (nothing written) when the
    kernel does not start, `UsageError` when the workflow cannot be read. `only`: the
    notebook indices of the code cells to run (the others keep no outputs); default all.
    `before_cells`: called once the kernel answers, before any cell runs (in a thread, so a
    signal still stops the run); what it raises, `execute` raises, and writes nothing."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    started = time.monotonic()
    loaded = load_workflow(workflow)
    nb = loaded.notebook
    skipped = _skip_all_but(nb, only) if only is not None else []
    inject_parameters(nb, parameters or {})
    failed: list[FailedCell] = []

    def cell_error(cell: nbformat.NotebookNode, cell_index: int, execute_reply: dict) -> None:
        content = execute_reply.get("content", {})
        failed.append(FailedCell(cell_index, content.get("ename", ""),
                                 content.get("evalue", "")))

    def cell_start(cell: nbformat.NotebookNode, cell_index: int) -> None:
        if on_cell is not None:
            on_cell(cell_index, len(nb.cells))

    # As under the audit: a script's cells see `__file__` (its copy in the run folder).
    user_file = Path(workflow).absolute() if loaded.kind == "py" else None
    with tempfile.TemporaryDirectory(prefix="flo-run-kernelspec-") as specs:
        name = write_kernelspec(Path(specs), python, {})
        # The async manager (and so an async client): a blocking client waits for kernel
        # messages inside nbclient's event loop, where no signal handler can run.
        km = AsyncKernelManager(kernel_name=name,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[
                                    str(Path(specs) / "kernels")]))
        client = _stoppable_client()(nb, km=km, timeout=timeout, kernel_name=name,
                                resources={"metadata": {"path": str(cwd)}},
                                on_cell_error=cell_error, on_cell_start=cell_start)
        client.flo_user_file = user_file
        client.flo_before_cells = before_cells
        status, message = Status.COMPLETE, ""
        log = _open_log(kernel_log)
        streams = {"stdout": log, "stderr": log} if log else {}
        handlers = _handlers()
        try:
            # The kernel dies with flo-run, even on SIGKILL (auditor.common.process.parent_death).
            client.execute(env=activated(kernel_environment(env or {}), python),
                           preexec_fn=parent_death(signal.SIGKILL), **streams)
        except asyncio.CancelledError:  # our stop, before nbclient could turn it into an error
            if client.flo_stopped_by is None:
                raise
        except BeforeCellsFailed as exc:
            raise exc.cause from None
        except CellExecutionError as exc:
            status = Status.FAILED
            message = _first_line(exc) if not failed else ""
        except CellTimeoutError:
            status, message = Status.TIMEOUT, f"a cell ran longer than {timeout:g} s"
        except DeadKernelError as exc:
            if not client.flo_kernel_ready:
                raise _start_failed(python, kernel_log, exc) from None
            status, message = Status.KERNEL_DIED, f"the kernel died: {_first_line(exc)}"
        except Exception as exc:  # start-up: RuntimeError (no kernel_info), OSError (no exec)
            if client.flo_kernel_ready:
                raise
            raise _start_failed(python, kernel_log, exc) from None
        finally:
            written = _finish(client, km, handlers, log, skipped, nb, output)
    if client.flo_stopped_by is not None:
        raise ExecutionStopped(client.flo_stopped_by, written)
    cell = failed[0] if failed else None
    if status == Status.FAILED and cell is not None:
        message = cell.line
    return Execution(output, status, time.monotonic() - started, cell, message)


def _open_log(kernel_log: Path | None) -> IO[bytes] | None:
    """The kernel's stdout and stderr file (appended to), or None to leave them alone."""
    if not kernel_log:
        return None
    kernel_log.parent.mkdir(parents=True, exist_ok=True)
    return open(kernel_log, "ab")  # noqa: SIM115 (closed by _finish, after the kernel)


def _finish(client: Any, km: object, handlers: dict[int, SignalHandler], log: IO[bytes] | None,
            skipped: list, nb: nbformat.NotebookNode, output: Path) -> Path | None:
    """Whatever way `execute`'s run ended: the process's signal handlers back, the kernel shut
    down, the kernel log closed, the skip tags taken off, and (once the kernel had started)
    the executed notebook written. `client` is a `_stoppable_client()`. Returns the notebook
    written, or None."""
    _restore(handlers)
    _shutdown(km)
    # nbclient leaves its atexit cleanup registered when the kernel did not start.
    atexit.unregister(client._cleanup_kernel)
    if log is not None:
        log.close()
    for cell in skipped:
        _untag(cell)
    if not client.flo_kernel_ready:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)
    return output


#: nbclient does not execute a cell with this tag (its `skip_cells_with_tag` default).
SKIP_TAG = "skip-execution"


def _skip_all_but(nb: nbformat.NotebookNode, only: Collection[int]) -> list:
    """Tag every code cell not in `only` for nbclient to skip; the notebook's metadata says
    which ran. Returns the cells tagged here (a cell the author tagged already stays so)."""
    tagged = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or index in only:
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if SKIP_TAG not in tags:
            tags.append(SKIP_TAG)
            tagged.append(cell)
    nb.metadata["flo"] = {"cells_run": sorted(only)}
    return tagged


def _untag(cell: nbformat.NotebookNode) -> None:
    tags = cell.metadata.get("tags", [])
    tags.remove(SKIP_TAG)
    if not tags:
        del cell.metadata["tags"]


def _start_failed(python: Path, kernel_log: Path | None, exc: BaseException
                  ) -> KernelStartFailed:
    """The one-line error for a kernel that never answered: the cause, preferring the last
    line the kernel itself wrote (`No module named ipykernel_launcher`) to nbclient's."""
    cause = _first_line(exc)
    if kernel_log is not None and kernel_log.is_file():
        with open(kernel_log, "rb") as text:
            text.seek(max(0, kernel_log.stat().st_size - 4096))
            lines = [ln.strip() for ln in text.read().decode(errors="replace").splitlines()
                     if ln.strip()]
        if lines:
            cause = f"{cause}: {lines[-1]}"
    return KernelStartFailed(env_prefix(python), kernel_log, cause)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stoppable_client() -> type:
    """NotebookClient whose SIGINT/SIGTERM handlers stop the execution (see the module doc)."""
    from nbclient import NotebookClient

    class StoppableClient(NotebookClient):
        flo_stopped_by: int | None = None
        flo_kernel_ready = False  # it answered kernel_info: from here on a notebook is written
        flo_user_file: Path | None = None
        flo_before_cells: Callable[[], None] | None = None

        async def async_start_new_kernel(self, **kwargs: object) -> None:
            # Called right after nbclient's async_setup_kernel added its handlers: replace them.
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            assert task is not None  # called from inside nbclient's execution task
            ignored = {s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN}
            for signum in STOP_SIGNALS:
                try:
                    loop.add_signal_handler(signum, self._flo_stop, signum, task, ignored)
                except (RuntimeError, ValueError):  # not the main thread: nbclient added none
                    break
            await super().async_start_new_kernel(**kwargs)

        async def async_start_new_kernel_client(self) -> KernelClient:
            kc = await super().async_start_new_kernel_client()
            if self.flo_before_cells is not None:
                try:
                    await _in_thread(self.flo_before_cells)
                except Exception as exc:  # noqa: BLE001 (raised by execute, as it was)
                    raise BeforeCellsFailed(exc) from exc
            self.flo_kernel_ready = True
            if self.flo_user_file is not None:
                code = f"get_ipython().user_ns['__file__'] = {str(self.flo_user_file)!r}"
                await self.async_wait_for_reply(
                    kc.execute(code, silent=True, store_history=False))
            return kc

        def _flo_stop(self, signum: signal.Signals, task: asyncio.Task,
                      ignored: set[signal.Signals]) -> None:
            if signum in ignored:  # e.g. SIGINT of a background job of a non-interactive shell
                return
            self.flo_stopped_by = self.flo_stopped_by or signum
            self.shutdown_kernel = "immediate"
            task.cancel()

    return StoppableClient


class BeforeCellsFailed(Exception):
    """Carries what `execute`'s `before_cells` raised through nbclient, told apart from a
    kernel that failed to start."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def _in_thread(work: Callable[[], None]) -> None:
    """`work()` in a daemon thread, awaited: the event loop (and so its signal handlers) runs
    meanwhile; a cancelled await leaves the thread to end by itself (`work` must be bounded)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():  # cancelled meanwhile
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def target() -> None:
        error: BaseException | None = None
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 (handed to the awaiting task)
            error = exc
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=target, name="flo-before-cells", daemon=True).start()
    await done


def _handlers() -> dict[int, SignalHandler]:
    """The process's SIGINT/SIGTERM handlers, to put back after nbclient removed its own."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


def _restore(handlers: dict[int, SignalHandler]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _shutdown(km: object) -> None:
    from jupyter_core.utils import run_sync

    try:
        if km.has_kernel:  # type: ignore[attr-defined]
            run_sync(km.shutdown_kernel)(now=True)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 (already gone; the process tree teardown covers it)
        pass


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


# ---------------------------------------------------------------- interactive


@dataclass
class Lab:
    """A running JupyterLab server: its URL (with token) and process."""

    url: str
    token: str
    port: int
    process: subprocess.Popen[bytes]

    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/status?token={self.token}"


def paired_notebook(script: Path) -> Path:
    """A notebook beside `script` (both in the run folder), paired with it as jupytext pairs
    files: the audit's cells, `jupytext.formats` naming both, and the script's mtime, so that
    jupytext reads the cells from the script and saves to both."""
    notebook = load_workflow(script).notebook
    notebook.metadata["jupytext"] = {"formats": "ipynb,py:percent"}
    target = script.with_suffix(".ipynb")
    nbformat.write(notebook, target)
    stamp = script.stat().st_mtime
    os.utime(target, (stamp, stamp))  # not newer than the script: jupytext refuses that
    return target


def start_lab(python: Path, root: Path, launch: Callable[..., subprocess.Popen[bytes]],
              host: str = "127.0.0.1", timeout: float = 120.0,
              log_tail: Callable[[], str] = lambda: "", notebook: str | None = None) -> Lab:
    """Start JupyterLab from the manager environment, serving `root`, bound to `host` with a
    fresh token; returns once it answers /api/status. `launch(argv, log_name, cwd)` starts the
    process (the engine's Cluster.launch, so teardown finds it). The URL opens `notebook`
    (a path under `root`) when given."""
    token = secrets.token_hex(24)
    port = free_port(host)
    argv = [python, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={host}",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")  # containers and our CI run as root
    process = launch(argv, "jupyterlab.log", cwd=root)
    page = f"lab/tree/{urllib.parse.quote(notebook)}" if notebook else "lab"
    lab = Lab(f"http://{host}:{port}/{page}?token={token}", token, port, process)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/api/status?token={token}",
                                        timeout=2) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def died() -> str | None:
        return (None if process.poll() is None
                else f"JupyterLab exited with status {process.returncode}: {log_tail()}")

    try:
        wait_for(answers, timeout, "starting JupyterLab", died, interval=0.2)
    except FloError as exc:
        raise RunnerError(str(exc)) from None
    return lab
