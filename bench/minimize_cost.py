"""What `flo-audit minimize` does for the scikit-learn demo: extra runs, pins before and after.

Audits fixtures/notebooks/import_names (scikit-learn, which imports pandas whenever it is
installed; numpy.f2py, which imports charset_normalizer) with the full CLI, then minimizes the
backpack in a throw-away environment cache. Prints the candidates, the runs against the
budget (1 + 2 log2(candidates)), the pins before and after, and minimize's time over the
audit's, as ratios of one run. Stops unless the minimized backpack still reproduces.

    .venv/bin/python bench/minimize_cost.py [--case import_names]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLO_AUDIT = [sys.executable, "-m", "auditor"]


def timed(argv: list[str]) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="import_names")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flo-bench-minimize-"))
    try:
        shutil.copytree(REPO / "fixtures/notebooks" / args.case, work / args.case)
        notebook = work / args.case / f"{args.case}.ipynb"
        backpack = work / "backpack"
        audit_s, _ = timed([*FLO_AUDIT, str(notebook), "-o", str(backpack), "--json"])
        minimize_s, result = timed([*FLO_AUDIT, "minimize", str(backpack), "--json"])
        if result["verify"]["verdict"] == "not reproduced":
            raise SystemExit("the backpack does not reproduce: nothing to measure")
        found = result["minimize"]
        proof = found.get("proof") or {}
        runs = found.get("runs") or []
        print(f"case {args.case}: {len(found['candidates'])} candidates "
              f"({', '.join(c['name'] for c in found['candidates'])})")
        print(f"  extra runs: {len(runs)} (budget {found.get('run_budget')}); "
              f"proof: run {proof.get('run')}, {proof.get('verdict')}")
        print(f"  pins: {found.get('pins_before')} -> {found.get('pins_after')} "
              f"(dropped {', '.join(d['pin'] for d in found.get('dropped') or []) or 'none'})")
        for kept in found.get("kept") or ():
            print(f"  kept {kept['name']}: {kept['why']}")
        print(f"  minimize / audit: {minimize_s / audit_s:.1f}x "
              f"(audit {audit_s:.1f} s, minimize {minimize_s:.1f} s incl. the verify run)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
