"""Resolving and emitting from a big saved trace: seconds and peak memory of `auditor.api.derive`.

Takes a real audit's record folder (a backpack's audit/; by default it first audits the
import_heavy fixture), scales its trace.strace up to --lines lines, and runs derive on the copy
in a fresh process that reports wall time and peak RSS. Targets: 500,000 lines in under 3 s
with audit/cells.yml (issues 2 and 12); linear in trace lines, 5 million in under 15 s and
under 300 MB (issue 15: `--growth` derives 0.5, 2 and 5 million lines in one run and prints
seconds per million lines for each).

    .venv/bin/python bench/derive_speed.py [BACKPACK_OR_AUDIT_DIR] [--lines 500000 ...]
    .venv/bin/python bench/derive_speed.py --growth [--baseline OLD_TREE] [--rounds 3]

`--baseline` derives each size also with the auditor/ package of another checkout (such as
`git archive COMMIT | tar -x -C /tmp/old`), alternating with this tree's, for the ratio.

How the trace grows: every complete file syscall line is repeated in place, the copies made by
an extra thread of the same process (a new, shifted tid announced by a synthetic
clone3(CLONE_THREAD) line) at timestamps spread between the original line and the next one.
Cell marks, process creation, exec, exit and cwd changes are never copied, so each copy lands
in the same process and the same cell as its original, and the process tree stays the real one.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from auditor.common.process import run  # noqa: E402  (the repo on sys.path first)
from auditor.events import MARK_PREFIX  # noqa: E402  (the repo on sys.path first)

TID_SHIFT = 1_000_000  # copies of pid P are made by thread P + TID_SHIFT
# Syscalls whose repetition would change the process tree, a cwd or a file's name.
NOT_COPIED = {"clone", "clone3", "fork", "vfork", "execve", "execveat", "chdir", "fchdir",
              "rename", "renameat", "renameat2", "exit", "exit_group"}
LINE = re.compile(r"(\d+) +(\d+\.\d+) (\w+)\(")  # strace pads short pids


def copyable(line: str) -> re.Match[str] | None:
    """The (pid, ts, syscall) of a complete syscall line worth repeating, else None."""
    match = LINE.match(line)
    if (match is None or match.group(3) in NOT_COPIED or MARK_PREFIX in line
            or "<unfinished ...>" in line):
        return None
    return match


def scaled_lines(trace: Path, target: int) -> Iterator[str]:
    """The lines of `trace` with copies interleaved so that there are about `target` in all."""
    total = copyables = 0
    with trace.open(encoding="utf-8", errors="surrogateescape") as src:
        for line in src:
            total += 1
            copyables += copyable(line) is not None
    if copyables == 0:
        raise SystemExit(f"{trace}: no syscall lines to repeat")
    extra = max(0, target - total)
    each, remainder = divmod(extra, copyables)
    threads: set[int] = set()
    seen = 0
    with trace.open(encoding="utf-8", errors="surrogateescape") as src:
        lines = iter(src)
        line = next(lines, None)
        while line is not None:
            following = next(lines, None)
            yield line
            match = copyable(line)
            if match is not None:
                seen += 1
                copies = each + (seen <= remainder)
                if copies:
                    yield from _copies(line, match, following, copies, threads)
            line = following


def _copies(line: str, match: re.Match[str], following: str | None, copies: int,
            threads: set[int]) -> Iterator[str]:
    pid, ts = int(match.group(1)), float(match.group(2))
    tid = pid + TID_SHIFT
    if tid not in threads:
        threads.add(tid)
        yield (f"{pid} {ts:.6f} clone3({{flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND"
               f"|CLONE_THREAD|CLONE_SYSVSEM, exit_signal=0}}, 88) = {tid}\n")
        copies -= 1  # the announcement counts as one of the added lines
    nxt = LINE.match(following or "")
    gap = (float(nxt.group(2)) - ts) if nxt else 0.0
    step = max(gap, 0.0) / (copies + 1)
    body = line[match.end(2):]
    for j in range(1, copies + 1):
        yield f"{tid} {ts + j * step:.6f}{body}"


def scale_record(record: Path, target: int, into: Path) -> int:
    """Copy the record folder to `into` with its trace scaled to `target` lines."""
    shutil.copytree(record, into, ignore=shutil.ignore_patterns("trace.strace"))
    count = 0
    with (into / "trace.strace").open("w", encoding="utf-8", errors="surrogateescape") as out:
        for line in scaled_lines(record / "trace.strace", target):
            out.write(line)
            count += 1
    return count


# The child process: derive once with the auditor package of the tree given first, print
# seconds, peak RSS and where the code came from as one JSON line.
MEASURE = """
import json, resource, sys, time
from pathlib import Path
root, record, notebook_dir = sys.argv[1:4]
sys.path.insert(0, root)
import auditor
from auditor.api import derive
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
derive(Path(record), Path(notebook_dir))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "baseline_rss_mb": before,
                  "code": auditor.__file__}))
"""


def measure(code: Path, record: Path, notebook_dir: Path) -> dict:
    """Derive from `record` in a fresh interpreter with the auditor package under `code`."""
    done = run([sys.executable, "-c", MEASURE, str(code), str(record), str(notebook_dir)],
               timeout=1800, what=f"deriving from the scaled trace with {code}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(result["code"]).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"the child imported {result['code']}, not the tree {code}")
    return result


def audit_fixture(into: Path) -> Path:
    """Audit the import_heavy fixture with the CLI; return its record folder."""
    notebook = REPO / "fixtures" / "notebooks" / "import_heavy" / "import_heavy.ipynb"
    cli = Path(sys.executable).parent / "flo-audit"
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "auditor"]
    run([*argv, str(notebook), "-o", str(into / "backpack"), "--backend", "strace"],
        timeout=900, what="auditing the import_heavy fixture")
    return into / "backpack" / "audit"


def record_folder(given: Path) -> Path:
    return given / "audit" if (given / "audit" / "session.json").is_file() else given


GROWTH = [500_000, 2_000_000, 5_000_000]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", nargs="?", type=Path,
                        help="a backpack or its audit/ folder (default: audit import_heavy)")
    parser.add_argument("--lines", type=int, nargs="+", default=[500_000],
                        help="trace sizes to derive from, one run each (default 500000)")
    parser.add_argument("--growth", action="store_true",
                        help="sizes 0.5, 2 and 5 million lines: is derive linear?")
    parser.add_argument("--rounds", type=int, default=1, help="derives per size (median)")
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="also derive with the auditor/ of another checkout (e.g. `git "
                             "archive` of an older commit), alternately, for the ratio")
    args = parser.parse_args(argv)
    sizes = GROWTH if args.growth else args.lines
    trees = [("this", REPO)] + ([("baseline", args.baseline)] if args.baseline else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="flo-derive-bench-") as tmp:
        work = Path(tmp)
        record = record_folder(args.record) if args.record else audit_fixture(work)
        session = json.loads((record / "session.json").read_text(encoding="utf-8"))
        notebook_dir = Path(session["notebook"]).parent
        for size in [0, *sizes]:  # 0: the record as it is, for the cost that is not per line
            scaled = work / "scaled-audit"
            lines = scale_record(record, size, scaled)
            print(f"trace: {record / 'trace.strace'} scaled to {lines:,} lines", flush=True)
            runs: dict[str, list[dict]] = {name: [] for name, _ in trees}
            for round_ in range(args.rounds):
                order = trees if round_ % 2 == 0 else trees[::-1]
                for name, code in order:
                    result = measure(code, scaled, notebook_dir)
                    runs[name].append(result)
                    print(f"  {name}: {result['seconds']:.2f} s, peak RSS "
                          f"{result['peak_rss_mb']:.0f} MB", flush=True)
            shutil.rmtree(scaled)
            rows.append((lines, {name: (statistics.median(r["seconds"] for r in results),
                                        max(r["peak_rss_mb"] for r in results),
                                        results[0]["baseline_rss_mb"])
                                 for name, results in runs.items()}))
    print_table(rows, [name for name, _ in trees])
    return 0


def print_table(rows: list[tuple[int, dict[str, tuple[float, float, float]]]],
                names: list[str]) -> None:
    """Seconds per million lines over the whole derive, and over what the record as it is
    takes (the first row: indexing the environment, parsing cell sources), which is what
    stays the same at every size if derive is linear."""
    head = "| lines | seconds | peak RSS | s per M lines | s per M lines over the first row |"
    rule = "| --- | --- | --- | --- | --- |"
    if "baseline" in names:
        head += " baseline seconds | baseline peak RSS | this / baseline |"
        rule += " --- | --- | --- |"
    print(f"\n{head}\n{rule}")
    first_lines, first = rows[0]
    for lines, figures in rows:
        seconds, peak, before = figures["this"]
        extra = lines - first_lines
        over = f"{(seconds - first['this'][0]) / extra * 1e6:.2f}" if extra > 0 else ""
        row = (f"| {lines:,} | {seconds:.2f} s | {peak:.0f} MB ({before:.0f} MB before) "
               f"| {seconds / lines * 1e6:.2f} | {over} |")
        if "baseline" in figures:
            old, old_peak, _ = figures["baseline"]
            row += f" {old:.2f} s | {old_peak:.0f} MB | {seconds / old:.2f} |"
        print(row)
    print("targets: 500,000 lines < 3 s (issue 12); 5 million lines < 15 s and < 300 MB, "
          "the same seconds per million lines at every size (issue 15)")


if __name__ == "__main__":
    sys.exit(main())
