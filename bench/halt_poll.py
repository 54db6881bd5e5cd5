"""The idle vCPU's halt polling of a KVM guest, for benchmarks that compare with and without.

On a KVM guest with the haltpoll cpuidle driver, `guest_halt_poll_ns` is how long an idle
vCPU polls before it halts; a halted vCPU takes tens of microseconds to wake (the host must
run it again), and a traced syscall wakes the tracer and then the tracee. `--halt-poll-ns N`
in bench/tracer_tasks.py and bench/overhead.py runs every round under the machine's value and
under N, alternating; `apply` writes the value (root only) and `restored` puts the
machine's back however the run ends. A machine setting, not something flo-audit changes.
`python bench/halt_poll.py [--set N]` shows (sets) it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PARAMETER = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def unavailable() -> str | None:
    """Why the setting cannot be changed here, or None."""
    if not os.access(PARAMETER, os.W_OK):
        return (f"{PARAMETER} is not there or not writable (a KVM guest with the haltpoll "
                "cpuidle driver, as root)")
    return None


def settings(value: str | None) -> dict[str, str | None]:
    """Label -> value to write before a run (None: leave the machine's); one entry without
    `value`, the machine's and `value` with it."""
    if value is None:
        return {"as is": None}
    machine = PARAMETER.read_text().strip()
    return {f"guest_halt_poll_ns {machine} (the machine's)": machine,
            f"guest_halt_poll_ns {value}": value}


def apply(value: str | None) -> None:
    if value is not None:
        PARAMETER.write_text(value)


@contextlib.contextmanager
def restored(value: str | None) -> Iterator[None]:
    """Put the machine's value back at the end, when `value` means it will be changed."""
    machine = PARAMETER.read_text().strip() if value is not None else None
    try:
        yield
    finally:
        if machine is not None:
            PARAMETER.write_text(machine)


def main() -> int:
    import argparse
    import sys

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
        if reason := unavailable():
            print(reason, file=sys.stderr)
            return 1
        apply(args.set)
    print(PARAMETER.read_text().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
