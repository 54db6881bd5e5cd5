"""A real single-node SLURM for the batch-engine tests: the `slurm` session fixture.

The fixture runs .ci/slurm-setup.sh (a no-op when SLURM is already up; `make test` runs it
before pytest too) and fails the test when SLURM cannot be brought up: the tests that ask for
it exist to prove the engine works on a real batch system. `FLO_SLURM=skip` (what
`make test SLURM=skip` sets) skips them instead, for a machine where starting SLURM needs a
root the developer does not have.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / ".ci" / "slurm-setup.sh"
#: Upper bound for the set-up script on a fresh machine (apt-get update + install + start).
SETUP_TIMEOUT_S = 600


@dataclass(frozen=True)
class Slurm:
    """The running SLURM: the node name and a helper to read our jobs from squeue."""

    node: str

    def jobs(self, name: str | None = None) -> dict[str, str]:
        """Job id -> state of this user's jobs still known to squeue, optionally by job name."""
        argv = ["squeue", "-h", "--me", "-o", "%i %T %j"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        found = {}
        for line in out.stdout.splitlines():
            job, state, job_name = line.split(maxsplit=2)
            if name is None or job_name == name:
                found[job] = state
        return found

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        """Poll `check` until true; fail naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"SLURM: {what} not reached in {timeout:g} s; squeue: {self.jobs()}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm() -> Slurm:
    """SLURM running on this host with its node idle (the set-up script makes it so)."""
    if os.environ.get("FLO_SLURM") == "skip":
        pytest.skip("FLO_SLURM=skip: SLURM tests skipped")
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True,
                          timeout=SETUP_TIMEOUT_S)
    if proc.returncode != 0 or not shutil.which("squeue"):
        pytest.fail(f"SLURM could not be brought up by {SETUP.name} (exit {proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return Slurm(node=node)
