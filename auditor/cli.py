"""The `flo-audit` command: parse, build options, call `auditor.api`, render. Nothing more.

`flo-audit PATH` audits a workflow. A first argument that is a subcommand word (`derive`, and
later ones such as `diff`) and not an existing file selects that subcommand; a file that happens
to be named like a subcommand is audited when written as a path (`./derive`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from . import __version__
from .common.crash import last_resort
from .common.errors import FloError, Interrupted, UsageError

if TYPE_CHECKING:
    from .minimize_run import Minimization
    from .reproduce import Verification

BACKENDS = ("auto", "strace", "ptrace", "hooks")

AUDIT_EPILOG = """\
subcommands (give the word first, instead of PATH):
  flo-audit derive AUDIT_DIR [-o OUT]   re-derive the outputs from a saved audit record
                                        (a backpack, or its audit/ folder) without running
                                        the notebook again
  flo-audit diff A B                    what changed between two audits (backpacks, audit
                                        folders, or single environment.yml / data.yml files)
  flo-audit diff BACKPACK --here        will this backpack run with this interpreter?
  flo-audit cells BACKPACK [--format F] [--cell N]
                                        the per-cell report and the cell graph
                                        (table, markdown, yaml, json, dot)
  flo-audit verify BACKPACK [--cache-dir D] [--keep] [--json]
                                        rebuild the environments from the backpack alone,
                                        re-run it with flo-run and compare with the audit
  flo-audit minimize BACKPACK [--cache-dir D] [--keep] [--json]
                                        verify, then drop the optional imports re-runs
                                        prove the notebook does not need
A PATH that exists as a file is always audited, even if it is named like a subcommand.

exit status: 0 every cell ran; 1 the notebook failed, timed out, its kernel or a worker died (the
backpack is still written, marked incomplete), or --verify / verify did not reproduce it (the
backpack is kept, marked unverified); 2 bad input; 130 interrupted (nothing written).
"""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def _audit_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="flo-audit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a notebook (or .py script) under a tracer and draft its backpack: "
                    "the pinned software it used, compute defaults, and the audit record.",
        epilog=AUDIT_EPILOG)
    parser.add_argument("path", metavar="PATH", help="the notebook (.ipynb) or script (.py)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="backpack folder to write (default: ./<name>-backpack)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT if it exists (only once the new backpack is complete)")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="stop a cell that runs longer than this (default: no limit)")
    parser.add_argument("--python", metavar="PYTHON",
                        help="run the kernel with this interpreter (its environment is audited)")
    parser.add_argument("--kernel", metavar="NAME", dest="kernel_name",
                        help="run the kernel of this installed kernelspec")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="tracer: ptrace, strace, hooks (audit hooks only), or auto (the "
                             "first of those that can run here)")
    parser.add_argument("--workers", type=_count, default=0, metavar="N",
                        help="start a Dask scheduler and N traced workers on loopback and put "
                             "DASK_SCHEDULER_ADDRESS in the kernel's environment (for notebooks "
                             "that connect with a plain Client())")
    parser.add_argument("--bundle-data", action="store_true",
                        help="copy the inputs under the notebook's folder into the backpack's "
                             "data/ (as backpack sources in data/data.yml)")
    parser.add_argument("--max-bundle-size", type=_bundle_size, metavar="SIZE",
                        help="with --bundle-data (implied): bundle at most this much, e.g. "
                             "500k, 100MB, 1.5GB (default 100MB); bigger inputs stay fs sources")
    parser.add_argument("--checksum-remote", action="store_true",
                        help="download each http(s) input once to record its size and sha256")
    parser.add_argument("--verify", action="store_true",
                        help="then rebuild the environments from the backpack alone, re-run it "
                             "with flo-run and compare with the audited run (audit/summary.json "
                             "'verify')")
    parser.add_argument("--minimize", action="store_true",
                        help="implies --verify; then drop the pins of optional imports that "
                             "re-runs prove the notebook does not need (audit/minimize.json)")
    _verify_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON instead of the rich display")
    parser.add_argument("--version", action="version", version=f"flo-audit {__version__}")
    return parser


def _derive_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="flo-audit derive",
        description="Re-derive environment.yml, requirements.txt, compute.yml and summary.json "
                    "from a saved audit record, without running the notebook.")
    parser.add_argument("audit_dir", metavar="AUDIT_DIR",
                        help="a backpack folder, or the audit/ folder of one")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write a new backpack here (default: only print the summary)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser


def _diff_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="flo-audit diff",
        description="Compare two audits per role (manager, worker): python version, packages "
                    "added/removed/upgraded/downgraded/moved, data entries, per-cell use. "
                    "With --here, compare a backpack with an installed interpreter instead. "
                    "Exit status like diff(1): 0 same, 1 different, 2 error.")
    parser.add_argument("a", metavar="A",
                        help="a backpack, an audit folder, an environment.yml or a data.yml")
    parser.add_argument("b", metavar="B", nargs="?",
                        help="what to compare A with, one of the same (not with --here)")
    parser.add_argument("--here", action="store_true",
                        help="compare A's environments with an interpreter's installed packages")
    parser.add_argument("--python", metavar="PYTHON",
                        help="with --here: the interpreter (default: the one running flo-audit)")
    parser.add_argument("--ignore-patch", action="store_true",
                        help="hide patch-level version changes (1.2.3 -> 1.2.4)")
    parser.add_argument("--format", choices=("table", "markdown", "json"), default="table",
                        help="table for people, markdown for a pull-request comment, json")
    parser.add_argument("--json", action="store_true", help="same as --format json")
    return parser


def _cells_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="flo-audit cells",
        description="The per-cell report of an audit (audit/cells.yml): what each cell used, "
                    "read and wrote, how long it ran, and the cells it depends on.")
    parser.add_argument("path", metavar="BACKPACK_OR_AUDIT_DIR",
                        help="a backpack folder, or the audit/ folder of one")
    parser.add_argument("--format", choices=("table", "markdown", "yaml", "json", "dot"),
                        default="table",
                        help="table for people, markdown, yaml or json for programs, dot "
                             "(Graphviz) for the cell graph")
    parser.add_argument("--role", choices=("manager", "worker"),
                        help="show only this side's packages")
    parser.add_argument("--cell", type=int, metavar="N",
                        help="only notebook cell N (dot: N and the cells it depends on)")
    return parser


def _verify_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="flo-audit verify",
        description="Prove a backpack: build fresh environments from it alone (flo-run's "
                    "builders), put its data in place, re-execute the notebook with flo-run's "
                    "engine and runner, and compare each cell's status and text output with "
                    "the audited run. The verdict goes into audit/summary.json. Exit status: "
                    "0 reproduced (maybe with differences), 1 not reproduced, 2 bad input.")
    parser.add_argument("backpack", metavar="BACKPACK", help="a backpack folder flo-audit wrote")
    _verify_arguments(parser)
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="stop a cell of the re-run that runs longer than this")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    return parser


def _minimize_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="flo-audit minimize",
        description="Verify a backpack, then find the pins the run imported only through "
                    "another package's optional import and drop those that re-runs (all "
                    "at once, then halves) prove unneeded: every cell the same status and "
                    "normalised outputs. At most 1 + 2 log2(candidates) extra runs. Exit "
                    "status: 0 reproduced, 1 not reproduced, 2 bad input.")
    parser.add_argument("backpack", metavar="BACKPACK", help="a backpack folder flo-audit wrote")
    _verify_arguments(parser)
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS",
                        help="stop a cell of a re-run that runs longer than this")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", metavar="DIR", type=Path,
                        help="verify: build (or reuse) the environments in this flo-run cache "
                             "and keep them (default: a throw-away cache, removed after)")
    parser.add_argument("--keep", action="store_true",
                        help="verify: keep the throw-away folder (environments, run folder, "
                             "re-executed notebook); its path is in the verdict")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected 0 to 64 workers, got {text!r}")
    return value


def _bundle_size(text: str) -> int:
    from .emit.data.yml import parse_size

    try:
        return parse_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


class CellProgress:
    """A live "cell N of M" display with elapsed time, fed by the recorder's progress calls."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task = self.progress.add_task("starting the kernel under the tracer", total=None)

    def __enter__(self) -> CellProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, position: int, count: int, phase: str) -> None:
        """Cell `position` (0-based) of `count` started ("start") or ended (any other phase)."""
        if phase == "start":
            text = f"cell {position + 1} of {count}"
        elif position + 1 >= count or phase != "end":
            text = f"ran {position + 1} of {count} cells; resolving what they used"
        else:
            text = f"cell {position + 1} of {count} done"
        self.progress.update(self.task, description=text)

    def hashing(self, what: str, done: int, total: int) -> None:
        """Progress of hashing one input (a file, a folder or a downloaded URL)."""
        name = os.path.basename(what.rstrip("/")) or what
        share = f"{done * 100 // total}%" if total else f"{done >> 20} MiB"
        self.progress.update(self.task, description=f"hashing input {name}: {share}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `flo-audit` and `python -m auditor`: returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    # SIGTERM (`kill`, a batch system) stops an audit like Ctrl-C: kernel and tracer too.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        command = _SUBCOMMANDS.get(argv[0]) if argv and not os.path.isfile(argv[0]) else None
        return command(argv[1:]) if command else _audit(argv)
    except KeyboardInterrupt:
        error: FloError = Interrupted("interrupted; nothing was written")
    except FloError as exc:
        error = exc
    except Exception as exc:  # not raised on purpose: one line here, the traceback in a log
        return last_resort("flo-audit", exc, argv, err)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    message = " ".join(str(error).split()) or type(error).__name__
    err.print(f"flo-audit: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return error.exit_code


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the teardown that follows must finish
    raise KeyboardInterrupt


def _audit(argv: list[str]) -> int:
    from .api import AuditOptions, audit
    from .summary_view import render_summary

    args = _audit_parser().parse_args(argv)
    if (args.cache_dir or args.keep) and not (args.verify or args.minimize):
        raise UsageError("--cache-dir and --keep go with --verify or --minimize")
    console = Console()
    options = AuditOptions(output=args.output, force=args.force, backend=args.backend,
                           kernel_name=args.kernel_name, python=args.python,
                           timeout=args.timeout, workers=args.workers)
    options.bundle_data = args.bundle_data or args.max_bundle_size is not None
    if args.max_bundle_size is not None:
        options.max_bundle_size = args.max_bundle_size
    options.checksum_remote = args.checksum_remote
    if args.json or not console.is_terminal:
        result = audit(args.path, options)
    else:
        with CellProgress(Console(stderr=True)) as progress:
            options.progress = progress
            options.on_hash = progress.hashing
            result = audit(args.path, options)
    if not (args.verify or args.minimize):
        _render(result.summary, str(result.backpack), args.json, console, render_summary)
        return result.exit_code
    if not args.json:
        _render(result.summary, str(result.backpack), False, console, render_summary)
    if args.minimize:
        minimization = _run_minimize(result.backpack, args)
        verification, extra = minimization.verification, {"minimize": minimization.result}
    else:
        verification, extra = _run_verify(result.backpack, args), {}
    if args.json:
        _render({**result.summary, "verify": verification.result, **extra},
                str(result.backpack), True, console, render_summary)
    return max(result.exit_code, verification.exit_code)


def _verify(argv: list[str]) -> int:
    args = _verify_parser().parse_args(argv)
    verification = _run_verify(args.backpack, args)
    if args.json:
        print(json.dumps({"backpack": str(verification.backpack), **verification.result},
                         indent=2, default=str))
    return verification.exit_code


def _minimize(argv: list[str]) -> int:
    args = _minimize_parser().parse_args(argv)
    minimization = _run_minimize(args.backpack, args)
    if args.json:
        print(json.dumps({"backpack": str(minimization.backpack),
                          "verify": minimization.verification.result,
                          "minimize": minimization.result}, indent=2, default=str))
    return minimization.exit_code


def _run_minimize(backpack: str | Path, args: argparse.Namespace) -> Minimization:
    """Verify and minimize, progress on stderr, both results printed (unless --json)."""
    from .minimize_run import minimize_backpack, minimize_lines
    from .reproduce import VerifyOptions
    from .verify import verdict_lines

    err = Console(stderr=True)
    options = VerifyOptions(cache_dir=args.cache_dir, keep=args.keep, timeout=args.timeout,
                            say=lambda line: err.print(line, markup=False, highlight=False,
                                                       soft_wrap=True))
    minimization = minimize_backpack(backpack, options)
    if not args.json:
        console = Console()
        for line in [*verdict_lines(minimization.verification.result),
                     *minimize_lines(minimization.result)]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    return minimization


def _run_verify(backpack: str | Path, args: argparse.Namespace) -> Verification:
    """Verify, progress on stderr, the verdict printed (unless --json)."""
    from .reproduce import VerifyOptions, verify_backpack
    from .verify import verdict_lines

    err = Console(stderr=True)
    options = VerifyOptions(cache_dir=args.cache_dir, keep=args.keep, timeout=args.timeout,
                            say=lambda line: err.print(line, markup=False, highlight=False,
                                                       soft_wrap=True))
    verification = verify_backpack(backpack, options)
    if not args.json:
        console = Console()
        for line in verdict_lines(verification.result):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if verification.result.get("kept"):
            console.print(f"kept: {verification.result['kept']}", markup=False,
                          highlight=False, soft_wrap=True)
    return verification


def _derive(argv: list[str]) -> int:
    from .api import derive_backpack
    from .summary_view import render_summary

    args = _derive_parser().parse_args(argv)
    derived, written = derive_backpack(args.audit_dir, args.output, args.force)
    _render(derived.summary, str(written) if written else None, args.json, Console(),
            render_summary)
    return 0 if derived.complete else 1


def _diff(argv: list[str]) -> int:
    from .diff import diff, diff_here, render_markdown, render_table

    args = _diff_parser().parse_args(argv)
    if args.here == (args.b is not None):
        raise UsageError("give the two things to compare (A B), or one backpack with --here")
    if args.python and not args.here:
        raise UsageError("--python goes with --here")
    result = diff_here(args.a, args.python) if args.here else \
        diff(args.a, args.b, ignore_patch=args.ignore_patch)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps(result.to_dict(), indent=2))
    elif fmt == "markdown":
        print(render_markdown(result), end="")
    else:
        render_table(result, Console())
    return result.exit_code


def _cells(argv: list[str]) -> int:
    from .cells_view import open_cells, render

    args = _cells_parser().parse_args(argv)
    view = open_cells(args.path, cell=args.cell, role=args.role)
    console = Console()
    render(view, args.format, console if console.is_terminal else Console(width=100))
    return 0


def _render(summary: dict, backpack: str | None, as_json: bool, console: Console,
            render: Callable[..., None]) -> None:
    if as_json:
        print(json.dumps({"backpack": backpack, **summary}, indent=2, default=str))
        if not summary.get("complete", True):  # stdout is for programs; people read stderr
            from .summary_view import incomplete_line

            Console(stderr=True, highlight=False).print(incomplete_line(summary), markup=False,
                                                        style="red bold", soft_wrap=True)
    else:
        render(summary, backpack, console)


#: Subcommand word -> handler.
_SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"derive": _derive, "diff": _diff,
                                                       "cells": _cells, "verify": _verify,
                                                       "minimize": _minimize}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
