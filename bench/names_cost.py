"""What the kernel side's `names` record costs per cell, for a big user namespace.

Attaches kernels/flo_kernel.py (by path, as in a kernel, audit hook included) to a stand-in
shell whose namespace holds N names (default 10,000), then times the record written at each
cell end (`write_names`) in the namespace changes a cell makes: none, a few names rebound, a
few added, one deleted (the slower by-name comparison). Beside it, the same comparison keyed
with id(), which raises an audit event per name, for the ratio.

    .venv/bin/python bench/names_cost.py [--names 10000] [--rounds 200]

Target (issue 12): under 1 ms per cell for 10,000 names. It prints; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_SIDE = REPO / "kernels" / "flo_kernel.py"


class _Events:
    def __init__(self) -> None:
        self.handlers: dict[str, list] = {}

    def register(self, name: str, fn: object) -> None:
        self.handlers.setdefault(name, []).append(fn)


class _Shell:
    def __init__(self, names: int) -> None:
        self.events = _Events()
        self.user_ns: dict[str, object] = {"In": [], "Out": {}, "get_ipython": None}
        self.user_ns.update((f"value_{i}", object()) for i in range(names))

    def transform_cell(self, raw: str) -> str:
        return raw


def _median_ms(action, change, rounds: int) -> float:
    times = []
    for round_ in range(rounds):
        change(round_)
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()

    shell = _Shell(args.names)
    with tempfile.TemporaryDirectory() as tmp:
        runpy.run_path(str(KERNEL_SIDE), run_name="_flo_backpack_kernel")["attach"](
            shell, {"log": str(Path(tmp) / "hooks.jsonl"), "marks": False})
        side = shell.events.handlers["post_run_cell"][0].__self__
        ns = shell.user_ns
        added = iter(range(10**9))

        def nothing(_: int) -> None:
            pass

        def rebind(round_: int) -> None:
            for i in range(5):
                ns[f"value_{(round_ * 5 + i) % args.names}"] = object()

        def add(_: int) -> None:
            for _ in range(5):
                ns[f"new_{next(added)}"] = object()

        def delete(round_: int) -> None:
            ns.pop(f"value_{round_ % args.names}", None)
            ns[f"value_{round_ % args.names}"] = object()  # back, at the end: order changed

        figures = {}
        for label, change in (("nothing bound", nothing), ("5 names rebound", rebind),
                              ("5 names added", add), ("1 name deleted, re-added", delete)):
            figures[label] = _median_ms(side.write_names, change, args.rounds)
            side.flush()

        previous = {name: id(value) for name, value in ns.items()}

        def with_id() -> None:
            nonlocal previous
            current = {name: id(value) for name, value in ns.items()}
            [n for n, i in current.items() if previous.get(n) != i]
            previous = current

        figures["id() keyed, nothing bound"] = _median_ms(with_id, nothing, args.rounds)

    print(f"names record per cell, {args.names:,} names to start, median of {args.rounds} cells "
          "(audit hook installed):")
    for label, ms in figures.items():
        print(f"  {label:<28} {ms:7.3f} ms")
    ratio = figures["id() keyed, nothing bound"] / figures["nothing bound"]
    print(f"object.__hash__ vs id(): {ratio:.1f}x cheaper; target: under 1 ms per cell")


if __name__ == "__main__":
    main()
