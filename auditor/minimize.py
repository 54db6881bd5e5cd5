"""The minimize stage, pure parts: which pins a trial removes, the search over the candidates,
and the spec files without the pins a run proved unneeded (DESIGN.md rule 10).

A trial removes a set of candidates (`auditor.optional`) and, with them, the pins that were
there only for them; a candidate another kept pin requires stays (`dropped_keys`: the spec is
re-closed under Requires-Dist, so `--no-deps` installs still work). The search (`search`) is
delta debugging with a budget: all candidates at once, then halves of a failed group, breadth
first; a removal is kept only when a run with it passed, and every run removes everything kept
so far too, so the last passing run is the proof of the final spec. The runs themselves live
in `auditor.minimize_run`; `audit/minimize.json` records them and derive applies it
(`apply_record`), so a re-derived backpack keeps the proven removals.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .backpack.environment import parse_conda_spec

#: The record of a minimization, in the audit folder (derive reads it; never derived).
RECORD = "minimize.json"
#: The spec files a removal edits, when the backpack has them.
SPEC_FILES = ("software/environment.yml", "software/worker-environment.yml",
              "software/requirements.txt")
ROOT_REASONS = ("used", "kernel machinery")


def run_budget(candidates: int) -> int:
    """At most 1 + 2 log2(n) runs for n candidates (one for a single candidate)."""
    if candidates <= 0:
        return 0
    return int(1 + 2 * math.log2(candidates))


def dropped_keys(pins: Iterable[Any], removal: Iterable[str], index: Any) -> set[str]:
    """The pins (`emit.environment.DraftPin`) of one spec that go when `removal` is removed: the
    spec re-closed from its remaining roots (used pins, the kernel machinery); what that
    closure still holds stays, even when asked for."""
    pins = list(pins)
    asked = {canonicalize_name(k) for k in removal}
    roots = [p.dist for p in pins if p.reason in ROOT_REASONS and p.key not in asked]
    closure, _ = index.closure(roots)
    kept = {canonicalize_name(d.name) for d in closure} | {p.key for p in pins
                                                          if p.key not in asked
                                                          and p.reason in ROOT_REASONS}
    return {p.key for p in pins if p.key not in kept}


# ----------------------------------------------------------------- the search

@dataclass
class Trial:
    """One run of the search: what it removed and whether every cell came out the same."""

    removed: frozenset[str]  # candidate keys asked for
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)  # filled by the runner


@dataclass
class Search:
    removed: frozenset[str]  # proven removable, together
    needed: list[str]  # single candidates whose removal failed
    untried: list[str]  # left when the budget ran out (kept: nothing proves them unneeded)
    trials: list[Trial]

    @property
    def proof(self) -> Trial | None:
        """The passing run that removed exactly the final set."""
        return next((t for t in reversed(self.trials) if t.passed
                     and t.removed == self.removed), None)


def search(candidates: Sequence[str], run: Callable[[frozenset[str]], Trial],
           budget: int | None = None,
           effective: Callable[[frozenset[str]], frozenset[str]] = lambda s: s) -> Search:
    """Delta debugging over `candidates` (keys, in order): all, then halves of what failed,
    breadth first, at most `budget` calls of `run`. `effective` maps a requested removal to
    what it really removes (closure); a trial equal to one already run is not run again."""
    budget = run_budget(len(candidates)) if budget is None else budget
    removed: frozenset[str] = frozenset()
    outcome: dict[frozenset[str], bool] = {}
    trials: list[Trial] = []
    needed: list[str] = []
    untried: list[str] = []
    groups: deque[tuple[str, ...]] = deque([tuple(candidates)] if candidates else [])
    while groups:
        group = groups.popleft()
        trial = effective(removed | frozenset(group))
        if trial <= removed:
            continue  # nothing new: the closure keeps all of it
        if trial not in outcome:
            if len(trials) >= budget:
                untried += [c for c in group if c not in removed]
                continue
            done = run(trial)
            trials.append(done)
            outcome[trial] = done.passed
        if outcome[trial]:
            removed = trial
        elif len(group) > 1:
            half = len(group) // 2
            groups.extend((group[:half], group[half:]))
        else:
            needed.append(group[0])
    return Search(removed, needed, untried, trials)


# ----------------------------------------------------------------- the spec files

def pin_key(line: str) -> str | None:
    """The distribution a spec line pins (environment.yml or requirements.txt), or None."""
    text = line.split("  #", 1)[0].strip()
    if text.startswith("#") or not text:
        return None
    text = text.removeprefix("- ").strip().strip('"')
    if "::" in text:
        return canonicalize_name(parse_conda_spec(text)[0])
    try:
        return canonicalize_name(Requirement(text).name)
    except InvalidRequirement:
        return None


def drop_lines(text: str, keys: Iterable[str], header: Sequence[str] = ()) -> str:
    """`text` without the lines that pin `keys`; `header` comment lines go after the file's
    leading comment block."""
    keys = {canonicalize_name(k) for k in keys}
    lines = [line for line in text.splitlines() if pin_key(line) not in keys]
    top = 0
    while top < len(lines) and lines[top].startswith("#"):
        top += 1
    lines[top:top] = [f"# {line}" if line else "#" for line in header]
    return "\n".join(lines) + "\n"


def header_lines(record: dict[str, Any]) -> list[str]:
    """What the minimized environment.yml says about itself."""
    dropped = record.get("dropped") or []
    if not dropped:
        return []
    proof = record.get("proof") or {}
    lines = [f"Minimized by flo-audit --minimize: {len(dropped)} dropped, proven by re-run "
             f"{proof.get('run', '?')}", "(every cell the same without them):"]
    for item in dropped:
        lines.append(f"  {item['pin']}: {item['why']}")
    lines.append("The runs are in audit/minimize.json, the proof in audit/summary.json.")
    return lines


def apply_record(texts: dict[str, str], record: dict[str, Any]) -> dict[str, str]:
    """The derived spec texts with a minimization's proven removals applied (derive)."""
    per_file = record.get("files") or {}
    out = dict(texts)
    for name in SPEC_FILES:
        if name in out and per_file.get(name):
            header = header_lines(record) if name.endswith("environment.yml") else ()
            out[name] = drop_lines(out[name], per_file[name], header)
    return out


def summary_block(record: dict[str, Any]) -> dict[str, Any]:
    """summary.json's `minimize`: the proof (runs, outcomes, pin counts) from the record."""
    keys = ("candidates", "dropped", "kept", "runs", "proof", "pins_before", "pins_after",
            "run_budget", "seconds")
    return {key: record[key] for key in keys if key in record}


def read_minimize_record(record_dir: Any) -> dict[str, Any]:
    """audit/minimize.json ({} when the backpack was never minimized or it is unreadable)."""
    import json
    from pathlib import Path

    path = Path(record_dir) / RECORD
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
