"""How fast the strace parser reads a long trace, and how much memory it holds while doing so.

    .venv/bin/python bench/parse_speed.py                 # a generated 500,000-line trace
    .venv/bin/python bench/parse_speed.py --trace FILE    # a saved trace.strace

The generated trace mimics an import-heavy notebook kernel: mostly opens of site-packages
files (a third of them failing, as import and library searches do), threads interleaving
with `<unfinished ...>`/`resumed` pairs, escaped names, forks, execs, exits and signals.
Prints figures measured in this one run; it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from auditor.record.strace_parse import StraceParser  # noqa: E402

SITE = "/home/user/envs/sci/lib/python3.11/site-packages"
PACKAGES = ["numpy", "pandas", "scipy", "sklearn", "matplotlib", "dateutil", "yaml", "pytz"]


def generate(path: Path, count: int, seed: int = 1) -> None:
    """Write a realistic `strace -f -ttt -y` trace of `count` lines to `path`."""
    rng = random.Random(seed)
    root, threads, t = 4000, [4001, 4002, 4003], 1764444000.0
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        def emit(pid: int, text: str) -> None:
            nonlocal t, written
            t += rng.random() * 0.0002
            out.write(f"{pid:<5d} {t:.6f} {text}\n")
            written += 1

        emit(root, 'execve("/home/user/envs/sci/bin/python", ["python", "-m", "ipykernel_'
                   'launcher", "-f", "/tmp/kernel.json"], 0x7ffd /* 40 vars */) = 0')
        for tid in threads:
            emit(root, "clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|"
                       "CLONE_SYSVSEM|CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID, "
                       "child_tid=0x7f1, parent_tid=0x7f1, exit_signal=0, stack=0x7f0, "
                       f"stack_size=0x7fff80, tls=0x7f2}} => {{parent_tid=[{tid}]}}, 88) = {tid}")
        child = 5000
        while written < count - 1:
            roll = rng.random()
            pkg = rng.choice(PACKAGES)
            mod = f"{SITE}/{pkg}/sub{rng.randrange(40)}/module_{rng.randrange(500)}"
            pid = root if rng.random() < 0.7 else rng.choice(threads)
            if roll < 0.55:
                emit(pid, f'openat(AT_FDCWD</home/user/nb>, "{mod}.cpython-311.pyc", '
                          f"O_RDONLY|O_CLOEXEC) = 5<{mod}.cpython-311.pyc>")
            elif roll < 0.85:
                emit(pid, f'openat(AT_FDCWD</home/user/nb>, "{mod}.cpython-311-x86_64-linux-'
                          'gnu.so", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)')
            elif roll < 0.93:
                emit(pid, f'openat(AT_FDCWD</home/user/nb>, "{mod}.py", O_RDONLY|O_CLOEXEC '
                          "<unfinished ...>")
                emit(root if pid != root else threads[0], f"openat(AT_FDCWD</home/user/nb>, "
                     f'"data/r\\303\\251sum\\303\\251 {rng.randrange(99)}.csv", O_RDONLY) = '
                     f"6</home/user/nb/data/r\\303\\251sum\\303\\251 {rng.randrange(99)}.csv>")
                emit(pid, f"<... openat resumed>) = 5<{mod}.py>")
            elif roll < 0.97:
                emit(root, f'openat(AT_FDCWD</home/user/nb>, "{SITE}/{pkg}", O_RDONLY|'
                           f"O_NONBLOCK|O_CLOEXEC|O_DIRECTORY) = 5<{SITE}/{pkg}>")
            elif roll < 0.985:
                emit(root, "--- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=5000, "
                           "si_uid=1000, si_status=0, si_utime=0, si_stime=0} ---")
            else:
                child += 1
                emit(root, "vfork( <unfinished ...>")
                emit(child, 'execve("/usr/bin/uname", ["uname", "-m"], 0x7ffd /* 40 vars */ '
                            "<unfinished ...>")
                emit(root, f"<... vfork resumed>) = {child}")
                emit(child, "<... execve resumed>) = 0")
                emit(child, 'openat(AT_FDCWD</home/user/nb>, "/etc/ld.so.cache", O_RDONLY|'
                            "O_CLOEXEC) = 3</etc/ld.so.cache>")
                emit(child, "+++ exited with 0 +++")
        emit(root, "+++ exited with 0 +++")


def measure(trace: Path) -> tuple[int, int, float, float, int]:
    """Lines, events, wall and CPU seconds (CPU time is steadier on a shared machine)."""
    parser = StraceParser("/home/user/nb")
    start, cpu = time.perf_counter(), time.process_time()
    with open(trace, encoding="utf-8", errors="surrogateescape") as lines:
        events = sum(1 for _ in parser.parse(lines))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    with open(trace, encoding="utf-8") as lines:
        count = sum(1 for _ in lines)
    return count, events, elapsed, cpu, parser.skipped


def peak_memory(trace: Path) -> int:
    """Peak bytes Python allocated while parsing (a second pass, as tracemalloc slows it)."""
    tracemalloc.start()
    with open(trace, encoding="utf-8", errors="surrogateescape") as lines:
        for _ in StraceParser("/home/user/nb").parse(lines):
            pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--trace", type=Path, help="a saved trace to parse instead")
    options.add_argument("--lines", type=int, default=500_000)
    args = options.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        trace = args.trace
        if trace is None:
            trace = Path(scratch) / "trace.strace"
            generate(trace, args.lines)
        size = trace.stat().st_size
        lines, events, elapsed, cpu, skipped = measure(trace)
        peak = peak_memory(trace)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"trace:        {lines:,} lines, {size / 1e6:.1f} MB")
    print(f"parse:        {elapsed:.2f} s wall ({cpu:.2f} s CPU), {lines / elapsed:,.0f} lines/s, "
          f"{events:,} events, {skipped} lines skipped")
    print(f"memory:       peak {peak / 1e6:.2f} MB allocated while parsing (tracemalloc), "
          f"max RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
