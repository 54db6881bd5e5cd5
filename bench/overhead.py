"""How much slower is a notebook under `flo-audit` than run plainly? Ratios measured in one run.

For each benchmark fixture, alternate N times: a plain headless execution through nbclient
(same python3 kernel, same working directory) and the full `flo-audit` CLI (tracing, resolving
and writing the backpack into a temporary folder). Both are started as fresh processes, so
both pay interpreter and kernel start-up. The order flips every round to cancel drift.

    .venv/bin/python bench/overhead.py [-n 3] [--backend auto|ptrace|strace|hooks] [FIXTURE ...]
    .venv/bin/python bench/overhead.py --halt-poll-ns 200000   # root, KVM guests

`--halt-poll-ns N`: every round also runs, plain and audited, with the guest's idle vCPUs
polling N ns before they halt (bench/halt_poll.py), alternating with the machine's setting;
a table for each.

Targets (issue 15): compute-bound <= 1.03, import-heavy <= 1.15. A benchmark prints, it does
not pass or fail on a wall-clock time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import halt_poll  # noqa: E402  (bench/halt_poll.py, beside this script)

from auditor.common.process import run  # noqa: E402
from auditor.record.base import choose_tracer  # noqa: E402

FIXTURES = REPO / "fixtures" / "notebooks"
TARGETS = {"compute_bound": 1.03, "import_heavy": 1.15}
RUN_TIMEOUT_S = 900

# Executed by a fresh interpreter: the notebook, headless, in its own folder, python3 kernel.
PLAIN = """
import sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
path = Path(sys.argv[1])
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, kernel_name="python3", timeout=None,
               resources={"metadata": {"path": str(path.parent)}}).execute()
"""


@dataclass
class Timings:
    fixture: str
    plain: list[float] = field(default_factory=list)
    audit: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return statistics.median(self.audit) / statistics.median(self.plain)


def flo_audit() -> list[str]:
    script = Path(sys.executable).parent / "flo-audit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "auditor"]


def timed(argv: list[str], cwd: Path, what: str) -> float:
    started = time.perf_counter()
    run(argv, cwd=cwd, timeout=RUN_TIMEOUT_S, what=what)
    return time.perf_counter() - started


def measure(fixture: str, rounds: int, backend: str, halt_poll_ns: str | None = None
            ) -> dict[str, Timings]:
    """Setting label -> the fixture's timings under it (settings: bench/halt_poll.py)."""
    notebook = FIXTURES / fixture / f"{fixture}.ipynb"
    plain_argv = [sys.executable, "-c", PLAIN, str(notebook)]
    with halt_poll.compared(halt_poll_ns) as settings:
        timings = {label: Timings(fixture) for label in settings}
        for i in range(rounds):
            for label, value in settings.items():
                halt_poll.apply(value)
                with tempfile.TemporaryDirectory(prefix="flo-bench-") as tmp:
                    audit_argv = [*flo_audit(), str(notebook), "-o",
                                  str(Path(tmp) / "backpack"), "--backend", backend]
                    steps = [("plain", plain_argv), ("audit", audit_argv)]
                    for name, argv in steps if i % 2 == 0 else reversed(steps):
                        seconds = timed(argv, notebook.parent, f"{name} run of {fixture}")
                        getattr(timings[label], name).append(seconds)
                        where = f" ({label})" if len(settings) > 1 else ""
                        print(f"  {fixture} round {i + 1}: {name:5s} {seconds:6.2f} s{where}",
                              flush=True)
    return timings


def table(results: list[Timings], backend: str) -> str:
    lines = [f"backend {backend}, medians of {len(results[0].plain)} alternating rounds",
             f"{'fixture':15s} {'plain s':>8s} {'audit s':>8s} {'ratio':>6s} {'target':>7s}"]
    for t in results:
        target = f"<= {TARGETS[t.fixture]:.2f}" if t.fixture in TARGETS else ""
        lines.append(f"{t.fixture:15s} {statistics.median(t.plain):8.2f} "
                     f"{statistics.median(t.audit):8.2f} {t.ratio:6.2f} "
                     f"{target:>7s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="*", default=list(TARGETS),
                        help="fixture names under fixtures/notebooks (default: %(default)s)")
    parser.add_argument("-n", "--rounds", type=int, default=3)
    parser.add_argument("--backend", default="auto", choices=["auto", "ptrace", "strace", "hooks"],
                        help="the tracer (default: the one flo-audit's auto picks here)")
    halt_poll.add_option(parser)
    args = parser.parse_args(argv)
    if reason := halt_poll.unavailable(args.halt_poll_ns):
        print(f"--halt-poll-ns: {reason}", file=sys.stderr)
        return 1
    args.backend = choose_tracer(args.backend)[0].name  # named in the table
    results = [measure(name, args.rounds, args.backend, args.halt_poll_ns)
               for name in args.fixtures]
    for label in results[0]:
        print(f"\n{label}:" if len(results[0]) > 1 else "")
        print(table([by_setting[label] for by_setting in results], args.backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
