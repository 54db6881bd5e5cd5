"""Closing the loop (DESIGN.md rule 7): the emitted pins alone rebuild an environment that runs.

For two scenarios, a fresh venv is made with the kernel's Python, only the pins of
software/requirements.txt are installed (`--no-deps`, so nothing the audit missed can sneak in
through a resolver), `uv pip check` must pass, and the notebook from workflow/ must execute in
a kernel started from that venv.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from conftest import AuditRun
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

ROUNDTRIP_SCENARIOS = ["import_names", "c_extension"]
COMMAND_TIMEOUT_S = 900


@dataclass
class FreshEnv:
    run: AuditRun
    python: Path
    root: Path


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert found, "uv is not installed: run `make setup`"
    return found


def check_call(argv: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module", params=ROUNDTRIP_SCENARIOS)
def fresh_env(request: pytest.FixtureRequest, audit_runs: Callable[..., AuditRun],
              tmp_path_factory: pytest.TempPathFactory) -> FreshEnv:
    run = audit_runs(request.param)
    assert run.returncode == 0, run.describe()
    root = tmp_path_factory.mktemp(f"roundtrip-{request.param}")
    # The kernel ran in this interpreter's environment; its base interpreter is what a user
    # would create the new environment from, and must match the python= pin.
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    venv = root / "venv"
    check_call([uv(), "venv", "--python", str(base_python), str(venv)])
    python = venv / "bin" / "python"
    version = check_call([str(python), "-c", "import platform; print(platform.python_version())"])
    assert version.stdout.strip() == run.environment.python
    check_call([uv(), "pip", "install", "--python", str(python), "--no-deps",
                "-r", str(run.path("software/requirements.txt"))])
    return FreshEnv(run, python, root)


def test_pins_are_consistent(fresh_env: FreshEnv) -> None:
    check_call([uv(), "pip", "check", "--python", str(fresh_env.python)])


def test_notebook_reexecutes_in_the_fresh_env(fresh_env: FreshEnv) -> None:
    workdir = fresh_env.root / "workflow"
    shutil.copytree(fresh_env.run.path("workflow"), workdir)
    notebook = nbformat.read(workdir / fresh_env.run.scenario.workflow, as_version=4)
    # One more cell proves which environment the kernel really ran in.
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))

    kernels = fresh_env.root / "kernels"
    (kernels / "roundtrip").mkdir(parents=True)
    spec = {"argv": [str(fresh_env.python), "-m", "ipykernel_launcher",
                     "-f", "{connection_file}"],
            "display_name": "round trip", "language": "python"}
    (kernels / "roundtrip" / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    manager = KernelManager(kernel_name="roundtrip",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))

    client = NotebookClient(notebook, km=manager, timeout=300,
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    finally:
        # nbclient leaves a kernel it did not create running: stop it, whatever happened.
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)

    printed = "".join(out.get("text", "") for out in notebook.cells[-1].outputs)
    assert printed.strip() == str(fresh_env.python.parent.parent)
