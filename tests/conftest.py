"""End-to-end test support: fixture scenarios, running the real flo-audit CLI, reading backpacks.

These tests talk to flo-audit only through its command line and the files of the backpack it
writes, so they hold whatever the internals look like. Each (scenario, backend) pair is audited
once per test session and shared by every test file that asks for it.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The `slurm` and `sge` fixtures (a real single-node SLURM, Grid Engine) for the batch engines.
pytest_plugins = ["conftest_slurm", "conftest_sge"]

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "notebooks"
#: The backend `--backend auto` picks on x86_64, audited unless a test asks
#: for another; a test that reads strace's own record (trace.strace) asks for "strace".
DEFAULT_BACKEND = "ptrace"
#: The raw record file of each syscall backend (audit/trace<suffix>, trace-<name><suffix>).
RECORD_SUFFIX = {"strace": ".strace", "ptrace": ".jsonl"}
#: Upper bound for one audit of one fixture, including kernel start-up, resolving and writing.
AUDIT_TIMEOUT_S = 600

#: A stand-in for the IPython shell the kernel side attaches to (its event registry and cell
#: transform), as plain source spliced into test scripts that run under other interpreters.
#: A script may replace `Shell.transform_cell`.
STAND_IN_SHELL = """
class Events:
    def __init__(self):
        self.handlers = {}
    def register(self, name, fn):
        self.handlers.setdefault(name, []).append(fn)

class Shell:
    events = Events()
    def transform_cell(self, raw):
        return raw
"""


def scenario_names() -> list[str]:
    """Every folder under fixtures/notebooks/ that says what its audit must find."""
    return sorted(p.parent.name for p in FIXTURES.glob("*/expect.yml"))


@dataclass(frozen=True)
class Scenario:
    """One fixture folder: the workflow (notebook or .py) and its expect.yml."""

    name: str

    @property
    def folder(self) -> Path:
        return FIXTURES / self.name

    @cached_property
    def expect(self) -> dict[str, Any]:
        return yaml.safe_load((self.folder / "expect.yml").read_text(encoding="utf-8"))

    @property
    def workflow(self) -> str:
        return self.expect["workflow"]

    @property
    def status(self) -> str:
        return self.expect.get("status", "complete")

    @property
    def must_include(self) -> set[str]:
        return {canonicalize_name(n) for n in self.expect.get("must_include") or []}

    @property
    def may_include(self) -> set[str]:
        return {canonicalize_name(n) for n in self.expect.get("may_include") or []}

    @property
    def must_exclude(self) -> set[str]:
        return {canonicalize_name(n) for n in self.expect.get("must_exclude") or []}

    @property
    def workflow_files(self) -> list[str]:
        return list(self.expect.get("workflow_files") or [])


@dataclass
class Environment:
    """The parts of an emitted software/environment.yml the tests check."""

    raw: dict[str, Any]
    python: str | None
    conda: list[str]
    pip: list[Requirement]

    @classmethod
    def load(cls, path: Path) -> Environment:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        python, conda, pip = None, [], []
        for dep in raw.get("dependencies") or []:
            if isinstance(dep, dict):
                pip += [Requirement(line) for line in dep.get("pip") or []]
            elif dep.startswith("python="):
                python = dep.split("=", 1)[1]
            elif dep != "pip":
                conda.append(dep)
        return cls(raw, python, conda, pip)

    def names(self) -> set[str]:
        """Canonical names of every package entry, pip and conda alike."""
        names = {canonicalize_name(req.name) for req in self.pip}
        for dep in self.conda:  # "channel::name==1.2" or "name=1.2"
            bare = dep.split("::")[-1]
            names.add(canonicalize_name(bare.replace("==", "=").split("=")[0].strip()))
        return names

    def pip_entry(self, name: str) -> Requirement | None:
        wanted = canonicalize_name(name)
        return next((r for r in self.pip if canonicalize_name(r.name) == wanted), None)


@dataclass
class AuditRun:
    """One finished `flo-audit` invocation and the backpack it wrote."""

    scenario: Scenario
    backend: str
    workdir: Path  # the copy of the fixture folder the audit ran in
    out: Path
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """What to show when an assertion about this run fails."""
        def tail(text: str) -> str:
            return "\n".join(text.strip().splitlines()[-25:])
        return (f"{' '.join(self.argv)}\nexit {self.returncode}\n--- stdout (tail)\n"
                f"{tail(self.stdout)}\n--- stderr (tail)\n{tail(self.stderr)}")

    def path(self, relative: str) -> Path:
        return self.out / relative

    @cached_property
    def environment(self) -> Environment:
        path = self.path("software/environment.yml")
        assert path.is_file(), f"no software/environment.yml\n{self.describe()}"
        return Environment.load(path)

    @cached_property
    def requirements(self) -> list[Requirement]:
        path = self.path("software/requirements.txt")
        assert path.is_file(), f"no software/requirements.txt\n{self.describe()}"
        lines = (line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
                 for line in path.read_text(encoding="utf-8").splitlines())
        return [Requirement(line) for line in lines if line and not line.startswith("-")]

    def load_json(self, relative: str) -> dict[str, Any]:
        import json

        path = self.path(relative)
        assert path.is_file(), f"no {relative}\n{self.describe()}"
        return json.loads(path.read_text(encoding="utf-8"))


def flo_audit_argv() -> list[str]:
    """The CLI as a user runs it; `python -m auditor` is the same entry point."""
    script = Path(sys.executable).parent / "flo-audit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "auditor"]


def run_audit(scenario: Scenario, backend: str, base: Path) -> AuditRun:
    """Copy the fixture folder under `base`, audit it there with the CLI, keep everything."""
    workdir = base / scenario.name
    shutil.copytree(scenario.folder, workdir)
    out = base / "backpack"
    argv = [*flo_audit_argv(), str(workdir / scenario.workflow), "-o", str(out),
            "--backend", backend, "--timeout", str(AUDIT_TIMEOUT_S - 60),
            *map(str, scenario.expect.get("audit_args") or ())]  # e.g. --workers 2
    try:
        proc = subprocess.run(argv, cwd=base, capture_output=True, text=True,
                              timeout=AUDIT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"flo-audit did not finish within {AUDIT_TIMEOUT_S} s: {' '.join(argv)}\n"
                    f"{exc.stderr or ''}")
    return AuditRun(scenario, backend, workdir, out, argv, proc.returncode, proc.stdout,
                    proc.stderr)


@pytest.fixture(scope="session")
def audit_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., AuditRun]:
    """`audit_runs(name, backend=DEFAULT_BACKEND)`: the scenario's audit, run at most once a
    session."""
    done: dict[tuple[str, str], AuditRun] = {}

    def get(name: str, backend: str = DEFAULT_BACKEND) -> AuditRun:
        key = (name, backend)
        if key not in done:
            base = tmp_path_factory.mktemp(f"audit-{name}-{backend}")
            done[key] = run_audit(Scenario(name), backend, base)
        return done[key]

    return get


def requires_closure(names: Iterable[str]) -> set[str]:
    """Canonical names of `names` and everything they require, as installed here.

    Follows Requires-Dist transitively, with markers evaluated for this interpreter and no
    extras: the same closure DESIGN.md rule 7 asks the emitted pins to have.
    """
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


#: What the kernel machinery pins by itself (DESIGN.md rule 6: ipykernel stands for it).
MACHINERY = requires_closure(["ipykernel"])

#: flo-backpack itself and those of its dependencies a notebook kernel does not need. (psutil
#: would belong here, but IPython requires it, so the machinery closure legitimately pins it.)
OWN_UNUSED = {"flo-backpack"} | (
    {canonicalize_name(n) for n in ("rich", "nbclient", "nbformat", "psutil")}
    - MACHINERY
)
