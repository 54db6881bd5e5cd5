"""Cold vs warm environment phase of `flo-run env` for the same backpack, as a ratio in one run.

Cold: an empty environment cache. uv's own download cache is left alone, as on a machine after
its first run; `--empty-uv-cache` gives each cold run a fresh one, so cold includes downloads.
Warm: the same backpack again. Each phase is the whole `flo-run env` process, so interpreter
start-up, validation and interpreter probing are included.

    .venv/bin/python bench/env_cache.py [--python 3.11.7] [--repeat 3] [--empty-uv-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PINS = ["six==1.16.0", "tabulate==0.9.0", "termcolor==2.4.0"]


def make_backpack(root: Path, python: str) -> Path:
    for folder in ("workflow", "software", "compute"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "workflow" / "bench.py").write_text("import six, tabulate, termcolor\n")
    pins = "".join(f"      - {p}\n" for p in PINS)
    (root / "software" / "environment.yml").write_text(
        f"name: bench\ndependencies:\n  - python={python}\n  - pip\n  - pip:\n{pins}")
    (root / "compute" / "compute.yml").write_text(
        "vine_factory_config:\n  min-workers: 1\n  max-workers: 1\n  cores: 1\n"
        "  memory: 1024\n  disk: 1000\n")
    return root


def timed_env(backpack: Path, cache: Path, uv_cache: Path | None) -> tuple[float, dict]:
    argv = [sys.executable, "-m", "provisioner.cli", "env", str(backpack), "--cache-dir",
            str(cache), "--json"]
    env = dict(os.environ, UV_CACHE_DIR=str(uv_cache)) if uv_cache else None
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"flo-run env failed: {done.stderr.strip()}")
    return elapsed, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.11.7")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--empty-uv-cache", action="store_true",
                        help="give each cold run a fresh uv cache (downloads from PyPI)")
    args = parser.parse_args()
    colds, warms = [], []
    with tempfile.TemporaryDirectory(prefix="flo-bench-env-") as tmp:
        backpack = make_backpack(Path(tmp) / "bp", args.python)
        for i in range(args.repeat):
            cache = Path(tmp) / f"cache-{i}"
            uv_cache = Path(tmp) / f"uv-cache-{i}" if args.empty_uv_cache else None
            cold, report = timed_env(backpack, cache, uv_cache)
            assert not report["envs"][0]["from_cache"]
            warm, report = timed_env(backpack, cache, uv_cache)
            assert report["envs"][0]["from_cache"]
            colds.append(cold)
            warms.append(warm)
            print(f"run {i + 1}: cold {cold:6.2f} s   warm {warm:5.2f} s   "
                  f"(in-process env phase {report['seconds']:.3f} s)")
    cold, warm = statistics.median(colds), statistics.median(warms)
    print(f"median: cold {cold:.2f} s, warm {warm:.2f} s, cold/warm = {cold / warm:.1f}x "
          f"(target: warm under 2 s)")


if __name__ == "__main__":
    main()
