"""What a syscall costs under each tracer, in the traced command's main thread, in a thread it
starts and in a child it forks: why `--backend auto` prefers ptrace.

A small Python program times N calls of a syscall no backend records (`getppid`), N/10 of one
they all record (`openat` of a missing file) and N/10 of the same `openat` with the ptrace
tracer's key as its mode argument (how the kernel side reads the import system's files under
ptrace, `quiet`: the filter lets it through unstopped; no tracer and strace see a plain
openat), in each of the three places, and prints microseconds per call. It runs alternately
(the order turns every round) with no tracer, under the strace backend's own command line
(`StraceTracer.wrap`: `strace -f --seccomp-bpf ...`) and under the ptrace backend's (`python
-m auditor.record.ptrace_run`); the table shows the medians. With a seccomp filter that holds,
an unrecorded syscall costs what it costs untraced wherever it runs; strace 6.1 restarts every
task but the first with PTRACE_SYSCALL, so its threads and children stop at every syscall
(ipykernel's zmq, iopub and control threads, a pool's workers).

    .venv/bin/python bench/tracer_tasks.py [-n 3] [--calls 20000]
    .venv/bin/python bench/tracer_tasks.py --halt-poll-ns 200000   # root, KVM guests

`--halt-poll-ns N` (a KVM guest with the haltpoll cpuidle driver, as root; bench/halt_poll.py):
every round runs under the machine's `guest_halt_poll_ns` and under N, alternating, and a
table is printed for each. Most of a stop on these VMs is waking a halted vCPU: this shows
how much.

It prints; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import halt_poll  # noqa: E402  (bench/halt_poll.py, beside this script)

from auditor.common.process import run  # noqa: E402
from auditor.record.ptrace import PtraceTracer  # noqa: E402
from auditor.record.strace import StraceTracer  # noqa: E402

RUN_TIMEOUT_S = 600
PLACES = ("main", "thread", "child")
CALLS = ("unrecorded", "recorded", "quiet")

# The traced program: argv[1] calls of each syscall in each place; prints us per call.
PROGRAM = r"""
import ctypes, json, os, sys, threading, time
n, key = int(sys.argv[1]), int(sys.argv[2])
missing = "/nonexistent-flo-bench/x"
syscall = ctypes.CDLL(None, use_errno=True).syscall
syscall.restype = ctypes.c_long
syscall.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long, ctypes.c_ulong)

def timed():
    out = {}
    start = time.perf_counter()
    for _ in range(n):
        os.getppid()
    out["unrecorded"] = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n // 10):
        try:
            os.open(missing, os.O_RDONLY)
        except OSError:
            pass
    out["recorded"] = (time.perf_counter() - start) / (n // 10) * 1e6
    name = os.fsencode(missing)
    start = time.perf_counter()
    for _ in range(n // 10):
        syscall(257, -100, name, os.O_RDONLY, key)  # fails: ENOENT
    out["quiet"] = (time.perf_counter() - start) / (n // 10) * 1e6
    return out

result = {"main": timed()}
box = []
thread = threading.Thread(target=lambda: box.append(timed()))
thread.start()
thread.join()
result["thread"] = box[0]
read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.write(write_end, json.dumps(timed()).encode())
    os._exit(0)
os.close(write_end)
with os.fdopen(read_end) as pipe:
    result["child"] = json.loads(pipe.read())
os.waitpid(child, 0)
print(json.dumps(result))
"""


def commands(program: Path, calls: int, record: Path) -> dict[str, list[str]]:
    ptrace = PtraceTracer()
    argv = [sys.executable, str(program), str(calls), str(ptrace.quiet_key)]
    return {"none": argv,
            "strace": StraceTracer().wrap(argv, record / "strace"),
            "ptrace": ptrace.wrap(argv, record / "ptrace")}


def measure(rounds: int, calls: int, halt_poll_ns: str | None = None
            ) -> dict[str, dict[str, dict[str, dict[str, list[float]]]]]:
    """setting -> tracer -> place -> call -> us per call, one value per round (settings:
    bench/halt_poll.py)."""
    runs: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    with tempfile.TemporaryDirectory(prefix="flo-tracer-tasks-") as tmp, \
            halt_poll.compared(halt_poll_ns) as settings:
        program = Path(tmp) / "calls.py"
        program.write_text(PROGRAM, encoding="utf-8")
        for name in ("strace", "ptrace"):
            (Path(tmp) / name).mkdir()
        argvs = commands(program, calls, Path(tmp))
        order = list(argvs)
        env = {**os.environ, "PYTHONPATH": str(REPO)}  # the ptrace tracer imports auditor
        for round_no in range(rounds):
            for label, value in settings.items():
                halt_poll.apply(value)
                for tracer in order if round_no % 2 == 0 else order[::-1]:
                    done = run(argvs[tracer], timeout=RUN_TIMEOUT_S, cwd=tmp, env=env,
                               what=f"timing under {tracer}")
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    for place in PLACES:
                        for call in CALLS:
                            (runs.setdefault(label, {}).setdefault(tracer, {})
                             .setdefault(place, {}).setdefault(call, [])
                             .append(result[place][call]))
    return runs


def table(runs: dict[str, dict[str, dict[str, list[float]]]], rounds: int, calls: int) -> str:
    lines = [f"us per syscall, medians of {rounds} alternating round(s); {calls:,} getppid "
             f"(recorded by no backend), {calls // 10:,} failed openat (recorded) and as many "
             "with the ptrace tracer's key as mode (quiet) per place",
             "",
             f"{'tracer':<8}" + "".join(f"{place + ' ' + call:>20}" for call in CALLS
                                        for place in PLACES)]
    for tracer, places in runs.items():
        lines.append(f"{tracer:<8}" + "".join(
            f"{statistics.median(places[place][call]):>20.2f}"
            for call in CALLS for place in PLACES))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000)
    halt_poll.add_option(parser)
    args = parser.parse_args()
    for name, tracer in (("strace", StraceTracer), ("ptrace", PtraceTracer)):
        if reason := tracer.unavailable():
            print(f"the {name} backend cannot run here: {reason}", file=sys.stderr)
            return 1
    if reason := halt_poll.unavailable(args.halt_poll_ns):
        print(f"--halt-poll-ns: {reason}", file=sys.stderr)
        return 1
    measured = measure(args.rounds, args.calls, args.halt_poll_ns)
    for label, runs in measured.items():
        if len(measured) > 1:
            print(f"\n{label}:")
        print(table(runs, args.rounds, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
