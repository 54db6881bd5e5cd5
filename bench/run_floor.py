"""Warm flo-run overhead over a plain nbclient run of the same notebook in the same environment.

For each engine (dask-local with `--workers` workers, and notebook), a one-cell notebook
(`pass`) is run alternately (the order flips every round):

- **flo-run**: `flo-run BP --execute --engine E --json` as a whole process, environments
  already in the cache (one untimed run fills it first);
- **plain**: a fresh interpreter (flo-run's own) executing the same notebook through nbclient,
  with a kernelspec naming the cached manager environment's python, in a copy of workflow/.

It prints each run, then per engine the medians, the overhead flo-run - plain, and the median
phase split from flo-run's --json. Targets (issue 15): <= 1.0 s with dask-local and 1 worker,
<= 0.5 s with the notebook engine. A benchmark prints; it never passes or fails on a time.

    .venv/bin/python bench/run_floor.py [--rounds 5] [--workers 1] [--engine dask-local ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run_overhead import make_backpack  # noqa: E402  (the repo on sys.path first)

TARGETS = {"dask-local": 1.0, "notebook": 0.5}
RUN_TIMEOUT_S = 900

# Executed by a fresh interpreter: argv = notebook, folder, manager python.
PLAIN = """
import json, sys, tempfile
from pathlib import Path
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
notebook, folder, python = sys.argv[1:4]
with tempfile.TemporaryDirectory() as specs:
    spec = Path(specs) / "kernels" / "plain"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "plain", "language": "python"}))
    km = KernelManager(kernel_name="plain", kernel_spec_manager=KernelSpecManager(
        kernel_dirs=[str(Path(specs) / "kernels")]))
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, km=km, kernel_name="plain", timeout=None,
                   resources={"metadata": {"path": folder}}).execute()
    nbformat.write(nb, Path(folder) / "out.ipynb")
"""


def flo_run_argv(backpack: Path, engine: str, cache: Path, scratch: Path) -> list[str]:
    return [sys.executable, "-m", "provisioner.cli", str(backpack), "--execute", "--engine",
            engine, "-o", str(scratch / "out.ipynb"), "--cache-dir", str(cache),
            "--scratch-dir", str(scratch), "--json"]


def timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv[1:3]} failed: {done.stderr.strip()[-2000:]}")
    return elapsed, done.stdout


def measure(engine: str, backpack: Path, cache: Path, base: Path, rounds: int) -> dict:
    scratch = base / f"scratch-{engine}"
    flo_argv = flo_run_argv(backpack, engine, cache, scratch)
    _, first = timed(flo_argv)  # fills the environment cache (untimed)
    python = Path(json.loads(first)["envs"]["manager"]["path"]) / "bin" / "python"
    folder = base / f"plain-{engine}"
    shutil.copytree(backpack / "workflow", folder, dirs_exist_ok=True)
    plain_argv = [sys.executable, "-c", PLAIN, str(folder / "nothing.ipynb"), str(folder),
                  str(python)]
    flo, plain, phases = [], [], []
    for i in range(rounds):
        steps = [("flo-run", flo_argv), ("plain", plain_argv)]
        for name, argv in steps if i % 2 == 0 else reversed(steps):
            seconds, out = timed(argv)
            if name == "flo-run":
                flo.append(seconds)
                phases.append(json.loads(out)["phases"])
            else:
                plain.append(seconds)
            print(f"  {engine} round {i + 1}: {name:8s} {seconds:6.2f} s", flush=True)
    split = {name: statistics.median(p.get(name, 0.0) for p in phases) for name in phases[0]}
    return {"engine": engine, "flo": statistics.median(flo), "plain": statistics.median(plain),
            "phases": split}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--engine", action="append", choices=sorted(TARGETS),
                        help="engine(s) to measure (default: both)")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="flo-bench-floor-") as tmp:
        base = Path(tmp)
        backpack = make_backpack(base / "nothing", args.workers)
        for engine in args.engine or list(TARGETS):
            results.append(measure(engine, backpack, base / "cache", base, args.rounds))
    print(f"\nmedians of {args.rounds} alternating rounds, {args.workers} worker(s) for "
          "dask-local")
    print(f"{'engine':11s} {'plain s':>8s} {'flo-run s':>9s} {'overhead s':>10s} "
          f"{'target':>8s}")
    for r in results:
        print(f"{r['engine']:11s} {r['plain']:8.2f} {r['flo']:9.2f} "
              f"{r['flo'] - r['plain']:10.2f} {'<= ' + format(TARGETS[r['engine']], '.1f'):>8s}")
    for r in results:
        print(f"phases, {r['engine']} (median s): " + ", ".join(
            f"{name} {seconds:.2f}" for name, seconds in r["phases"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
