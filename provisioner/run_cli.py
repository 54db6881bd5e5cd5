"""`flo-run BP [--execute]`: parse, call `run_backpack`, render the phase table (or --json).

Kept apart from cli.py (the subcommands) because running has its own options and output.
"""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from auditor.common.errors import UsageError

from .run import PHASES, NotebookFailed, RunOptions, RunReport, run_backpack
from .runner import Lab, parse_value
from .site_args import ENGINES, site_arguments, site_options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flo-run", description="Run a backpack: headless with --execute, else JupyterLab. "
        "Subcommands: validate, fetch, verify, env (flo-run validate -h).")
    p.add_argument("backpack")
    p.add_argument("--execute", action="store_true",
                   help="run the notebook headless and write the executed notebook")
    p.add_argument("-o", "--output", help="executed notebook (default ./NAME-executed.ipynb)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="papermill-style parameter; VALUE is a "
                   "Python literal when it parses as one, else a string")
    p.add_argument("--workers", type=int, help="workers to start (default: min-workers)")
    p.add_argument("--scratch-dir", help="where run folders live (default $FLO_SCRATCH_DIR or "
                   "TMPDIR/flo-run; environments go under it too unless --cache-dir)")
    p.add_argument("--cache-dir", help="environment cache (default: $FLO_CACHE_DIR, else "
                   "SCRATCH/envs when --scratch-dir is given, else "
                   "$XDG_CACHE_HOME/flo-backpack/envs, else ~/.cache/flo-backpack/envs)")
    p.add_argument("--keep", action="store_true", help="leave the run folder in place")
    p.add_argument("--host", help="address the scheduler, workers and JupyterLab listen on "
                   "(default: the site file's host or interface, else loopback)")
    p.add_argument("--scheduler-port", type=int, default=0, metavar="PORT",
                   help="port the Dask scheduler listens on (default: any free one)")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="where workers run: processes here (dask-local), batch jobs (slurm, "
                   "pbs, sge, htcondor, lsf; need flo-backpack[slurm]), or none provisioned "
                   "because the notebook starts its own (notebook); auto (default): notebook "
                   "when the audit saw the notebook start its own workers, else the site "
                   "file's batch system, else dask-local")
    site_arguments(p)
    p.add_argument("--profile", help="data.yml profile")
    p.add_argument("--python", help="interpreter to build environments on")
    p.add_argument("--builder", default="auto", choices=("auto", "uv", "pip", "conda"),
                   help="environment builder: auto (default) uses micromamba/mamba/conda when "
                   "a spec has conda pins and one is installed, else uv")
    p.add_argument("--timeout", type=float, help="seconds a cell may run (default: no limit)")
    p.add_argument("--cell", type=int, metavar="N", help="with --execute: run only cell N and "
                   "the cells it depends on (audit/cells.yml's graph); 0-based, markdown counted")
    p.add_argument("--json", action="store_true", help="print a JSON result")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.cell is not None and not args.execute:
        raise UsageError("--cell goes with --execute")
    if args.output and not args.execute:
        raise UsageError("-o goes with --execute")
    if args.output and Path(args.output).suffix.lower() == ".py":
        raise UsageError(f"-o {args.output}: the executed workflow is written as a notebook; "
                         "give a .ipynb path")
    options = RunOptions(
        backpack=Path(args.backpack), execute=args.execute,
        output=Path(args.output) if args.output else None,
        parameters={name: parse_value(value) for name, value in args.parameter},
        workers=args.workers, keep=args.keep, port=args.scheduler_port, python=args.python,
        profile=args.profile, timeout=args.timeout, builder=args.builder, cell=args.cell,
        **site_options(args))
    err = Console(stderr=True, highlight=False)
    say = (lambda _: None) if args.json else (lambda text: err.print(f"[dim]{text}[/dim]"))

    def show_lab(lab: Lab) -> None:
        # One plain line, flushed: people copy it, tests wait for it.
        print(f"JupyterLab: {lab.url}", flush=True)
        err.print("Ctrl-C stops JupyterLab, the workers and the scheduler.")

    # SIGTERM (a batch system, `kill`) stops the run like Ctrl-C: workers and Jupyter too.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_backpack(options, say=say, on_lab=show_lab)
    except NotebookFailed as exc:
        render(exc.report, args.json)  # type: ignore[attr-defined]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    render(report, args.json)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def render(report: RunReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2), flush=True)
        return
    out = Console(highlight=False)
    table = Table(title=f"flo-run {report.backpack.name}: {report.status}")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    table.add_column("")
    for phase in PHASES:
        if phase not in report.phases:
            continue
        role = phase.split()[0]
        source = ""
        if phase.endswith("environment") and role in report.envs:
            env = report.envs[role]
            shared = role == "worker" and env is report.envs.get("manager")
            source = "same as manager" if shared else (
                f"{'cache' if env.from_cache else 'built'} ({env.builder})")
        elif role in report.skipped:
            source = f"skipped: {report.skipped[role]}"
        table.add_row(phase, f"{report.phases[phase]:.2f}", source)
    table.add_row("total", f"{report.total:.2f}", "", style="bold")
    out.print(table)
    for note in report.notes:
        out.print(f"note: {note}")
    if report.output:
        out.print(f"executed notebook: {report.output}")
    if report.kept:
        out.print(f"run folder: {report.run_dir}")
