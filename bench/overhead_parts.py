"""Where an audit's extra time goes, phase by phase, beside a plain run of the same notebook.

For a fixture, alternates N rounds of four fresh processes: **plain** (nbclient, as
bench/overhead.py runs it, with its phases timed in-process), **hooks** (the audit with
`--backend hooks`: the kernel side without a tracer), **ptrace** (the default audit on x86_64)
and **strace** (`--backend strace`). The
audits run the CLI in-process with the phases of the recorder and of derive wrapped by
timers (the same functions, timed; nothing else changes). Cell time is nbclient's own
record in the executed notebook (status busy to idle, summed), so hooks - plain is what the
kernel side costs in cells, ptrace - hooks (strace - hooks) what the tracer costs there.

    .venv/bin/python bench/overhead_parts.py [-n 3] [FIXTURE | NOTEBOOK.ipynb ...]
    .venv/bin/python bench/overhead_parts.py --against /tmp/old --only plain --only ptrace NB

`--against TREE` adds a fifth variant, **against**: the default audit by another checkout's
tree (its auditor package first on sys.path), alternated with the others, so a change's effect
on each phase is read side by side. `--only` keeps the variants named.
Prints a table of median seconds per phase and variant. It does not pass or fail.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures" / "notebooks"
TIMEOUT_S = 900
VARIANTS = ("plain", "hooks", "ptrace", "strace", "against")

# Functions timed in the audit, as (module, attribute[.method]) -> label.
AUDIT_PHASES = {
    ("auditor.record.session", "_Run.start"): "kernel start (under the tracer)",
    ("auditor.record.session", "_Run.bootstrap"): "kernel side attach",
    ("auditor.record.session", "_Run.execute_cells"): "cells (recorder loop)",
    ("auditor.record.session", "_Run.shutdown"): "kernel shutdown",
    ("auditor.record.session", "_Run.teardown"): "teardown",
    ("auditor.record.session", "_Run.finish"): "record files",
    ("auditor.resolve.ahead", "index_environment"): "environment index (a thread, in the run)",
    ("auditor.resolve", "index_environment"): "derive: environment index",
    ("auditor.resolve", "resolve"): "derive: parse + events + resolve (streamed)",
    ("auditor.emit.data.collect", "DataCollector.draft"): "derive: data draft (hashing)",
    ("auditor.api", "draft_environment"): "derive: environment spec",
    ("auditor.api", "derive_sides"): "derive: sides (roles, compute, apt)",
    ("auditor.optional", "find_candidates"): "derive: optional-import candidates",
    ("auditor.api", "build_cells"): "derive: cells report",
    ("auditor.api", "render_cells_yml"): "derive: cells.yml",
    ("auditor.api", "derive"): "derive (total)",
    ("auditor.api", "write_backpack"): "write backpack",
}


def _wrap(totals: dict[str, float], label: str, fn):
    if inspect.iscoroutinefunction(fn):  # the recorder's phases run on the event loop
        @functools.wraps(fn)
        async def timed_async(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - started
        return timed_async

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - started
    return timed


def inner_audit(notebook: str, out: str, backend: str, report: str, tree: str = "") -> None:
    """In a fresh process: the flo-audit CLI (of `tree`, else of this checkout) with its
    phases timed; writes `report`."""
    totals: dict[str, float] = {}
    sys.path.insert(0, tree or str(REPO))
    import auditor.cli

    totals["CLI start (imports)"] = time.perf_counter() - STARTED
    for (module_name, attribute), label in AUDIT_PHASES.items():
        module = importlib.import_module(module_name)
        owner_name, _, method = attribute.partition(".")
        if method:
            owner = getattr(module, owner_name, None)
            if owner is not None and hasattr(owner, method):
                setattr(owner, method, _wrap(totals, label, getattr(owner, method)))
        elif hasattr(module, attribute):
            setattr(module, attribute, _wrap(totals, label, getattr(module, attribute)))
    code = auditor.cli.main([notebook, "-o", out, "--backend", backend, "--json"])
    totals["cells (busy, nbclient)"] = _busy(Path(out) / "audit" / "executed.ipynb")
    Path(report).write_text(json.dumps({"exit": code, "phases": totals}))


def inner_plain(notebook: str, report: str) -> None:
    """In a fresh process: nbclient on the notebook, phases timed; writes `report`."""
    import nbformat
    from nbclient import NotebookClient

    totals = {"CLI start (imports)": time.perf_counter() - STARTED}
    path = Path(notebook)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=None,
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    with client.setup_kernel():
        totals["kernel start (under the tracer)"] = time.perf_counter() - started
        started = time.perf_counter()
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        totals["cells (recorder loop)"] = time.perf_counter() - started
        started = time.perf_counter()
    totals["kernel shutdown"] = time.perf_counter() - started
    totals["cells (busy, nbclient)"] = _busy_of(nb)
    Path(report).write_text(json.dumps({"exit": 0, "phases": totals}))


def _busy(executed: Path) -> float:
    import nbformat

    return _busy_of(nbformat.read(executed, as_version=4))


def _busy_of(nb) -> float:
    def at(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    total = 0.0
    for cell in nb.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.status.busy" in timing and "iopub.status.idle" in timing:
            total += at(timing["iopub.status.idle"]) - at(timing["iopub.status.busy"])
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="*", default=["compute_bound", "import_heavy"])
    parser.add_argument("-n", "--rounds", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout's tree, compiled")
    parser.add_argument("--only", action="append", choices=VARIANTS, default=None,
                        help="run only this variant (repeatable)")
    args = parser.parse_args(argv)
    variants = [v for v in VARIANTS if (v != "against" or args.against)
                and (args.only is None or v in args.only)]
    for fixture in args.fixtures:
        notebook = (Path(fixture).resolve() if fixture.endswith(".ipynb")
                    else FIXTURES / fixture / f"{fixture}.ipynb")
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        walls: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(args.rounds):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for variant in order:
                with tempfile.TemporaryDirectory(prefix="flo-parts-") as tmp:
                    report = Path(tmp) / "report.json"
                    me = [sys.executable, __file__]
                    if variant == "plain":
                        argv_ = [*me, "--inner-plain", str(notebook), str(report)]
                    else:
                        backend, tree = ("ptrace", str(args.against.resolve())) \
                            if variant == "against" else (variant, "")
                        argv_ = [*me, "--inner-audit", str(notebook), str(Path(tmp) / "bp"),
                                 backend, str(report), tree]
                    started = time.perf_counter()
                    subprocess.run(argv_, cwd=notebook.parent, check=True, timeout=TIMEOUT_S,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    walls[variant].append(time.perf_counter() - started)
                    runs[variant].append(json.loads(report.read_text())["phases"])
                print(f"  {fixture} round {i + 1}: {variant:7s} {walls[variant][-1]:6.2f} s",
                      flush=True)
        labels = list(dict.fromkeys(k for variant in runs.values() for r in variant for k in r))
        print(f"\n{fixture}: median seconds of {args.rounds} alternating rounds")
        print(f"{'phase':48s}" + "".join(f" {v:>7s}" for v in runs))
        for label in labels:
            row = [statistics.median(r.get(label, 0.0) for r in runs[v]) for v in runs]
            print(f"{label:48s}" + "".join(f" {x:7.2f}" for x in row))
        wall = {v: statistics.median(walls[v]) for v in runs}
        ratios = ", ".join(f"{v}/plain {wall[v] / wall['plain']:.2f}" for v in runs
                           if v != "plain" and "plain" in wall)
        print(f"{'whole process (wall)':48s}" + "".join(f" {x:7.2f}" for x in wall.values())
              + (f"   ratio {ratios}" if ratios else ""))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inner-audit"]:
        inner_audit(*sys.argv[2:7])
    elif sys.argv[1:2] == ["--inner-plain"]:
        inner_plain(*sys.argv[2:4])
    else:
        sys.exit(main())
