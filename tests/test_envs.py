"""Environment builder and cache, on real uv and real venvs (network: PyPI only, uv caches it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from provisioner import api
from provisioner.envs import EnvBuildError, EnvCache, InterpreterNotFound, find_interpreter
from provisioner.envs.cache import STAMP

pytestmark = pytest.mark.slow

PYENV = Path.home() / ".pyenv" / "versions"
PY311 = PYENV / "3.11.7" / "bin" / "python"
FLO_RUN = [sys.executable, "-m", "provisioner.cli"]
needs_pyenv = pytest.mark.skipif(not PY311.exists(), reason="needs ~/.pyenv/versions/3.11.7")


def make_backpack(root: Path, python: str, pins: list[str], worker_pins: list[str] | None = None,
                  ) -> Path:
    """A minimal backpack: one notebook, environment.yml (+ worker-environment.yml), compute."""
    (root / "workflow").mkdir(parents=True)
    (root / "software").mkdir()
    (root / "compute").mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import six, tabulate")]
    nbformat.write(notebook, root / "workflow" / "analysis.ipynb")

    def env_yml(pip_pins: list[str]) -> str:
        lines = "".join(f"      - {p}\n" for p in pip_pins)
        return f"name: t\ndependencies:\n  - python={python}\n  - pip\n  - pip:\n{lines}"

    (root / "software" / "environment.yml").write_text(env_yml(pins))
    if worker_pins is not None:
        (root / "software" / "worker-environment.yml").write_text(env_yml(worker_pins))
    (root / "compute" / "compute.yml").write_text(
        "vine_factory_config:\n  min-workers: 1\n  max-workers: 2\n  cores: 1\n"
        "  memory: 1024\n  disk: 1000\n")
    return root


def versions_in(env: Path, *names: str) -> dict[str, str | None]:
    """Ask the environment's own python which versions it has (None when absent)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))")
    done = subprocess.run([env / "bin" / "python", "-c", code, *names], capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@needs_pyenv
def test_build_then_reuse_without_uv(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0", "tabulate==0.9.0"])
    cache = tmp_path / "cache"

    cold = api.build_environments(bp, cache)
    assert len(cold.envs) == 1, "identical manager and worker specs must share one env"
    env = cold.envs[0]
    assert env.roles == ("manager", "worker") and not env.from_cache
    assert env.python == "3.11.7"
    found = versions_in(env.path, "six", "tabulate", "ipykernel", "distributed", "cloudpickle")
    assert found["six"] == "1.16.0" and found["tabulate"] == "0.9.0"
    assert all(found[n] for n in ("ipykernel", "distributed", "cloudpickle")), found
    # The venv was built in a temporary folder and renamed: its scripts must still run.
    done = subprocess.run([env.path / "bin" / "tabulate", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "Usage" in done.stdout, done.stderr
    assert not list(cache.glob(".*.tmp-*")), "no temporary build folder may remain"

    stamp = env.path / STAMP
    stamp_mtime = stamp.stat().st_mtime_ns
    warm = api.build_environments(bp, cache)
    assert warm.envs[0].from_cache and warm.envs[0].path == env.path
    assert stamp.stat().st_mtime_ns == stamp_mtime, "a cache hit must not rebuild the env"
    assert warm.seconds < 2.0 and warm.seconds * 3 < cold.seconds, (cold.seconds, warm.seconds)


@needs_pyenv
def test_cache_hit_makes_no_uv_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0"])
    api.build_environments(bp, tmp_path / "cache")

    def no_uv(*args, **kwargs):
        raise AssertionError("uv was called on a cache hit")

    monkeypatch.setattr("provisioner.envs.uv.uv_command", no_uv)
    assert api.build_environments(bp, tmp_path / "cache").envs[0].from_cache


@needs_pyenv
def test_different_worker_spec_gets_its_own_env(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0", "tabulate==0.9.0"],
                       worker_pins=["six==1.16.0"])
    report = api.build_environments(bp, tmp_path / "cache")
    manager, worker = report.for_role("manager"), report.for_role("worker")
    assert manager.path != worker.path
    in_worker = versions_in(worker.path, "six", "tabulate", "distributed", "ipykernel")
    assert in_worker["six"] == "1.16.0" and in_worker["distributed"]
    assert in_worker["tabulate"] is None and in_worker["ipykernel"] is None, in_worker
    assert versions_in(manager.path, "ipykernel")["ipykernel"]


def test_interpreter_matching_exact_then_minor() -> None:
    if not (PYENV / "3.10.13").exists():
        pytest.skip("needs ~/.pyenv/versions/3.10.13")
    exact = find_interpreter("3.10.13")
    assert exact.version == "3.10.13"
    assert Path(exact.executable).resolve().is_relative_to((PYENV / "3.10.13").resolve())
    minor = find_interpreter("3.10.2")  # not installed: same major.minor is used
    assert minor.major_minor == "3.10"


def test_no_matching_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InterpreterNotFound) as info:
        find_interpreter("2.0")
    message = str(info.value)
    assert "2.0" in message and ".pyenv/versions" in message and "--python" in message

    bp = make_backpack(tmp_path / "bp", "2.0", ["six==1.16.0"])
    done = subprocess.run([*FLO_RUN, "env", str(bp), "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 2
    assert "no Python 2.0 interpreter found" in done.stderr and "Traceback" not in done.stderr


@needs_pyenv
def test_uninstallable_pin_fails_cleanly(tmp_path: Path) -> None:
    bad = "flo-backpack-no-such-package-q7z"
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0", f"{bad}==1.0"])
    cache = tmp_path / "cache"
    with pytest.raises(EnvBuildError) as info:
        api.build_environments(bp, cache)
    assert bad in str(info.value) and "six" not in str(info.value).split("from PyPI")[0]
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [], \
        "a failed build must leave no environment folder"


@needs_pyenv
def test_two_concurrent_runs_build_once(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0", "tabulate==0.9.0"])
    cache_dir = tmp_path / "cache"
    [request] = api.plan_environments(api.validate(bp))
    cache = EnvCache(cache_dir)
    lock_file = cache_dir / f".{request.key}.lock"
    argv = [*FLO_RUN, "env", str(bp), "--cache-dir", str(cache_dir), "--json"]
    # Hold the key's lock until both runs block on it, so both really race for one build.
    with cache.lock(request.key):
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=Path(__file__).parents[1]) for _ in range(2)]
        _wait_for_blocked_flocks(lock_file, 2, procs)
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out)["envs"][0])
    assert sorted(r["from_cache"] for r in results) == [False, True], results
    hit = next(r for r in results if r["from_cache"])
    assert hit["waited"] > 0, "the cache hit must have waited for the other build"
    assert results[0]["path"] == results[1]["path"]
    assert [p.name for p in cache_dir.iterdir() if not p.name.startswith(".")] == [request.key]


def _wait_for_blocked_flocks(lock_file: Path, count: int, procs: list, limit: float = 120) -> None:
    """Bounded wait until `count` processes are queued on flock(lock_file) (from /proc/locks)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        inode = os.stat(lock_file).st_ino if lock_file.exists() else None
        text = Path("/proc/locks").read_text()
        waiting = [ln for ln in text.splitlines() if "->" in ln and inode is not None
                   and ln.split()[6].endswith(f":{inode}")]
        if len(waiting) >= count:
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a flo-run env exited early: {procs[0].communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"{count} flo-run env processes did not block on {lock_file} "
                         f"within {limit} s")


def test_conda_pins_map_to_pypi_names() -> None:
    from auditor.backpack.environment import Pin
    from provisioner.envs.uv import requirement_line

    assert requirement_line(Pin("pytorch", "2.1.0", "conda", "conda-forge")) == "torch==2.1.0"
    assert requirement_line(Pin("numpy", "2.1.3", "conda", "conda-forge")) == "numpy==2.1.3"
    assert requirement_line(Pin("openssl", "3.0.12", "conda", None)) is None  # runtime, skipped
    assert requirement_line(Pin("floedit", "file:///src/floedit", "pip")) == \
        "floedit @ file:///src/floedit"
    assert requirement_line(Pin("pandas", None, "pip")) == "pandas"


@needs_pyenv
def test_floability_conda_spec_builds_with_uv_skipping_taskvine(tmp_path: Path) -> None:
    """A hand-written Floability environment.yml lists conda packages only, ndcctools among
    them: with uv the others come from PyPI, ndcctools (conda-forge only, TaskVine) is skipped
    with a note, never a failed build."""
    from provisioner.api import build_environments

    bp = make_backpack(tmp_path / "bp", "3.11.7", [])
    (bp / "software" / "environment.yml").write_text(
        "name: flo\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - ndcctools\n"
        "  - six=1.16.0\n  - tabulate\n  - pip\n")
    report = build_environments(bp, tmp_path / "cache", builder="uv")
    [env] = report.envs
    assert env.installed.get("six") == "1.16.0" and "tabulate" in env.installed
    assert not any(name.lower() == "ndcctools" for name in env.installed)
    assert any("ndcctools" in note and "TaskVine" in note for note in env.notes), env.notes
