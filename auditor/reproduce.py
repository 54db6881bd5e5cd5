"""`flo-audit verify BACKPACK` (and `--verify`): deploy the backpack as flo-run does, compare.

The run is flo-run's own (`provisioner.run.run_backpack`: validate -> preflight -> data ->
environments -> engine -> execute), into a throw-away folder made for this verification (its
environment cache too, unless `cache_dir`); `auditor.verify` compares the notebook it wrote
with the audited one and explains the first failure. The verdict is written into the
backpack's audit/summary.json (`verify`, and `verified`), atomically, as the last step: an
interrupted verification changes nothing in the backpack and leaves no folder or process.

This module imports the provisioner (lazily): verifying is deploying, and there must be one
deploy path, flo-run's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .backpack.session import Session, read_session
from .backpack.summary import SUMMARY, updated_summary
from .common import stale
from .common.errors import FloError, Interrupted, UsageError
from .common.execution import Status
from .verify import (
    FAILED,
    NOT_REPRODUCED,
    Normaliser,
    compare_notebooks,
    explain,
    verdict,
)

#: The folder of one verification (the re-run's scratch, and the throw-away cache) in the
#: temporary directory; a killed verification's folder is swept by the next one.
VERIFY_PREFIX = "flo-verify-"
EXECUTED = "audit/executed.ipynb"


@dataclass
class VerifyOptions:
    cache_dir: Path | None = None  # keep the environments here (default: a throw-away cache)
    keep: bool = False  # keep the throw-away folder: environments, run folder, re-run notebook
    timeout: float | None = None  # per cell
    say: Callable[[str], None] = lambda _: None  # progress, one line per step


@dataclass
class Verification:
    backpack: Path
    result: dict  # summary.json's `verify` block

    @property
    def reproduced(self) -> bool:
        return self.result["verdict"] != NOT_REPRODUCED

    @property
    def exit_code(self) -> int:
        return 0 if self.reproduced else 1


def verify_backpack(backpack: str | os.PathLike[str], options: VerifyOptions | None = None
                    ) -> Verification:
    """Rebuild the backpack's environments, put its data in place and re-execute it with
    flo-run, then compare cell by cell with the audited run; the verdict goes into
    audit/summary.json. Raises `UsageError` for a folder that is not an audited backpack."""
    from provisioner.folders import NotWritable
    from provisioner.run import NotebookFailed, RunOptions, run_backpack

    options = options or VerifyOptions()
    say = options.say
    root = Path(backpack).expanduser().absolute()
    audited, session = _audited_run(root)
    started = time.monotonic()
    stale.sweep(None, (VERIFY_PREFIX,))  # what a killed verification left
    work = stale.owned_folder(VERIFY_PREFIX)
    cache = Path(options.cache_dir).expanduser().absolute() if options.cache_dir \
        else work / "envs"
    rerun_path = work / "rerun.ipynb"
    report, deploy_error = None, None
    try:
        say(f"verify: validating {root.name}, then fetching its data (data/data.yml)")
        run = RunOptions(root, execute=True, output=rerun_path, scratch_dir=work / "runs",
                         cache_dir=cache, keep=options.keep, timeout=options.timeout)
        try:
            report = run_backpack(run, say=lambda line: say(f"verify: {_step(line)}"))
        except NotebookFailed as exc:
            report = exc.report  # type: ignore[attr-defined]
        except (Interrupted, NotWritable):
            raise
        except FloError as exc:  # invalid, preflight, an install (names the pin), the kernel
            deploy_error = " ".join(str(exc).split())
        say("verify: comparing the re-run with the audited run, cell by cell")
        rerun = _notebook(rerun_path) if rerun_path.is_file() else None
        normalise = Normaliser.for_runs(
            notebook_dirs=[p for p in (report and report.notebook_dir, session.cwd,
                                       Path(session.notebook).parent) if p],
            env_prefixes=[*(e.path for e in (report.envs.values() if report else ())),
                          *(p for p in (session.kernel.get("prefix"),) if p)],
            temp_dirs=[work])
        cells = compare_notebooks(audited, rerun, normalise)
        first = next((c for c in cells if c.outcome == FAILED), None)
        if deploy_error:
            explanation = f"flo-run could not deploy the backpack: {deploy_error}"
        elif first is not None:
            explanation = explain(first, session=session, backpack=root)
        elif report is not None and report.status != Status.COMPLETE and session.complete:
            explanation = f"the re-run did not complete: {report.message}"
        else:
            explanation = None
        result = {
            "verdict": verdict(cells, ran=deploy_error is None and rerun is not None),
            "cells": [c.to_json() for c in cells],
            "explanation": explanation,
            "rerun_status": report.status if report else "not started",
            "seconds": round(time.monotonic() - started, 3),
            "env_cache": str(cache),
            "env_cache_kept": bool(options.cache_dir or options.keep),
            "envs": ({role: {"path": str(e.path), "from_cache": e.from_cache,
                             "builder": e.builder, "seconds": round(e.seconds, 3)}
                      for role, e in report.envs.items()} if report else {}),
            "phases": {k: round(v, 3) for k, v in report.phases.items()} if report else {},
            "kept": str(work) if options.keep else None,
        }
        write_verdict(root, result)
    finally:
        if options.keep:
            stale.release(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return Verification(root, result)


def _audited_run(root: Path) -> tuple[dict, Session]:
    executed = root / EXECUTED
    if not root.is_dir() or not executed.is_file() or not (root / SUMMARY).is_file():
        raise UsageError(f"{root} is not a backpack written by flo-audit (no {EXECUTED} or "
                         f"{SUMMARY}): give the folder flo-audit wrote, or audit the notebook "
                         "with --verify")
    return _notebook(executed), read_session(root / "audit")


def _notebook(path: Path) -> dict:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable notebook ({exc}); audit the notebook "
                         "again") from None
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: not a notebook (expected a JSON object)")
    return loaded


def _step(line: str) -> str:
    """flo-run's progress lines, as steps of the verification."""
    if line.endswith(" environment"):
        return f"building the {line} from the backpack"
    if line.startswith("executing "):
        return f"running {line.removeprefix('executing ')} in it (flo-run's runner)"
    return line


def write_verdict(root: Path, result: dict) -> None:
    """summary.json with `verify` and `verified`, written as .part and renamed into place."""
    path = root / SUMMARY
    text = updated_summary(root, verify=result, verified=result["verdict"] != NOT_REPRODUCED)
    part = path.with_name(path.name + ".part")
    try:
        part.write_text(text, encoding="utf-8")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
