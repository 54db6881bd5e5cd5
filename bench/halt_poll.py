"""The idle vCPU's halt polling of a KVM guest, for benchmarks that compare with and without.

On a KVM guest with the haltpoll cpuidle driver, `guest_halt_poll_ns` is how long an idle
vCPU polls before it halts; a halted vCPU takes tens of microseconds to wake (the host must
run it again), and a traced syscall wakes the tracer and then the tracee. `--halt-poll-ns N`
in bench/tracer_tasks.py and bench/overhead.py runs every round under the machine's value and
under N, alternating: `compared` gives the settings and puts the machine's back however the
run ends, `apply` writes one (root only). A machine setting, not something flo-audit changes.
`python bench/halt_poll.py [--set N]` shows (sets) it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

PARAMETER = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--halt-poll-ns", metavar="N",
                        help="also run with this guest_halt_poll_ns (root; KVM haltpoll)")


def unavailable(value: str | None) -> str | None:
    """Why `value` cannot be written here, or None (also when there is no value)."""
    if value is not None and not os.access(PARAMETER, os.W_OK):
        return (f"{PARAMETER} is not there or not writable (a KVM guest with the haltpoll "
                "cpuidle driver, as root)")
    return None


@contextlib.contextmanager
def compared(value: str | None) -> Iterator[dict[str, str | None]]:
    """Label -> the setting to `apply` before a run: one entry ("as is", None) without
    `value`, else the machine's and `value`; the machine's is put back however it ends."""
    if value is None:
        yield {"as is": None}
        return
    machine = PARAMETER.read_text().strip()
    try:
        yield {f"guest_halt_poll_ns {machine} (the machine's)": machine,
               f"guest_halt_poll_ns {value}": value}
    finally:
        PARAMETER.write_text(machine)


def apply(value: str | None) -> None:
    if value is not None:
        PARAMETER.write_text(value)


def main() -> int:
    parser = argparse.ArgumentParser(description="Show (or --set, as root) a KVM guest's "
                                     "guest_halt_poll_ns, the setting the --halt-poll-ns "
                                     "benchmarks compare.")
    parser.add_argument("--set", metavar="N", help="write N nanoseconds (0: halt at once)")
    args = parser.parse_args()
    if not PARAMETER.exists():
        print(f"{PARAMETER} is not there: not a KVM guest with the haltpoll cpuidle driver",
              file=sys.stderr)
        return 1
    if args.set is not None:
        if reason := unavailable(args.set):
            print(reason, file=sys.stderr)
            return 1
        apply(args.set)
    print(PARAMETER.read_text().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
