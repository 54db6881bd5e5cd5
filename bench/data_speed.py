"""What the data draft costs: derive with and without it on a big trace, and hashing speed.

Audits the data_inputs fixture (in a temporary copy, kept while measuring: its inputs are
hashed), scales its trace to --lines lines as derive_speed.py does, then runs
`auditor.api.derive` in fresh processes, alternately with the data collector and with a
stand-in that ignores every event, and prints the medians. Then hashes a sparse file of
--hash-mb megabytes the way inputs are hashed and prints MB/s and the RSS growth.

    .venv/bin/python bench/data_speed.py [--lines 500000] [--rounds 3] [--hash-mb 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from derive_speed import scale_record  # noqa: E402  (bench/ on sys.path first)

from auditor.common.process import run  # noqa: E402

CASE = "data_inputs"


def measure(record: Path, notebook_dir: Path, with_data: bool) -> None:
    """Child-process side: derive once (with or without the data draft), print JSON."""
    import resource

    import auditor.api as api
    from auditor.emit.data.collect import DataDraft

    if not with_data:
        class Ignore:
            url_cells: dict[str, set[int]] = {}

            def note(self, event: object) -> None:
                pass

            def cell_uses(self) -> dict[str, tuple[set[int], set[int]]]:
                return {}

            def draft(self, *args: object, **kwargs: object) -> DataDraft:
                return DataDraft()

        api.collector_for_record = lambda *args, **kwargs: Ignore()  # type: ignore[assignment]
    started = time.perf_counter()
    derived = api.derive(record, notebook_dir)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    inputs = len(derived.data.inputs if derived.data else ())
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "inputs": inputs}))


def hash_speed(megabytes: int, folder: Path) -> tuple[float, float]:
    """(MB/s, RSS growth in MB) of hashing a sparse file of `megabytes` MB."""
    import psutil

    from auditor.emit.data.hashing import sha256_file

    path = folder / "huge.bin"
    with open(path, "wb") as out:
        out.truncate(megabytes * 10**6)
    process = psutil.Process()
    before = peak = process.memory_info().rss

    def progress(what: str, done: int, total: int) -> None:
        nonlocal peak
        if done % (64 << 20) == 0:
            peak = max(peak, process.memory_info().rss)

    started = time.perf_counter()
    sha256_file(str(path), progress)
    seconds = time.perf_counter() - started
    return megabytes / seconds, (peak - before) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hash-mb", type=int, default=1000)
    parser.add_argument("--measure", nargs=3, metavar=("RECORD", "NOTEBOOK_DIR", "WITH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        record, notebook_dir, with_data = args.measure
        measure(Path(record), Path(notebook_dir), with_data == "with")
        return 0
    with tempfile.TemporaryDirectory(prefix="data-speed-") as tmp:
        work = Path(tmp)
        shutil.copytree(REPO / "fixtures" / "notebooks" / CASE, work / CASE)
        cli = Path(sys.executable).parent / "flo-audit"
        argv_cli = [str(cli)] if cli.exists() else [sys.executable, "-m", "auditor"]
        run([*argv_cli, str(work / CASE / f"{CASE}.ipynb"), "-o", str(work / "backpack"),
             "--backend", "strace"], timeout=900, what=f"auditing the {CASE} fixture")
        lines = scale_record(work / "backpack" / "audit", args.lines, work / "scaled")
        print(f"{CASE} trace scaled to {lines:,} lines")
        times: dict[str, list[float]] = {"with": [], "without": []}
        rss: dict[str, list[float]] = {"with": [], "without": []}
        for round_ in range(args.rounds):
            order = ("with", "without") if round_ % 2 == 0 else ("without", "with")
            for mode in order:
                done = run([sys.executable, __file__, "--measure", str(work / "scaled"),
                            str(work / CASE), mode], timeout=900, what=f"derive {mode} data")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                times[mode].append(result["seconds"])
                rss[mode].append(result["peak_rss_mb"])
                print(f"  derive {mode:>7} the data draft: {result['seconds']:.2f} s, "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['inputs']} inputs")
        with_s, without_s = statistics.median(times["with"]), statistics.median(times["without"])
        print(f"median derive: {with_s:.2f} s with the data draft, {without_s:.2f} s without "
              f"(ratio {with_s / without_s:.2f}); peak RSS {statistics.median(rss['with']):.0f}"
              f" vs {statistics.median(rss['without']):.0f} MB")
        speed, growth = hash_speed(args.hash_mb, work)
        print(f"hashing a {args.hash_mb} MB input: {speed:.0f} MB/s, RSS grew {growth:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
