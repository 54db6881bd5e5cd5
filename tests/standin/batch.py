#!/usr/bin/env python3
"""A stand-in batch system for the engine tests, at the CLI edge only: installed under the
names of a system's commands (qsub/qstat/qdel for PBS, bsub/bjobs/bkill for LSF), it runs each
submitted job script as a local process group and answers listings and cancels as the real
command prints them. State (one file per job: its pid) lives in $FLO_STANDIN_STATE; every call
is appended to calls.log there, so a test can see which commands ran."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FLO_STANDIN_STATE"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not reaped: its parent was this stand-in) is gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def jobs() -> dict[str, int]:
    found = {}
    for file in sorted(STATE.glob("*.job")):
        pid = int(file.read_text())
        if alive(pid):
            found[file.stem] = pid
    return found


def submit(script: str) -> str:
    number = len(list(STATE.glob("*.job"))) + 100
    log = open(STATE / f"{number}.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["bash", script], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    (STATE / f"{number}.job").write_text(str(proc.pid))
    (STATE / f"{number}.script").write_text(Path(script).read_text())
    return str(number)


def cancel(ids: list[str]) -> int:
    running = jobs()
    for job in ids:
        job = job.split(".")[0]
        if job in running:
            os.killpg(running[job], signal.SIGTERM)
    return 0


def main(name: str, args: list[str]) -> int:
    with open(STATE / "calls.log", "a") as log:
        log.write(" ".join([name, *args]) + "\n")
    if name == "qsub":
        print(f"{submit(args[-1])}.standin")
    elif name == "bsub":  # `bsub < script` (dask-jobqueue's default) or `bsub script`
        if not args:
            script = STATE / "stdin.sh"
            script.write_text(sys.stdin.read())
            args = [str(script)]
        print(f"Job <{submit(args[-1])}> is submitted to default queue <normal>.")
    elif name == "qstat":  # PBS `qstat -u USER`
        print("Job ID  Username Queue Jobname SessID NDS TSK Memory Time S Time")
        for job, pid in jobs().items():
            print(f"{job}.standin user workq flo {pid} 1 1 -- -- R 00:00")
    elif name == "bjobs":
        for job in jobs():
            print(f"{job} RUN")
    elif name in ("qdel", "bkill"):
        return cancel(args)
    else:
        print(f"stand-in: unknown command {name}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[0]).name, sys.argv[1:]))
