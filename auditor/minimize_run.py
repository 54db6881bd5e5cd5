"""`flo-audit minimize BACKPACK` (and `--minimize`): drop the optional imports a re-run proves
the notebook does not need.

First the backpack is verified as it is (`auditor.reproduce.verify_backpack`: the baseline,
and `--verify`'s verdict). Then the candidates (`auditor.optional`, from the audit record)
are searched (`auditor.minimize.search`): each trial is a temporary copy of the backpack with
the trial's pins removed from its spec files, verified the same way, in one environment cache
shared by the trials. A trial passes when every cell has the same status and the same
normalised outputs as the audited run (a cell that already differed in the baseline must only
keep its status). Only at the end, with SIGINT and SIGTERM held back, the backpack's spec
files, audit/minimize.json and audit/summary.json are replaced, each written as `.part` and
renamed: an interrupted minimization changes nothing and leaves no folder or process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backpack.summary import SUMMARY, updated_summary
from .common import stale
from .minimize import (
    RECORD,
    SPEC_FILES,
    Search,
    Trial,
    drop_lines,
    dropped_keys,
    header_lines,
    run_budget,
    search,
    summary_block,
)
from .reproduce import Verification, VerifyOptions, verify_backpack
from .verify import DIFFERS, NOT_REPRODUCED, SAME

MINIMIZE_PREFIX = "flo-minimize-"
#: Left out of a trial's copy of the backpack: the re-run never reads the syscall trace.
_NOT_COPIED = ("trace.strace", "trace.jsonl")  # strace's and ptrace's (the default)


@dataclass
class Minimization:
    backpack: Path
    verification: Verification  # the baseline (the backpack as it was)
    result: dict[str, Any]  # summary.json's `minimize` block

    @property
    def exit_code(self) -> int:
        return self.verification.exit_code


def minimize_backpack(backpack: str | os.PathLike[str], options: VerifyOptions | None = None
                      ) -> Minimization:
    """Verify the backpack, then drop the candidates a run proves unneeded (see the module
    docstring); the backpack's files change only at the end, all of them or none."""
    from .api import derive

    options = options or VerifyOptions()
    say = options.say
    root = Path(backpack).expanduser().absolute()
    started = time.monotonic()
    stale.sweep(None, (MINIMIZE_PREFIX,))
    work = stale.owned_folder(MINIMIZE_PREFIX)
    cache = Path(options.cache_dir).expanduser().absolute() if options.cache_dir \
        else work / "envs"
    try:
        baseline = verify_backpack(root, _options(options, cache, "verify"))
        baseline.result["env_cache_kept"] = bool(options.cache_dir or options.keep)
        derived = derive(root / "audit")
        candidates = derived.candidates
        record: dict[str, Any] = {"candidates": [c.to_json() for c in candidates], "runs": []}
        if not baseline.reproduced:
            say("minimize: the backpack does not reproduce as it is; nothing to minimize")
            record["stopped"] = "not reproduced before minimizing"
            return Minimization(root, baseline, record)
        manager = list(derived.environment.pins)
        worker = list(derived.sides.worker_spec.pins) if derived.sides and \
            derived.sides.worker_spec else []
        index = derived.index
        kept, free = [], []
        for candidate in candidates:
            if candidate.key in dropped_keys(manager, {candidate.key}, index):
                free.append(candidate)
            else:
                kept.append({"name": candidate.name, "why": _requirer(candidate.key, manager)})
        budget = run_budget(len(free))
        say(f"minimize: {len(candidates)} candidates ({', '.join(c.name for c in candidates)}"
            f"){'; ' + str(len(kept)) + ' kept by the closure' if kept else ''}; "
            f"at most {budget} runs")
        by_key = {c.key: c for c in candidates}

        def effective(removal: frozenset[str]) -> frozenset[str]:
            return frozenset(removal & dropped_keys(manager, removal, index))

        def run(removal: frozenset[str]) -> Trial:
            number = len(record["runs"]) + 1
            files = {"software/environment.yml": dropped_keys(manager, removal, index),
                     "software/requirements.txt": dropped_keys(manager, removal, index),
                     "software/worker-environment.yml": dropped_keys(worker, removal, index)}
            say(f"minimize: run {number} of at most {budget}: without "
                f"{', '.join(sorted(files['software/environment.yml']))}")
            trial_root = work / f"trial-{number}"
            _copy_backpack(root, trial_root)
            _edit_specs(trial_root, files)
            verification = verify_backpack(trial_root, _options(options, cache,
                                                                f"run {number}"))
            verification.result["env_cache_kept"] = bool(options.cache_dir or options.keep)
            passed, outcome = judge(verification.result, baseline.result)
            say(f"minimize: run {number}: {outcome}")
            detail = {"run": number, "removed": sorted(files["software/environment.yml"]),
                      "candidates": sorted(by_key[k].name for k in removal),
                      "passed": passed, "outcome": outcome,
                      "verdict": verification.result["verdict"],
                      "pins": _count_pins(trial_root / "software/environment.yml"),
                      "seconds": verification.result.get("seconds"),
                      "verify": verification.result}
            record["runs"].append({k: v for k, v in detail.items() if k != "verify"})
            if not options.keep:
                shutil.rmtree(trial_root, ignore_errors=True)
            return Trial(removal, passed, detail)

        found = search([c.key for c in free], run, budget, effective)
        result = _result(record, found, by_key, kept, manager, worker, index, root,
                         budget, started)
        _write(root, result, found)
        return Minimization(root, baseline, result)
    finally:
        if options.keep:
            stale.release(work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def judge(trial: dict[str, Any], baseline: dict[str, Any]) -> tuple[bool, str]:
    """Whether a trial's re-run is the audited run again: every cell the same, or, for a cell
    that differed in the baseline too, the same status."""
    if trial["verdict"] == NOT_REPRODUCED:
        return False, f"not reproduced: {trial.get('explanation') or 'a cell failed'}"
    before = {c["cell"]: c["outcome"] for c in baseline.get("cells") or ()}
    for cell in trial.get("cells") or ():
        if cell["outcome"] == SAME or (cell["outcome"] == DIFFERS
                                       and before.get(cell["cell"]) == DIFFERS):
            continue
        shown = "; ".join((cell.get("diff") or [])[:2])
        return False, f"cell {cell['cell']} {cell['outcome']}: {shown}"
    return True, "every cell the same"


def _options(options: VerifyOptions, cache: Path, step: str) -> VerifyOptions:
    say = options.say
    return VerifyOptions(cache_dir=cache, keep=False, timeout=options.timeout,
                         say=lambda line: say(line if step == "verify"
                                              else f"minimize {step}: {line}"))


def _requirer(key: str, pins: list[Any]) -> str:
    from .emit.environment import _requires_names

    names = sorted(p.name for p in pins if key in _requires_names(p.dist))
    return f"required by {', '.join(names)}" if names else "required by a kept pin"


def _copy_backpack(root: Path, dest: Path) -> None:
    shutil.copytree(root, dest, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in _NOT_COPIED])


def _edit_specs(root: Path, files: dict[str, set[str]]) -> None:
    for name, keys in files.items():
        path = root / name
        if keys and path.is_file():
            path.write_text(drop_lines(path.read_text(encoding="utf-8"), keys),
                            encoding="utf-8")


def _count_pins(path: Path) -> int | None:
    from .minimize import pin_key

    if not path.is_file():
        return None
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines()
               if pin_key(line) not in (None, "python", "pip") and line.strip() != "- pip:")


def _result(record: dict[str, Any], found: Search, by_key: dict[str, Any],
            kept: list[dict[str, str]], manager: list[Any], worker: list[Any], index: Any,
            root: Path, budget: int, started: float) -> dict[str, Any]:
    removal = found.removed
    manager_keys = dropped_keys(manager, removal, index) if removal else set()
    proof = found.proof
    pins = {p.key: p for p in manager}
    dropped = []
    for key in sorted(manager_keys):
        why = by_key[key].why if key in by_key else \
            f"{pins[key].reason}, which was dropped" if key in pins else "dropped"
        dropped.append({"name": pins[key].name if key in pins else key,
                        "pin": pins[key].line if key in pins else key, "why": why})
    for key in found.needed:
        kept.append({"name": by_key[key].name,
                     "why": f"needed: a run without it failed ({_failure(found, key)})"})
    for key in found.untried:
        kept.append({"name": by_key[key].name, "why": "not tried: the run budget ran out"})
    before = _count_pins(root / "software/environment.yml")
    record.update(
        dropped=dropped, kept=kept, run_budget=budget,
        proof=({"run": proof.detail["run"], "outcome": proof.detail["outcome"],
                "verdict": proof.detail["verdict"]} if proof else None),
        files=({"software/environment.yml": sorted(manager_keys),
                "software/requirements.txt": sorted(manager_keys),
                "software/worker-environment.yml": sorted(dropped_keys(worker, removal, index)
                                                          if removal else ())}),
        pins_before=before, pins_after=(before - len(manager_keys)) if before is not None
        else None, seconds=round(time.monotonic() - started, 3))
    record["proof_verify"] = proof.detail["verify"] if proof else None
    return record


def _failure(found: Search, key: str) -> str:
    for trial in found.trials:
        if not trial.passed and key in trial.removed:
            return f"run {trial.detail['run']}: {trial.detail['outcome']}"
    return "see audit/minimize.json"


def _write(root: Path, record: dict[str, Any], found: Search) -> None:
    """The minimized spec files, audit/minimize.json and summary.json: every file written as
    .part first, then all renamed with SIGINT/SIGTERM held back."""
    parts: list[tuple[Path, Path]] = []
    try:
        files = record.get("files") or {}
        header = header_lines(record)
        for name in SPEC_FILES:
            path, keys = root / name, files.get(name) or ()
            if keys and path.is_file():
                text = drop_lines(path.read_text(encoding="utf-8"), keys,
                                  header if name.endswith("environment.yml") else ())
                parts.append(_part(path, text))
        proof_verify = record.pop("proof_verify", None)
        parts.append(_part(root / "audit" / RECORD, json.dumps(record, indent=2) + "\n"))
        added: dict[str, Any] = {"minimize": {"candidates": record["candidates"],
                                              **summary_block(record)}}
        if proof_verify is not None:  # the final spec's own verification
            added.update(verify=proof_verify,
                         verified=proof_verify["verdict"] != NOT_REPRODUCED)
        parts.append(_part(root / SUMMARY, updated_summary(root, **added)))
        with _signals_held():
            for part, path in parts:
                os.replace(part, path)
    finally:
        for part, _ in parts:
            part.unlink(missing_ok=True)


def _part(path: Path, text: str) -> tuple[Path, Path]:
    part = path.with_name(path.name + ".part")
    part.write_text(text, encoding="utf-8")
    return part, path


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the renames are done (then they arrive as usual)."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def minimize_lines(result: dict[str, Any]) -> list[str]:
    """summary.json's `minimize` block as lines for people."""
    if result.get("stopped"):
        return [f"minimize: stopped ({result['stopped']})"]
    runs = result.get("runs") or []
    dropped = len(result.get("dropped") or [])
    lines = [f"minimize: {dropped} {'pin' if dropped == 1 else 'pins'} dropped, "
             f"{result.get('pins_before')} -> {result.get('pins_after')} pins, "
             f"{len(runs)} {'run' if len(runs) == 1 else 'runs'} "
             f"(at most {result.get('run_budget', 0)})"]
    for run in runs:
        lines.append(f"  run {run['run']} without {', '.join(run['removed'])}: "
                     f"{run['outcome']}")
    for item in result.get("dropped") or ():
        lines.append(f"  dropped {item['pin']}: {item['why']}")
    for item in result.get("kept") or ():
        lines.append(f"  kept {item['name']}: {item['why']}")
    return lines

