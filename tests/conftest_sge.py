"""A real single-node Grid Engine for the sge engine's tests: the `sge` session fixture.

Like the `slurm` fixture: it runs .ci/sge-setup.sh (a no-op when SGE is up; `make test` runs
it before pytest too) and fails the test when SGE cannot be brought up; `FLO_SGE=skip` (what
`make test SGE=skip` sets) skips them instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / ".ci" / "sge-setup.sh"
SETUP_TIMEOUT_S = 600


def sge_jobs() -> dict[str, str]:
    """Job id -> state of the jobs qstat lists for this user."""
    out = subprocess.run(["qstat"], capture_output=True, text=True, timeout=30, check=True)
    return {line.split()[0]: line.split()[4] for line in out.stdout.splitlines()
            if line.split() and line.split()[0].isdigit()}


@pytest.fixture(scope="session")
def sge() -> None:
    """Grid Engine running on this host with its all.q usable."""
    if os.environ.get("FLO_SGE") == "skip":
        pytest.skip("FLO_SGE=skip: SGE tests skipped")
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True,
                          timeout=SETUP_TIMEOUT_S)
    if proc.returncode != 0 or not shutil.which("qsub"):
        pytest.fail(f"SGE could not be brought up by {SETUP.name} (exit {proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}")
