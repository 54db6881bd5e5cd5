"""Preflight (`flo-run check`, and the first stage of `flo-run BP`): each check fails on a real
condition with a one-line reason, exit 2, and nothing is built, fetched or started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = ".".join(map(str, sys.version_info[:3]))
NOTEBOOK = json.dumps({"cells": [{"cell_type": "code", "id": "c0", "metadata": {},
                                  "outputs": [], "execution_count": None,
                                  "source": "print('hello')"}],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def make_backpack(root: Path, *, pins: tuple[str, ...] = (), memory: int = 0,
                  data_size: int | None = None) -> Path:
    """A hand-written backpack (no audit): one notebook, pip pins, compute.yml, data.yml."""
    (root / "workflow").mkdir(parents=True)
    (root / "workflow" / "nb.ipynb").write_text(NOTEBOOK)
    (root / "software").mkdir()
    pip = "".join(f"      - {pin}\n" for pin in pins)
    (root / "software" / "environment.yml").write_text(
        f"name: nb\nchannels: [conda-forge]\ndependencies:\n  - python={PY}\n  - pip\n"
        + (f"  - pip:\n{pip}" if pins else ""))
    (root / "compute").mkdir()
    (root / "compute" / "compute.yml").write_text(
        f"vine_factory_config:\n  min-workers: 1\n  max-workers: 1\n  cores: 1\n"
        f"  memory: {memory}\n  disk: 0\n")
    if data_size is not None:
        (root / "data").mkdir()
        big = root / "data" / "big.bin"
        big.write_bytes(b"\0" * data_size)
        (root / "data" / "data.yml").write_text(
            "schema_version: 1.0\ndefault_profile: local\nprofiles:\n  local:\n    data:\n"
            "      - name: big\n        source_type: backpack\n        source: data/big.bin\n"
            f"        target_location: big.bin\n        expected_size: {data_size}\n")
    return root


def flo_run(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "provisioner.cli", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def checks(done: subprocess.CompletedProcess[str]) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for check in json.loads(done.stdout)["checks"]:
        by_name.setdefault(check["name"], []).append(check)
    return by_name


def failed(done: subprocess.CompletedProcess[str]) -> list[dict]:
    return [c for group in checks(done).values() for c in group if c["status"] == "failed"]


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"cache": tmp_path / "cache", "scratch": tmp_path / "scratch"}


def dir_args(dirs: dict[str, Path]) -> list[str]:
    return ["--cache-dir", str(dirs["cache"]), "--scratch-dir", str(dirs["scratch"])]


def nothing_made(dirs: dict[str, Path]) -> bool:
    return all(not d.exists() or not any(d.iterdir()) for d in dirs.values())


def test_a_ready_backpack_passes_every_check(tmp_path, dirs):
    bp = make_backpack(tmp_path / "bp", pins=("six==1.16.0",))
    done = flo_run("check", str(bp), "--engine", "dask-local", "--json", *dir_args(dirs))
    assert done.returncode == 0, done.stdout + done.stderr
    found = checks(done)
    assert {"interpreter", "disk", "cores", "memory", "scheduler port", "pins"} <= set(found)
    assert all(c["status"] == "passed" for group in found.values() for c in group), found
    assert "1 pins resolve" in found["pins"][0]["reason"]
    assert nothing_made(dirs)


def test_more_memory_than_the_machine_has(tmp_path, dirs):
    bp = make_backpack(tmp_path / "bp", memory=10**9)  # a petabyte per worker
    done = flo_run("check", str(bp), "--engine", "dask-local", "--json", *dir_args(dirs))
    assert done.returncode == 2
    [memory] = failed(done)
    assert memory["name"] == "memory" and "1000000000 MB per worker" in memory["reason"]
    assert nothing_made(dirs)


def test_a_pin_with_no_wheel_for_linux_is_named(tmp_path, dirs):
    bp = make_backpack(tmp_path / "bp", pins=("six==1.16.0", "pywin32==306"))
    done = flo_run("check", str(bp), "--json", *dir_args(dirs))
    assert done.returncode == 2
    [pins] = failed(done)
    assert pins["name"] == "pins" and "pin pywin32==306 cannot be installed" in pins["reason"]
    assert "no wheels with a matching platform tag" in pins["reason"]
    assert nothing_made(dirs)


def test_missing_sbatch(tmp_path, dirs):
    bp = make_backpack(tmp_path / "bp")
    bare = tmp_path / "bin"
    bare.mkdir()
    done = flo_run("check", str(bp), "--engine", "slurm", "--json", *dir_args(dirs),
                   env={"PATH": str(bare)})
    assert done.returncode == 2, done.stderr
    [batch] = failed(done)
    assert batch["name"] == "batch system"
    assert batch["reason"].startswith("sbatch, squeue, scancel, sinfo not found on PATH")


def test_a_scheduler_port_in_use(tmp_path, dirs):
    bp = make_backpack(tmp_path / "bp")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = flo_run("check", str(bp), "--engine", "dask-local", "--json",
                       "--scheduler-port", str(port), *dir_args(dirs))
    assert done.returncode == 2
    [busy] = failed(done)
    assert busy["name"] == "scheduler port" and f"127.0.0.1:{port}: in use" in busy["reason"]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 1 MB tmpfs (root only): a scratch folder that really is too small."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_scratch_folder_too_small_for_the_data(tmp_path, small_tmpfs):
    bp = make_backpack(tmp_path / "bp", data_size=3 * 10**6)
    cache = tmp_path / "cache"
    done = flo_run("check", str(bp), "--json", "--scratch-dir", str(small_tmpfs / "runs"),
                   "--cache-dir", str(cache))
    assert done.returncode == 2
    [disk] = failed(done)
    assert disk["name"] == "disk" and str(small_tmpfs) in disk["reason"]
    assert "data 3 MB" in disk["reason"] and "--scratch-dir" in disk["reason"]
    # The same refusal stops a real run before anything is fetched, built or started.
    run = flo_run(str(bp), "--execute", "--scratch-dir", str(small_tmpfs / "runs"),
                  "--cache-dir", str(cache), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flo-run: preflight: disk: "), run.stderr
    assert not any(p.name.startswith("run-") for p in (small_tmpfs / "runs").iterdir())
    assert not cache.exists() or not any(cache.iterdir())
    assert not (tmp_path / "nb-executed.ipynb").exists()


def test_an_index_that_does_not_answer_is_a_warning_not_a_refusal(tmp_path, dirs):
    """Only uv's own "no solution" refuses a pin; an index it cannot reach (a closed port
    here) leaves the pins unchecked, with a warning, for the build to report."""
    bp = make_backpack(tmp_path / "bp", pins=("six==1.16.0",))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = flo_run("check", str(bp), "--json", *dir_args(dirs),
                   env={"UV_DEFAULT_INDEX": f"http://127.0.0.1:{port}/simple",
                        "UV_NO_CACHE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    [pins] = checks(done)["pins"]
    assert pins["status"] == "warning" and "the package index did not answer" in pins["reason"]
