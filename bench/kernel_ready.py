"""How soon a started kernel is ready: nbclient's start against the execution core's `connect`.

Alternates N rounds of two ways to open a client to a freshly started python3 kernel (the
order flips every round), in this process, on one event loop:

- **nbclient**: `NotebookClient.async_start_new_kernel_client`, which waits through
  jupyter_client's `wait_for_ready` (a plain nbclient run, and so bench/overhead.py's and
  bench/run_floor.py's plain side, starts this way);
- **connect**: `auditor.common.execution.connect`, which the recorder and flo-run use.

Each round times, from the kernel's launch: when the client is ready, then CELLS trivial
cells run through `run_cells` after it (so a change to the start that slowed every cell after
it would show). Prints the medians and the difference per way.

    .venv/bin/python bench/kernel_ready.py [-n 5] [--cells 1000] [--connect-first]

`--connect-first` starts each even round with connect instead of nbclient (run it both ways:
a difference that follows the order is the order's, not the start's).

It prints; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nbformat  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

from auditor.common.execution import connect, notebook_client, run_cells  # noqa: E402

WAYS = ("nbclient", "connect")


async def one_round(way: str, cells: int, cwd: Path) -> tuple[float, float]:
    """(seconds from launch to ready, seconds for the cells) for one fresh kernel."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = {i}")
                                         for i in range(cells)])
    km = AsyncKernelManager(kernel_name="python3")
    client = notebook_client(nb, km, cwd=cwd, timeout=None, startup_timeout=60)
    started = time.perf_counter()
    await client.async_start_new_kernel()
    try:
        if way == "connect":
            await connect(client)
        else:
            await client.async_start_new_kernel_client()
        ready = time.perf_counter()
        if cells:
            await run_cells(client)
        return ready - started, time.perf_counter() - ready
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        if km.has_kernel:
            await km.shutdown_kernel(now=True)


async def measure(rounds: int, cells: int, ways: tuple[str, ...] = WAYS,
                  ) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(prefix="flo-ready-") as tmp:
        for i in range(rounds):
            for way in ways if i % 2 == 0 else reversed(ways):
                ready, ran = await one_round(way, cells, Path(tmp))
                results[way].append((ready, ran))
                print(f"  round {i + 1}: {way:8s} ready {ready:6.3f} s, {cells} cells "
                      f"{ran:6.2f} s", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--rounds", type=int, default=5)
    parser.add_argument("--cells", type=int, default=1000,
                        help="trivial cells run after the start (default: %(default)s)")
    parser.add_argument("--connect-first", action="store_true",
                        help="even rounds start with connect (default: with nbclient)")
    args = parser.parse_args(argv)
    ways = tuple(reversed(WAYS)) if args.connect_first else WAYS
    results = asyncio.run(measure(args.rounds, args.cells, ways))
    ready = {way: statistics.median(r for r, _ in runs) for way, runs in results.items()}
    ran = {way: statistics.median(c for _, c in runs) for way, runs in results.items()}
    print(f"\nmedians of {args.rounds} alternating rounds, seconds")
    print(f"{'start':10s} {'ready':>7s} {f'{args.cells} cells':>11s}")
    for way in WAYS:
        print(f"{way:10s} {ready[way]:7.3f} {ran[way]:11.2f}")
    print(f"connect - nbclient: ready {ready['connect'] - ready['nbclient']:+.3f} s, "
          f"cells {ran['connect'] - ran['nbclient']:+.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
