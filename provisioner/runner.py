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

The cells run in the execution core the audit's recorder uses too
(`auditor.common.execution`: `run_cells` inside `run_stoppable`). SIGINT and SIGTERM during
execution end it at once; `execute` then writes the notebook as far as it ran and raises
`ExecutionStopped` (a KeyboardInterrupt).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import nbformat

from auditor.backpack.workflow import load_workflow
from auditor.common import stale
from auditor.common.errors import FloError
from auditor.common.execution import (
    SKIP_TAG,
    CellProgress,
    CellsRun,
    FailedCell,
    Status,
    Stopped,
    connect,
    notebook_client,
    run_cells,
    run_stoppable,
)
from auditor.common.interpreter import activated
from auditor.common.process import parent_death

from .engines.base import env_prefix, free_port, wait_for

if TYPE_CHECKING:
    from nbclient import NotebookClient

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


class ExecutionStopped(Stopped):
    """SIGINT or SIGTERM ended a headless execution; the kernel is stopped and `output` holds
    the notebook as far as it ran (None if the kernel had not started)."""

    def __init__(self, signum: int, output: Path | None) -> None:
        super().__init__(signum)
        self.output = output


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
            on_cell: CellProgress | None = None,
            only: Collection[int] | None = None,
            before_cells: Callable[[], None] | None = None) -> Execution:
    """Execute `workflow` (a notebook, or a `.py` script read as the audit reads it) in a
    kernel of `python`'s environment with cwd `cwd`; once the kernel is up, write the executed
    notebook to `output` even when a cell fails or the kernel dies. The kernel's own stdout and
    stderr go to `kernel_log` when given. Raises `KernelStartFailed` (nothing written) when the
    kernel does not start, `UsageError` when the workflow cannot be read. `only`: the
    notebook indices of the code cells to run (the others keep no outputs); default all.
    `before_cells`: called once the kernel answers, before any cell runs (in a thread, so a
    signal still stops the run); what it raises, `execute` raises, and writes nothing.
    `on_cell`: the execution core's progress callback, per cell start and end."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.exceptions import DeadKernelError

    started = time.monotonic()
    loaded = load_workflow(workflow)
    nb = loaded.notebook
    skipped = _skip_all_but(nb, only) if only is not None else []
    inject_parameters(nb, parameters or {})
    # As under the audit: a script's cells see `__file__` (its copy in the run folder).
    user_file = Path(workflow).absolute() if loaded.kind == "py" else None
    ready = False  # the kernel answered and before_cells passed: a notebook is written

    # An owned folder, not a TemporaryDirectory: if flo-run is SIGKILLed, the next flo-run
    # removes it (stale.sweep), as it does the run folder.
    stale.sweep(None, (stale.KERNELSPEC_PREFIX,))
    with _removed_after(stale.owned_folder(stale.KERNELSPEC_PREFIX)) as specs:
        name = write_kernelspec(Path(specs), python, {})
        km = AsyncKernelManager(kernel_name=name,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[
                                    str(Path(specs) / "kernels")]))
        client = notebook_client(nb, km, cwd=cwd, timeout=timeout, startup_timeout=60,
                                 kernel_name=name)
        log = _open_log(kernel_log)
        streams = {"stdout": log, "stderr": log} if log else {}

        async def work() -> tuple[Status, FailedCell | None, str]:
            nonlocal ready
            try:
                # The kernel dies with flo-run, even on SIGKILL (auditor.common.process).
                await client.async_start_new_kernel(
                    env=activated(kernel_environment(env or {}), python),
                    preexec_fn=parent_death(signal.SIGKILL), **streams)
                await connect(client)
            except Exception as exc:  # RuntimeError (no kernel_info), OSError (no exec), ...
                raise _start_failed(python, kernel_log, exc) from None
            if before_cells is not None:
                await _in_thread(before_cells)
            ready = True
            try:
                if user_file is not None:
                    await _set_user_file(client, user_file)
                await _language_info(client)
                ran = await run_cells(client, timeout=timeout, on_cell=on_cell)
            except DeadKernelError as exc:  # between cells: setting __file__, kernel_info
                return Status.KERNEL_DIED, None, f"the kernel died: {_last_line(str(exc))}"
            if ran.status == Status.COMPLETE:
                client.set_widgets_metadata()
            return ran.status, *_said(ran, timeout)

        stopped: int | None = None
        try:
            ended = run_stoppable(work)
        except Stopped as stop:
            stopped = stop.signum
        finally:
            written = _finish(km, log, skipped, nb, output if ready else None)
    if stopped is not None:
        raise ExecutionStopped(stopped, written)
    status, cell, message = ended
    return Execution(output, status, time.monotonic() - started, cell, message)


def _said(ended: CellsRun, timeout: float | None) -> tuple[FailedCell | None, str]:
    """flo-run's words for how the cells ended: the cell that raised (for a failure only) and
    the one-line message."""
    failed = ended.failed
    if ended.status == Status.FAILED and failed is not None:
        return failed, failed.line
    if ended.status == Status.TIMEOUT:
        return None, f"a cell ran longer than {timeout:g} s"
    if ended.status == Status.KERNEL_DIED and failed is not None:
        return None, f"the kernel died: {_last_line(failed.evalue)}"
    return None, ""


async def _set_user_file(client: NotebookClient, user_file: Path) -> None:
    kc = client.kc
    assert kc is not None  # the client was started
    code = f"get_ipython().user_ns['__file__'] = {str(user_file)!r}"
    await client.async_wait_for_reply(kc.execute(code, silent=True, store_history=False))


async def _language_info(client: NotebookClient) -> None:
    """The kernel's language_info in the notebook's metadata, as nbclient's `execute` sets it."""
    kc = client.kc
    assert kc is not None
    reply = await client.async_wait_for_reply(kc.kernel_info())
    if reply is None:
        return
    if "language_info" not in reply["content"]:
        raise RuntimeError("the kernel's kernel_info reply has no language_info: "
                           f"{reply['content']}")
    client.nb.metadata["language_info"] = reply["content"]["language_info"]


@contextmanager
def _removed_after(folder: Path) -> Iterator[Path]:
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _open_log(kernel_log: Path | None) -> IO[bytes] | None:
    """The kernel's stdout and stderr file (appended to), or None to leave them alone."""
    if not kernel_log:
        return None
    kernel_log.parent.mkdir(parents=True, exist_ok=True)
    return open(kernel_log, "ab")  # noqa: SIM115 (closed by _finish, after the kernel)


def _finish(km: object, log: IO[bytes] | None, skipped: list, nb: nbformat.NotebookNode,
            output: Path | None) -> Path | None:
    """Whatever way `execute`'s run ended: the kernel shut down, the kernel log closed, the
    skip tags taken off, and (`output`, once the kernel had started) the executed notebook
    written. Returns the notebook written, or None."""
    _shutdown(km)
    if log is not None:
        log.close()
    for cell in skipped:
        _untag(cell)
    if output is None:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, output)
    return output


def _skip_all_but(nb: nbformat.NotebookNode, only: Collection[int]) -> list:
    """Tag every code cell not in `only` to be skipped (`auditor.common.execution.will_run`);
    the notebook's metadata says which ran. Returns the cells tagged here (a cell the author
    tagged already stays so). Tagged before the parameters are injected: `only` counts the
    cells of the notebook as audited."""
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
    cause = _last_line(str(exc)) or type(exc).__name__
    if kernel_log is not None and kernel_log.is_file():
        with open(kernel_log, "rb") as text:
            text.seek(max(0, kernel_log.stat().st_size - 4096))
            lines = [ln.strip() for ln in text.read().decode(errors="replace").splitlines()
                     if ln.strip()]
        if lines:
            cause = f"{cause}: {lines[-1]}"
    return KernelStartFailed(env_prefix(python), kernel_log, cause)


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


def _shutdown(km: object) -> None:
    from jupyter_core.utils import run_sync

    try:
        if km.has_kernel:  # type: ignore[attr-defined]
            run_sync(km.shutdown_kernel)(now=True)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 (already gone; the process tree teardown covers it)
        pass


def _last_line(text: str) -> str:
    """The last line of an error's text that says something (its one-line cause)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


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
