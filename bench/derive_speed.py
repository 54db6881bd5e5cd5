"""Resolving and emitting from a big saved trace: seconds and peak memory of `auditor.api.derive`.

Takes a real audit's record folder (a backpack's audit/; by default it first audits the
import_heavy fixture), scales its trace.strace up to --lines lines, and runs derive on the copy
in a fresh process that reports wall time and peak RSS. Target (issue 2): 500,000 lines in
under 3 s and under 300 MB.

    .venv/bin/python bench/derive_speed.py [BACKPACK_OR_AUDIT_DIR] [--lines 500000]

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
import resource
import shutil
import sys
import tempfile
import time
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


def measure(record: Path, notebook_dir: Path) -> None:
    """Child-process side: derive once, print seconds and peak RSS as JSON."""
    from auditor.api import derive

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    derive(record, notebook_dir)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "baseline_rss_mb": baseline}))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("record", nargs="?", type=Path,
                        help="a backpack or its audit/ folder (default: audit import_heavy)")
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--measure", nargs=2, type=Path, metavar=("RECORD", "NOTEBOOK_DIR"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(*args.measure)
        return 0
    with tempfile.TemporaryDirectory(prefix="flo-derive-bench-") as tmp:
        work = Path(tmp)
        record = record_folder(args.record) if args.record else audit_fixture(work)
        session = json.loads((record / "session.json").read_text(encoding="utf-8"))
        notebook_dir = Path(session["notebook"]).parent
        scaled = work / "scaled-audit"
        lines = scale_record(record, args.lines, scaled)
        print(f"trace: {record / 'trace.strace'} scaled to {lines:,} lines")
        done = run([sys.executable, __file__, "--measure", str(scaled), str(notebook_dir)],
                   timeout=900, what="deriving from the scaled trace")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"derive: {result['seconds']:.2f} s (target < 3 s), peak RSS "
          f"{result['peak_rss_mb']:.0f} MB (target < 300 MB; {result['baseline_rss_mb']:.0f} MB "
          f"before deriving)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
