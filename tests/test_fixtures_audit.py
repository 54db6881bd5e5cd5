"""End to end: audit every fixture scenario with the real CLI and check the backpack it writes.

Each scenario's expect.yml says which distributions the environment must and must not list.
Beyond that, nothing outside what the run used (plus ipykernel for the machinery), closed under
Requires-Dist, may appear: the fixture environment holds unused packages on purpose.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import (
    DEFAULT_BACKEND,
    MACHINERY,
    OWN_UNUSED,
    RECORD_SUFFIX,
    AuditRun,
    requires_closure,
    scenario_names,
)
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow


#: Every scenario with the default backend (ptrace), and these again with strace: the same
#: checks hold for its record (the fallback where ptrace is not usable).
STRACE_SCENARIOS = ("c_extension", "data_inputs", "workers_mp_fork")


@pytest.fixture(scope="module", params=[
    *((name, DEFAULT_BACKEND) for name in scenario_names()),
    *((name, "strace") for name in STRACE_SCENARIOS)], ids=lambda p: "-".join(p))
def run(request: pytest.FixtureRequest, audit_runs: Callable[..., AuditRun]) -> AuditRun:
    return audit_runs(*request.param)


def test_fixture_environment_is_set_up() -> None:
    """The scenarios rely on the set-up: unused packages installed, floedit editable."""
    for name in ("tabulate", "termcolor", "jaraco.context", "jaraco.functools", "numpy"):
        importlib.metadata.version(name)  # raises PackageNotFoundError: run `make setup`
    direct = importlib.metadata.distribution("floedit").read_text("direct_url.json")
    assert direct and json.loads(direct).get("dir_info", {}).get("editable"), (
        "floedit is not installed in editable mode: run `make setup`")


def test_exit_code_and_status(run: AuditRun) -> None:
    expected_code = 0 if run.scenario.status == "complete" else 1
    assert run.returncode == expected_code, run.describe()
    summary = run.load_json("audit/summary.json")
    assert summary.get("status") == run.scenario.status, summary


def test_backpack_layout(run: AuditRun) -> None:
    for relative in ("software/environment.yml", "software/requirements.txt",
                     "compute/compute.yml", "audit/summary.json", "audit/session.json",
                     "audit/hooks.jsonl", "audit/executed.ipynb",
                     f"audit/trace{RECORD_SUFFIX[run.backend]}"):
        assert run.path(relative).is_file(), f"missing {relative}\n{run.describe()}"
    compute = yaml.safe_load(run.path("compute/compute.yml").read_text(encoding="utf-8"))
    assert {"cores", "memory", "disk"} <= set(compute["vine_factory_config"]), compute
    # The audit ran in a folder holding only the fixture copy: anything else is a leftover
    # (a temporary output folder that was not renamed into place, stray files in the cwd).
    left = {p.name for p in run.out.parent.iterdir()} - {run.workdir.name, run.out.name}
    assert not left, f"left behind next to the backpack: {sorted(left)}"


def test_must_include(run: AuditRun) -> None:
    missing = run.scenario.must_include - run.environment.names()
    assert not missing, f"used but not listed: {sorted(missing)}\n{run.environment.raw}"


def test_must_exclude(run: AuditRun) -> None:
    wrongly = run.scenario.must_exclude & run.environment.names()
    assert not wrongly, f"installed, unused, yet listed: {sorted(wrongly)}"


def test_summary_says_what_was_used(run: AuditRun) -> None:
    """Each package the notebook used is reported as used, not just pulled in by another.

    Catches DESIGN.md rule 6: `from dateutil import parser` counts for its cell even though
    jupyter_client loaded dateutil before any cell ran.
    """
    packages = run.load_json("audit/summary.json").get("packages") or []
    used = {canonicalize_name(p["name"]) for p in packages if p.get("reason") == "used"}
    missing = run.scenario.must_include - used
    assert not missing, f"not reported as used in audit/summary.json: {sorted(missing)}"


def test_own_packages_absent(run: AuditRun) -> None:
    wrongly = OWN_UNUSED & run.environment.names()
    assert not wrongly, f"flo-backpack's own packages listed: {sorted(wrongly)}"


def test_nothing_beyond_what_ran(run: AuditRun) -> None:
    """Every entry is used by the notebook, the machinery, or required by one of those."""
    allowed = requires_closure(run.scenario.must_include | run.scenario.may_include) | MACHINERY
    extra = run.environment.names() - allowed
    assert not extra, f"listed though neither used nor required: {sorted(extra)}"


def test_pins_are_the_installed_versions(run: AuditRun) -> None:
    for req in run.environment.pip:
        if req.url:  # a direct reference: only installed local/editable/VCS packages
            assert json.loads(importlib.metadata.distribution(req.name)
                              .read_text("direct_url.json") or "{}"), req
            continue
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"not an exact pin: {req}"
        assert specs[0].version == importlib.metadata.version(req.name), req


def test_closed_under_requires_dist(run: AuditRun) -> None:
    """DESIGN.md rule 7: `--no-deps` installs must work, so every requirement is pinned too."""
    names = run.environment.names()
    missing = requires_closure(names) - names
    assert not missing, f"required by listed packages but not pinned: {sorted(missing)}"


def test_python_is_the_kernel_version(run: AuditRun) -> None:
    # The CLI runs the notebook's python3 kernel, which is this interpreter.
    assert run.environment.python == platform.python_version(), run.environment.raw


def test_requirements_txt_has_the_same_pins(run: AuditRun) -> None:
    def key(req: Requirement) -> tuple[str, str, str | None]:
        return canonicalize_name(req.name), str(req.specifier), req.url

    assert sorted(map(key, run.requirements)) == sorted(map(key, run.environment.pip))


def test_workflow_folder(run: AuditRun) -> None:
    """The workflow as given (unexecuted) plus the local files the run imported, nothing else."""
    workflow = run.path("workflow")
    expected = {run.scenario.workflow, *run.scenario.workflow_files}
    present = {p.relative_to(workflow).as_posix() for p in workflow.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert present == expected
    for name in expected:
        original = Path(run.scenario.folder, name).read_bytes()
        assert (workflow / name).read_bytes() == original, f"workflow/{name} differs"


def test_failed_cell_is_named(audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("cell_fails")
    failed = run.load_json("audit/session.json").get("failed_cell") or {}
    assert failed.get("ename") == "ValueError", run.describe()
    assert "deliberate failure" in (failed.get("evalue") or "")


def test_editable_package_is_a_direct_reference(audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("editable_pkg")
    entry = run.environment.pip_entry("floedit")
    assert entry is not None, run.environment.raw
    package = (Path(__file__).resolve().parents[1] / "fixtures/packages/floedit").as_uri()
    assert entry.url and entry.url.rstrip("/") == package, f"{entry} is not floedit @ {package}"


def test_hooks_backend_finds_what_was_used(audit_runs: Callable[..., AuditRun]) -> None:
    """Where ptrace is not allowed, audit hooks alone still find every package used."""
    run = audit_runs("import_names", "hooks")
    assert run.returncode == 0, run.describe()
    names = run.environment.names()
    missing = run.scenario.must_include - names
    assert not missing, f"hooks backend missed {sorted(missing)}\n{run.environment.raw}"
    assert not (run.scenario.must_exclude | OWN_UNUSED) & names
