"""What `flo-audit verify` costs over the audit, for the demo notebook, as ratios in one run.

audit: the full `flo-audit` CLI on fixtures/notebooks/import_names (kernel under the tracer,
resolving, writing the backpack). Then `flo-audit verify` of that backpack:
- cold: the default throw-away environment cache (built from the backpack, removed after);
  uv's own download cache is left alone unless `--empty-uv-cache` (then each cold run gets a
  fresh one, so cold includes downloading the wheels from PyPI);
- warm: `--cache-dir` holding the environment already (built by one untimed verify first).
Each figure is a whole CLI process; the median of `--repeat` rounds (the order flips).

    .venv/bin/python bench/verify_cost.py [--repeat 3] [--empty-uv-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASE = "import_names"
FLO_AUDIT = [sys.executable, "-m", "auditor"]


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--empty-uv-cache", action="store_true",
                        help="give each cold verify a fresh uv cache (downloads from PyPI)")
    args = parser.parse_args()
    audits, colds, warms = [], [], []
    with tempfile.TemporaryDirectory(prefix="flo-bench-verify-") as tmp:
        base = Path(tmp)
        workdir = base / CASE
        shutil.copytree(REPO / "fixtures" / "notebooks" / CASE, workdir)
        backpack, cache = base / "backpack", base / "cache"
        audit = [*FLO_AUDIT, str(workdir / f"{CASE}.ipynb"), "-o", str(backpack), "--force",
                 "--json"]
        verify = [*FLO_AUDIT, "verify", str(backpack), "--json"]
        timed(audit)
        timed([*verify, "--cache-dir", str(cache)])  # fills the warm cache, untimed
        for round_ in range(args.repeat):
            env = None
            if args.empty_uv_cache:
                env = dict(os.environ, UV_CACHE_DIR=str(base / f"uv-{round_}"))
            steps = [("audit", lambda: timed(audit)),
                     ("cold", lambda env=env: timed(verify, env)),
                     ("warm", lambda: timed([*verify, "--cache-dir", str(cache)]))]
            for name, step in (steps if round_ % 2 == 0 else steps[::-1]):
                seconds, result = step()
                if name != "audit" and result["verdict"] != "reproduced":
                    raise SystemExit(f"verify ({name}) did not reproduce: {result}")
                {"audit": audits, "cold": colds, "warm": warms}[name].append(seconds)
                extra = ""
                if name != "audit":
                    env_s = result["envs"]["manager"]["seconds"]
                    extra = f"  (manager environment {env_s:.1f} s, from cache: " \
                            f"{result['envs']['manager']['from_cache']})"
                print(f"round {round_ + 1} {name:5s} {seconds:6.1f} s{extra}", flush=True)
            if args.empty_uv_cache:
                shutil.rmtree(base / f"uv-{round_}", ignore_errors=True)
    audit_s, cold_s, warm_s = (statistics.median(x) for x in (audits, colds, warms))
    print(f"\n{CASE}, median of {args.repeat}: audit {audit_s:.1f} s, verify cold {cold_s:.1f} s, "
          f"verify warm {warm_s:.1f} s")
    print(f"verify/audit: cold {cold_s / audit_s:.2f}, warm {warm_s / audit_s:.2f}; "
          f"cold/warm {cold_s / warm_s:.2f}"
          + (" (cold with an empty uv cache: wheels downloaded)" if args.empty_uv_cache
             else " (cold: empty environment cache, uv's download cache as it is)"))


if __name__ == "__main__":
    main()
