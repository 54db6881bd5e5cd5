"""How audit cost grows with the work: per cell, per file read, per import, per Dask worker.

For each dimension, notebooks of several sizes are generated in a temporary folder (with their
input files or local modules), and each is run alternately (the order flips every round) as

- **plain**: a fresh interpreter executing it headless through nbclient, python3 kernel, in
  the notebook's folder (as bench/overhead.py does);
- **audit**: the full `flo-audit` CLI on the same notebook, the backpack written beside it.

Each row prints the medians, the difference audit - plain, and the per-unit overhead: the
difference less the difference at the dimension's baseline size, over the units added, so the
fixed cost of an audit (tracer and kernel start, the environment index) drops out. A flat
per-unit column across sizes means linear; a column that grows means worse than linear.

    .venv/bin/python bench/growth.py                  # every dimension, 1 round
    .venv/bin/python bench/growth.py --quick -n 2     # two smaller sizes each, 2 rounds
    .venv/bin/python bench/growth.py --only cells --only files
    .venv/bin/python bench/growth.py --against /tmp/before   # also audit with that tree

--against DIR audits each notebook a second time with another source tree of this project
(e.g. `git archive` of an older commit, unpacked: its auditor/ and kernels/ come first on
PYTHONPATH), in the same rounds, so both per-unit columns are measured under the same load.

Dimensions (baseline in brackets): cells, N trivial cells (1 cell); files, one cell reading N
files of 64 bytes (none); imports, one cell importing N generated local modules (none);
workers, a LocalCluster of N worker processes mapping 4 tasks per worker (1 worker).
Targets (issue 15): under 2 ms per cell, under 50 us per file, nothing worse than linear.
The trace-size dimension (0.5 to 5 M lines through derive) is bench/derive_speed.py's.
It prints; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auditor.common.process import run  # noqa: E402  (the repo on sys.path first)
from auditor.record.base import choose_tracer  # noqa: E402

RUN_TIMEOUT_S = 1800
NOTEBOOK = "growth.ipynb"

# Executed by a fresh interpreter: the notebook, headless, in its own folder, python3 kernel.
PLAIN = """
import sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
path = Path(sys.argv[1])
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, kernel_name="python3", timeout=None,
               resources={"metadata": {"path": str(path.parent)}}).execute()
"""


def _write_notebook(folder: Path, sources: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = folder / NOTEBOOK
    nbformat.write(nb, path)
    return path


def cells_notebook(folder: Path, size: int) -> Path:
    return _write_notebook(folder, [f"x = {i}" for i in range(size)])


def files_notebook(folder: Path, size: int) -> Path:
    inputs = folder / "inputs"
    inputs.mkdir()
    for i in range(size):
        (inputs / f"f_{i:05d}.txt").write_text(f"{i:063d}\n")
    return _write_notebook(folder, [
        "import os\n"
        "total = 0\n"
        "for name in sorted(os.listdir('inputs')):\n"
        "    with open(os.path.join('inputs', name), 'rb') as f:\n"
        "        total += len(f.read())\n"
        "total"])


def imports_notebook(folder: Path, size: int) -> Path:
    for i in range(size):
        (folder / f"m_{i:04d}.py").write_text(f"VALUE = {i}\n")
    names = [f"m_{i:04d}" for i in range(size)]
    return _write_notebook(folder, ["\n".join(f"import {n}" for n in names) or "pass",
                                    f"sum(m.VALUE for m in [{', '.join(names)}])"])


def workers_notebook(folder: Path, size: int) -> Path:
    return _write_notebook(folder, [
        "from dask.distributed import Client, LocalCluster",
        f"cluster = LocalCluster(n_workers={size}, threads_per_worker=1, processes=True,\n"
        "                       dashboard_address=None)\n"
        "client = Client(cluster)\n"
        f"client.wait_for_workers({size})",
        f"sum(client.gather(client.map(lambda x: x + 1, range({4 * size}))))",
        "client.close()\ncluster.close()"])


@dataclass(frozen=True)
class Dimension:
    unit: str
    sizes: tuple[int, ...]
    quick: tuple[int, ...]
    baseline: int
    build: Callable[[Path, int], Path]
    target_us: float | None = None


DIMENSIONS = {
    "cells": Dimension("cell", (10, 100, 1000), (10, 100), 1, cells_notebook, 2000),
    "files": Dimension("file", (100, 1000, 10000), (100, 1000), 0, files_notebook, 50),
    "imports": Dimension("import", (50, 200, 500), (50, 200), 0, imports_notebook),
    "workers": Dimension("worker", (1, 2, 4, 8), (1, 2), 1, workers_notebook),
}


@dataclass
class Row:
    dimension: str
    size: int
    plain: list[float] = field(default_factory=list)
    audit: list[float] = field(default_factory=list)
    derive: list[float] = field(default_factory=list)
    against: list[float] = field(default_factory=list)

    @property
    def difference(self) -> float:
        return statistics.median(self.audit) - statistics.median(self.plain)

    @property
    def against_difference(self) -> float:
        return statistics.median(self.against) - statistics.median(self.plain)


def flo_audit() -> list[str]:
    script = Path(sys.executable).parent / "flo-audit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "auditor"]


def measure(name: str, size: int, rounds: int, backend: str, tmp: Path,
            against: Path | None) -> Row:
    row = Row(name, size)
    folder = tmp / f"{name}-{size}"
    folder.mkdir()
    notebook = DIMENSIONS[name].build(folder, size)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # every run compiles alike
    for i in range(rounds):
        backpack = tmp / f"{name}-{size}-backpack-{i}"
        options = ["--backend", backend, "--json"]
        steps = {"plain": [sys.executable, "-c", PLAIN, str(notebook)],
                 "audit": [*flo_audit(), str(notebook), "-o", str(backpack), *options]}
        if against is not None:
            steps["against"] = [sys.executable, "-m", "auditor", str(notebook), "-o",
                                f"{backpack}-against", *options]
        for step in list(steps) if i % 2 == 0 else list(reversed(steps)):
            started = time.perf_counter()
            step_env = env if step != "against" else {**env, "PYTHONPATH": str(against)}
            done = run(steps[step], cwd=folder, env=step_env, timeout=RUN_TIMEOUT_S,
                       what=f"{step} run of the {name} notebook, size {size}")
            seconds = time.perf_counter() - started
            getattr(row, step).append(seconds)
            if step == "audit":
                row.derive.append(json.loads(done.stdout)["timings"]["derive_seconds"])
            print(f"  {name} {size:>6}: round {i + 1} {step:5s} {seconds:7.2f} s", flush=True)
    return row


def _per_unit(difference: float, row: Row, base: float, base_row: Row) -> str:
    if row.size == base_row.size:
        return "(baseline)"
    us = (difference - base) / (row.size - base_row.size) * 1e6
    return f"{us / 1000:.2f} ms" if abs(us) >= 1000 else f"{us:.0f} us"


def table(rows: list[Row], backend: str, rounds: int) -> str:
    against = bool(rows and rows[0].against)
    lines = [f"backend {backend}, medians of {rounds} alternating round(s); per unit = "
             "(difference - difference at the baseline) / units added",
             f"{'dimension':9s} {'size':>6s} {'plain s':>8s} {'audit s':>8s} {'diff s':>7s} "
             f"{'derive s':>8s} {'per unit':>10s} {'target':>9s}"
             + (f" {'against s':>9s} {'per unit':>10s}" if against else "")]
    for name in dict.fromkeys(r.dimension for r in rows):
        dimension = DIMENSIONS[name]
        own = [r for r in rows if r.dimension == name]
        base = next(r for r in own if r.size == dimension.baseline)
        target = "" if dimension.target_us is None else (
            f"< {dimension.target_us / 1000:g} ms" if dimension.target_us >= 1000
            else f"< {dimension.target_us:g} us")
        for r in own:
            line = (f"{name:9s} {r.size:6d} {statistics.median(r.plain):8.2f} "
                    f"{statistics.median(r.audit):8.2f} {r.difference:7.2f} "
                    f"{statistics.median(r.derive):8.2f} "
                    f"{_per_unit(r.difference, r, base.difference, base):>10s} "
                    f"{target if r is not base else '':>9s}")
            if against:
                per_unit = _per_unit(r.against_difference, r, base.against_difference, base)
                line += f" {statistics.median(r.against):9.2f} {per_unit:>10s}"
            lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="two smaller sizes per dimension")
    parser.add_argument("--only", action="append", choices=list(DIMENSIONS),
                        help="measure this dimension only (repeatable)")
    parser.add_argument("--backend", default="auto", choices=["auto", "ptrace", "strace", "hooks"],
                        help="the tracer (default: the one flo-audit's auto picks here)")
    parser.add_argument("--against", type=Path, help="also audit with this source tree")
    args = parser.parse_args(argv)
    args.backend = choose_tracer(args.backend)[0].name  # named in the table
    against = args.against.resolve() if args.against else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="flo-growth-") as tmp:
        for name in args.only or list(DIMENSIONS):
            dimension = DIMENSIONS[name]
            sizes = dimension.quick if args.quick else dimension.sizes
            for size in dict.fromkeys((dimension.baseline, *sizes)):
                rows.append(measure(name, size, args.rounds, args.backend, Path(tmp), against))
    print()
    print(table(rows, args.backend, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
