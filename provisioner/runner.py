"""Run the notebook in the manager environment: headless (nbclient) or interactive (JupyterLab).

Headless: a kernelspec written for this run in a temporary JUPYTER_PATH-style folder names the
manager environment's python (`-m ipykernel_launcher`), so the kernel is that environment's
whatever flo-run itself runs in. Parameters are injected papermill-style. The executed notebook
is written whatever happens to the cells; `Execution.status` says how it ended.

SIGINT and SIGTERM during execution: nbclient installs its own event-loop handlers for both, which
only start a kernel shutdown and let the cell wait go on (flo-run kept running for minutes). Our
client replaces them with handlers that end the execution at once; `execute` then writes the
notebook as far as it ran and raises `ExecutionStopped` (a KeyboardInterrupt), and puts back the
process's own handlers, which nbclient would leave at the defaults.
"""

from __future__ import annotations

import ast
import asyncio
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nbformat

from auditor.errors import FloError
from auditor.record.interpreter import activated

from .engines.base import free_port, wait_for

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


class RunnerError(FloError):
    """The kernel or JupyterLab could not be started."""


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
    """How a headless run ended: `complete`, `failed` (a cell raised), `timeout`,
    `kernel-died`; `failed_cell` = {index, ename, evalue} for a failed cell."""

    output: Path
    status: str
    seconds: float
    failed_cell: dict | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict:
        return {"output": str(self.output), "status": self.status,
                "seconds": round(self.seconds, 3), "failed_cell": self.failed_cell,
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


def execute(notebook: Path, output: Path, *, python: Path, cwd: Path,
            env: Mapping[str, str] | None = None, parameters: Mapping[str, object] | None = None,
            timeout: float | None = None, kernel_log: Path | None = None,
            on_cell: Callable[[int, int], None] | None = None) -> Execution:
    """Execute `notebook` in a kernel of `python`'s environment with cwd `cwd`; write the
    executed notebook to `output` even when a cell fails or the kernel dies. The kernel's own
    stdout and stderr go to `kernel_log` when given."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    started = time.monotonic()
    nb = nbformat.read(notebook, as_version=4)
    inject_parameters(nb, parameters or {})
    failed: dict = {}

    def cell_error(cell: nbformat.NotebookNode, cell_index: int, execute_reply: dict) -> None:
        content = execute_reply.get("content", {})
        failed.update(index=cell_index, ename=content.get("ename", ""),
                      evalue=content.get("evalue", ""))

    def cell_start(cell: nbformat.NotebookNode, cell_index: int) -> None:
        if on_cell is not None:
            on_cell(cell_index, len(nb.cells))

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
        status, message = "complete", ""
        if kernel_log:
            kernel_log.parent.mkdir(parents=True, exist_ok=True)
        log = open(kernel_log, "ab") if kernel_log else None  # noqa: SIM115
        streams = {"stdout": log, "stderr": log} if log else {}
        handlers = _handlers()
        written = None
        try:
            client.execute(env=activated(kernel_environment(env or {}), python), **streams)
        except asyncio.CancelledError:  # our stop, before nbclient could turn it into an error
            if client.flo_stopped_by is None:
                raise
        except CellExecutionError as exc:
            status = "failed"
            message = _first_line(exc) if not failed else ""
        except CellTimeoutError:
            status, message = "timeout", f"a cell ran longer than {timeout:g} s"
        except DeadKernelError as exc:
            status, message = "kernel-died", f"the kernel died: {_first_line(exc)}"
        finally:
            _restore(handlers)
            _shutdown(km)
            if log is not None:
                log.close()
            output.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, output)
            written = output
    if client.flo_stopped_by is not None:
        raise ExecutionStopped(client.flo_stopped_by, written)
    if status == "failed" and failed:
        message = (f"cell {failed['index']} raised {failed['ename']}: "
                   f"{failed['evalue']}").rstrip(": ")
    return Execution(output, status, time.monotonic() - started, failed or None, message)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stoppable_client() -> type:
    """NotebookClient whose SIGINT/SIGTERM handlers stop the execution (see the module doc)."""
    from nbclient import NotebookClient

    class StoppableClient(NotebookClient):
        flo_stopped_by: int | None = None

        async def async_start_new_kernel(self, **kwargs: object) -> None:
            # Called right after nbclient's async_setup_kernel added its handlers: replace them.
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            ignored = {s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN}
            for signum in STOP_SIGNALS:
                try:
                    loop.add_signal_handler(signum, self._flo_stop, signum, task, ignored)
                except (RuntimeError, ValueError):  # not the main thread: nbclient added none
                    break
            await super().async_start_new_kernel(**kwargs)

        def _flo_stop(self, signum: int, task: asyncio.Task, ignored: set[int]) -> None:
            if signum in ignored:  # e.g. SIGINT of a background job of a non-interactive shell
                return
            self.flo_stopped_by = self.flo_stopped_by or signum
            self.shutdown_kernel = "immediate"
            task.cancel()

    return StoppableClient


def _handlers() -> dict[int, object]:
    """The process's SIGINT/SIGTERM handlers, to put back after nbclient removed its own."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


def _restore(handlers: dict[int, object]) -> None:
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
