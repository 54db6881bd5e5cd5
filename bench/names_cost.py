"""What the kernel side's `names` record costs per cell, for a big user namespace.

Attaches kernels/flo_kernel.py (by path, as in a kernel, audit hook included) to a stand-in
shell whose namespace holds N names (default 10,000), then times the record written at each
cell end (`write_names`) in the namespace changes a cell makes: none, a few names rebound, a
few added, one deleted (names shift: the lookup by name), and what IPython itself does every
cell (`_i`, `_ii`, `_iii` rebound and `_iN` added before the cell runs; `_`, `__`, `___`
rebound and `_N` added for its output) with 5 names rebound. Beside it, a comparison keyed
with id(), which raises an audit event per name, for the ratio.

    .venv/bin/python bench/names_cost.py [--names 10000] [--rounds 200]
    .venv/bin/python bench/names_cost.py --against OLD/kernels/flo_kernel.py

--against attaches another copy of the kernel side (its sibling files beside it, e.g. from
`git archive`) to a second shell with the same namespace and alternates the two, cell by cell,
so both are measured under the same load.

Target (issue 12): under 1 ms per cell for 10,000 names. It prints; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import tempfile
import time
from collections.abc import Callable
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
        self.user_ns: dict[str, object] = {"In": [], "Out": {}, "get_ipython": None,
                                           "_": None, "__": None, "___": None,
                                           "_i": "", "_ii": "", "_iii": ""}
        self.user_ns.update((f"value_{i}", object()) for i in range(names))

    def transform_cell(self, raw: str) -> str:
        return raw


def _attach(kernel_side: Path, names: int, log: Path) -> tuple[_Shell, object]:
    shell = _Shell(names)
    runpy.run_path(str(kernel_side), run_name="_flo_backpack_kernel")["attach"](
        shell, {"log": str(log), "marks": False})
    return shell, shell.events.handlers["post_run_cell"][0].__self__


def _changes(size: int) -> dict[str, Callable[[dict, int], None]]:
    added = iter(range(10**9))

    def nothing(ns: dict, round_: int) -> None:
        pass

    def rebind(ns: dict, round_: int) -> None:
        for i in range(5):
            ns[f"value_{(round_ * 5 + i) % size}"] = object()

    def add(ns: dict, round_: int) -> None:
        for _ in range(5):
            ns[f"new_{next(added)}"] = object()

    def delete(ns: dict, round_: int) -> None:
        ns.pop(f"value_{round_ % size}", None)
        ns[f"value_{round_ % size}"] = object()  # back, at the end: order changed

    def ipython(ns: dict, round_: int) -> None:
        ns["_iii"], ns["_ii"], ns["_i"] = ns["_ii"], ns["_i"], f"cell {round_}"
        ns[f"_i{round_}"] = ns["_i"]
        rebind(ns, round_)
        ns["___"], ns["__"], ns["_"] = ns["__"], ns["_"], object()  # the cell's output
        ns[f"_{round_}"] = ns["_"]

    return {"nothing bound": nothing, "5 names rebound": rebind, "5 names added": add,
            "1 name deleted, re-added": delete, "as IPython (+5 rebound)": ipython}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--against", type=Path, help="another copy of kernels/flo_kernel.py")
    args = parser.parse_args()

    sides = {"this": KERNEL_SIDE}
    if args.against:
        sides["against"] = args.against.resolve()
    figures: dict[str, dict[str, float]] = {label: {} for label in _changes(args.names)}
    with tempfile.TemporaryDirectory() as tmp:
        attached = {key: _attach(path, args.names, Path(tmp) / f"{key}.jsonl")
                    for key, path in sides.items()}
        changes = {key: _changes(args.names) for key in sides}
        for label in figures:
            times: dict[str, list[float]] = {key: [] for key in sides}
            for round_ in range(args.rounds):
                order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                for key in order:
                    shell, side = attached[key]
                    changes[key][label](shell.user_ns, round_)
                    started = time.perf_counter()
                    side.write_names()  # type: ignore[attr-defined]
                    times[key].append(time.perf_counter() - started)
            for key, values in times.items():
                figures[label][key] = statistics.median(values) * 1e3
            for _, side in attached.values():
                side.flush()  # type: ignore[attr-defined]

        ns = attached["this"][0].user_ns
        previous = {name: id(value) for name, value in ns.items()}
        by_id = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            current = {name: id(value) for name, value in ns.items()}
            [n for n, i in current.items() if previous.get(n) != i]
            previous = current
            by_id.append(time.perf_counter() - started)

    print(f"names record per cell, {args.names:,} names to start, median of {args.rounds} cells "
          "(audit hook installed), ms:")
    header = f"  {'namespace change':<28} {'this':>8}"
    if args.against:
        header += f" {'against':>8} {'against/this':>12}"
    print(header)
    for label, row in figures.items():
        line = f"  {label:<28} {row['this']:8.3f}"
        if args.against:
            line += f" {row['against']:8.3f} {row['against'] / row['this']:12.2f}"
        print(line)
    id_ms = statistics.median(by_id) * 1e3
    print(f"  {'id() keyed, nothing bound':<28} {id_ms:8.3f}")
    print(f"this vs id() keyed, nothing bound: {id_ms / figures['nothing bound']['this']:.1f}x "
          "cheaper; target: under 1 ms per cell")


if __name__ == "__main__":
    main()
