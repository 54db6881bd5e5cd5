"""flo-run command line: parse, call one library function, render the result (rich or --json).

`flo-run BP [--execute]` runs a backpack (`run.run_backpack`); the subcommands validate,
check, env, fetch and verify call `api` or `run.check_run`. Errors are caught once here: a
`FloError` becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from auditor.common.crash import last_resort
from auditor.common.errors import FloError, UsageError

from . import api
from .deploy_args import BUILDERS, deploy_arguments, deploy_options

if TYPE_CHECKING:
    from .data import FetchReport, VerifyReport
    from .preflight import Preflight
    from .run import RunReport

COMMANDS = ("validate", "check", "env", "fetch", "verify")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flo-run", description="Deploy a backpack.")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check the backpack's layout and spec files")
    validate.add_argument("backpack")
    validate.add_argument("--strict", action="store_true",
                          help="also parse the notebook (nbformat) or compile the script")
    validate.add_argument("--json", action="store_true", help="print a JSON result")

    check = sub.add_parser("check", help="preflight: every check that can fail before "
                           "anything is built, fetched or started (disk, cores, memory, batch "
                           "commands, scheduler port, interpreters, pins for this platform)")
    check.add_argument("backpack")
    deploy_arguments(check)  # the flags of the run it checks
    check.add_argument("--json", action="store_true", help="print a JSON result")

    env = sub.add_parser("env", help="build (or list, or prune) the cached environments")
    env.add_argument("backpack")
    mode = env.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="list the cached environments")
    mode.add_argument("--clean", action="store_true",
                      help="remove environments built for this backpack that its spec no "
                           "longer uses (and, with --older-than, any unused for that long)")
    env.add_argument("--older-than", type=float, metavar="DAYS",
                     help="with --clean: also remove any environment unused for DAYS days")
    env.add_argument("--cache-dir", help="environment cache (default: $FLO_CACHE_DIR, else "
                                         "$XDG_CACHE_HOME/flo-backpack/envs, else "
                                         "~/.cache/flo-backpack/envs)")
    env.add_argument("--python", help="interpreter to build on (must match python= if pinned)")
    env.add_argument("--builder", default="auto", choices=BUILDERS,
                     help="how to build: auto (default) uses micromamba/mamba/conda when the "
                          "spec has conda pins and one is installed, else uv")
    env.add_argument("--json", action="store_true", help="print a JSON result")

    fetch = sub.add_parser("fetch", help="put data.yml's entries in place, verified")
    fetch.add_argument("backpack")
    fetch.add_argument("--profile", help="data.yml profile (default: its default_profile)")
    fetch.add_argument("--run-dir", help="run folder (default: SCRATCH/runs/<backpack>-<hash>)")
    fetch.add_argument("--scratch-dir", help="where run folders live (default: "
                                             "$FLO_SCRATCH_DIR or TMPDIR/flo-run)")
    fetch.add_argument("--jobs", type=int, default=4, help="entries fetched at once")
    fetch.add_argument("--json", action="store_true", help="print a JSON result")

    verify = sub.add_parser("verify", help="check sizes and checksums of the data in place")
    verify.add_argument("backpack")
    verify.add_argument("--profile", help="data.yml profile (default: its default_profile)")
    verify.add_argument("--run-dir", help="check the copies in this run folder (default: "
                                          "check the backpack and fs sources themselves)")
    verify.add_argument("--json", action="store_true", help="print a JSON result")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    try:
        if args_list and args_list[0] not in COMMANDS and not args_list[0].startswith("-"):
            return _run(args_list)  # flo-run BP [--execute ...]: its own options and output
        args = _parser().parse_args(args_list)
        if args.command == "validate":
            return _validate(args)
        if args.command == "check":
            return _check(args)
        if args.command in ("fetch", "verify"):
            return _data(args)
        return _env(args)
    except KeyboardInterrupt:
        console.print("flo-run: interrupted")
        return 130
    except FloError as exc:
        console.print(f"flo-run: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except Exception as exc:  # not raised on purpose: one line here, the traceback in a log
        return last_resort("flo-run", exc, args_list, console)


def _validate(args: argparse.Namespace) -> int:
    result = api.validate(args.backpack, strict=args.strict)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return result.exit_code
    out = Console(highlight=False)
    for problem in result.problems:
        out.print(f"[red]error[/red]   {problem}", markup=True)
    for warning in result.warnings:
        out.print(f"[yellow]warning[/yellow] {warning}")
    if result.valid:
        out.print(f"[green]valid[/green]   {result.root} (workflow: "
                  f"{result.workflow.name if result.workflow else '-'})")
    else:
        out.print(f"[red]invalid[/red] {result.root}: {len(result.problems)} problem(s)")
    return result.exit_code


def _check(args: argparse.Namespace) -> int:
    from .run import RunOptions, check_run

    report = check_run(RunOptions(backpack=Path(args.backpack), **deploy_options(args)))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _render_preflight(report)
    return report.exit_code


def _render_preflight(report: Preflight) -> None:
    from .preflight import FAILED, PASSED, WARNING

    style = {PASSED: "green", WARNING: "yellow", FAILED: "red"}
    table = Table(title="preflight")
    for column in ("check", "", "reason"):
        table.add_column(column, overflow="fold")
    for check in report.checks:
        table.add_row(check.name, f"[{style[check.status]}]{check.status}[/]", check.reason)
    out = Console(highlight=False)
    out.print(table)
    out.print(f"[red]{len(report.failed)} check(s) failed[/red]: nothing would be built or "
              "started" if report.failed else "[green]ready[/green]",
              f"({report.seconds:.2f} s)")


def _env(args: argparse.Namespace) -> int:
    if args.older_than is not None and not args.clean:
        raise UsageError("--older-than only goes with --clean")
    if args.list or args.clean:
        listing = (api.clean_environments(args.backpack, args.cache_dir, args.older_than,
                                          args.python, args.builder)
                   if args.clean else api.list_environments(args.backpack, args.cache_dir,
                                                            args.python, args.builder))
        if args.json:
            print(json.dumps(listing.to_dict(), indent=2))
        else:
            _render_listing(listing)
        return 0
    report = api.build_environments(args.backpack, args.cache_dir, args.python, args.builder)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    table = Table(title=f"environments of {report.backpack.name}")
    for column in ("roles", "python", "builder", "source", "seconds"):
        table.add_column(column)
    table.add_column("path", overflow="fold")
    for env in report.envs:
        source = "cache" if env.from_cache else "built"
        if env.waited >= 0.05:
            source += f" (waited {env.waited:.1f} s)"
        table.add_row("+".join(env.roles), env.python, env.builder, source, f"{env.seconds:.2f}",
                      str(env.path))
    out = Console(highlight=False)
    out.print(table)
    for env in report.envs:
        for note in env.notes:
            out.print(f"note ({'+'.join(env.roles)}): {note}")
    out.print(f"environment phase: {report.seconds:.2f} s")
    return 0


def _render_listing(listing: api.CacheListing) -> None:
    out = Console(highlight=False)
    for entry in listing.removed:
        out.print(f"removed {entry.path} ({_mb(entry.size_bytes)})")
    table = Table(title=f"cached environments in {listing.root}")
    for column in ("key", "roles", "python", "size", "last used", "this backpack", "built for"):
        table.add_column(column)
    for entry in listing.entries:
        table.add_row(entry.key[:12], "+".join(entry.roles), entry.python,
                      _mb(entry.size_bytes),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used)),
                      "yes" if entry.key in listing.current else "", entry.backpack)
    out.print(table)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _data(args: argparse.Namespace) -> int:
    from .data import DataError
    from .data.render import progress_display, render_report

    out = Console(highlight=False)
    report: FetchReport | VerifyReport
    if args.command == "verify":
        report = api.verify_data(args.backpack, args.run_dir, args.profile)
    else:
        try:
            with progress_display(Console(stderr=True)) as progress:
                report = api.fetch_data(args.backpack, args.run_dir, args.profile,
                                        scratch_dir=args.scratch_dir, progress=progress,
                                        jobs=args.jobs)
        except DataError as exc:
            if exc.report is not None and args.json:
                print(json.dumps(exc.report.to_dict(), indent=2))
            elif exc.report is not None:
                render_report(exc.report, out)
            raise
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        render_report(report, out)
    return report.exit_code



# ---------------------------------------------------------------- flo-run BP


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flo-run", description="Run a backpack: headless with --execute, else JupyterLab. "
        "Subcommands: validate, check, fetch, verify, env (flo-run check -h).")
    p.add_argument("backpack")
    p.add_argument("--execute", action="store_true",
                   help="run the notebook headless and write the executed notebook")
    p.add_argument("-o", "--output", help="executed notebook (default ./NAME-executed.ipynb)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="papermill-style parameter; VALUE is a "
                   "Python literal when it parses as one, else a string")
    deploy_arguments(p)
    p.add_argument("--keep", action="store_true", help="leave the run folder in place")
    p.add_argument("--timeout", type=float, help="seconds a cell may run (default: no limit)")
    p.add_argument("--cell", type=int, metavar="N", help="with --execute: run only cell N and "
                   "the cells it depends on (audit/cells.yml's graph); 0-based, markdown counted")
    p.add_argument("--json", action="store_true", help="print a JSON result")
    return p


def _run(argv: Sequence[str]) -> int:
    """`flo-run BP [--execute]`: call `run_backpack`, render the phase table (or --json). The
    run machinery (nbclient, the engines) is imported here, so the subcommands start fast."""
    from .run import NotebookFailed, RunOptions, run_backpack
    from .runner import Lab, parse_value

    args = _run_parser().parse_args(list(argv))
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
        keep=args.keep, timeout=args.timeout, cell=args.cell, **deploy_options(args))
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
        _render_run(exc.report, args.json)  # type: ignore[attr-defined]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    _render_run(report, args.json)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _render_run(report: RunReport, as_json: bool) -> None:
    from .run import PHASES

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


if __name__ == "__main__":
    raise SystemExit(main())
