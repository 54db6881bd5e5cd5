"""flo-run's own overhead around a notebook that does nothing, warm; and uv vs pip env builds.

Overhead: `flo-run BP --execute` on a one-cell notebook (`pass`), environments already cached,
timed as a whole process (interpreter start-up, validation, env cache hit, scheduler + workers,
kernel, teardown); the phase split comes from the run's own --json. Target: under 10 s.

Builders: the same spec built into an empty env cache with uv and with pip (each tool's own
download cache warmed by one build first, so the ratio compares installing, not the network).

    .venv/bin/python bench/run_overhead.py [--repeat 3] [--workers 1] [--skip-builders]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

PINS = ["dask==2026.8.0", "distributed==2026.8.0", "cloudpickle==3.1.3"]


def make_backpack(root: Path, workers: int) -> Path:
    for folder in ("workflow", "software", "compute"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("pass")]
    nbformat.write(notebook, root / "workflow" / "nothing.ipynb")
    pins = "".join(f"      - {p}\n" for p in PINS)
    (root / "software" / "environment.yml").write_text(
        f"name: bench\ndependencies:\n  - python=3.11.7\n  - pip\n  - pip:\n{pins}")
    (root / "compute" / "compute.yml").write_text(
        f"vine_factory_config:\n  min-workers: {workers}\n  max-workers: {workers}\n"
        "  cores: 1\n  memory: 1024\n  disk: 1000\n")
    return root


def timed_run(backpack: Path, cache: Path, scratch: Path) -> tuple[float, dict]:
    argv = [sys.executable, "-m", "provisioner.cli", str(backpack), "--execute", "-o",
            str(scratch / "out.ipynb"), "--cache-dir", str(cache), "--scratch-dir",
            str(scratch), "--json"]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"flo-run failed: {done.stderr.strip()[-2000:]}")
    return elapsed, json.loads(done.stdout)


def timed_build(backpack: Path, builder: str) -> float:
    from provisioner import api

    with tempfile.TemporaryDirectory(prefix=f"flo-bench-{builder}-") as cache:
        started = time.perf_counter()
        api.build_environments(backpack, cache, builder=builder)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-builders", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flo-bench-run-") as tmp:
        base = Path(tmp)
        backpack = make_backpack(base / "nothing", args.workers)
        cache, scratch = base / "cache", base / "scratch"
        cold, _ = timed_run(backpack, cache, scratch)
        print(f"first run (builds the environment): {cold:.2f} s")
        runs = [timed_run(backpack, cache, scratch) for _ in range(args.repeat)]
        walls = [wall for wall, _ in runs]
        print(f"warm flo-run overhead, whole process, {args.workers} worker(s), "
              f"{args.repeat} runs: median {statistics.median(walls):.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}); target < 10 s")
        phases = {name: statistics.median(r["phases"][name] for _, r in runs)
                  for name in runs[0][1]["phases"]}
        for name, seconds in phases.items():
            print(f"  {name:<22}{seconds:6.2f} s")
        if args.skip_builders:
            return
        for builder in ("uv", "pip"):
            timed_build(backpack, builder)  # warm the tool's own download cache
        uv = [timed_build(backpack, "uv") for _ in range(args.repeat)]
        pip = [timed_build(backpack, "pip") for _ in range(args.repeat)]
        print(f"env build, empty env cache, warm download caches ({', '.join(PINS)} + "
              f"bootstrap): uv median {statistics.median(uv):.2f} s, pip median "
              f"{statistics.median(pip):.2f} s, pip/uv = "
              f"{statistics.median(pip) / statistics.median(uv):.1f}x")


if __name__ == "__main__":
    main()
