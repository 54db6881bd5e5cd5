"""What the kernel side adds to each cell, in a real IPython shell (no kernel process, no zmq).

    .venv/bin/python bench/kernel_cell_cost.py [--cells 300] [--rounds 3]
    .venv/bin/python bench/kernel_cell_cost.py --against /tmp/old/kernels/flo_kernel.py

A fresh interpreter per measurement imports ipykernel (so sys.modules is a kernel's), makes an
IPython InteractiveShell, runs `--cells` trivial cells (`x = N`, history stored) bare, then
attaches kernels/flo_kernel.py as the audit does (audit hook, cell events, the names record,
marks on as under a syscall tracer; nothing traces here, so a mark is one failed open) and runs
them again. Prints the median ms per cell of both and the difference. `--against` alternates
another copy of flo_kernel.py, measurement by measurement, for the ratio. The per-cell cost of
a whole audit (kernel, tracer, recorder) is bench/growth.py's `cells` dimension.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import os, runpy, statistics, sys, tempfile, time
import ipykernel.ipkernel  # noqa: F401  (a kernel's modules loaded)
from IPython.core.interactiveshell import InteractiveShell

side, cells, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
shell = InteractiveShell.instance()

def run(n):
    started = time.perf_counter()
    for i in range(n):
        shell.run_cell(f"x = {i}", store_history=True)
    return (time.perf_counter() - started) / n * 1e3

run(20)
bare = statistics.median(run(cells) for _ in range(rounds))
with tempfile.TemporaryDirectory() as tmp:
    runpy.run_path(side, run_name="_flo_backpack_kernel")["attach"](
        shell, {"log": os.path.join(tmp, "hooks.jsonl"), "marks": True})
    run(20)
    attached = statistics.median(run(cells) for _ in range(rounds))
print(f"{bare:.4f} {attached:.4f}")
"""


def measure(side: Path, cells: int, rounds: int) -> tuple[float, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(side), str(cells), str(rounds)],
                          capture_output=True, text=True, timeout=600, check=True)
    bare, attached = done.stdout.split()
    return float(bare), float(attached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="measurements per copy")
    parser.add_argument("--against", type=Path, help="another copy of kernels/flo_kernel.py")
    args = parser.parse_args()
    sides = {"this": REPO / "kernels" / "flo_kernel.py"}
    if args.against:
        sides["against"] = args.against
    added: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():
            bare, attached = measure(side, args.cells, 3)
            added[name].append(attached - bare)
            print(f"  {name}: bare {bare:.3f} ms, attached {attached:.3f} ms per cell",
                  flush=True)
    for name, values in added.items():
        print(f"{name}: the kernel side adds {statistics.median(values):.3f} ms per cell "
              f"(median of {len(values)})")
    if args.against:
        ratio = statistics.median(added["this"]) / statistics.median(added["against"])
        print(f"this / against: {ratio:.2f}")


if __name__ == "__main__":
    main()
