"""The pip env builder: same contract as uv (pins kept, bootstrap added, works after the cache's
rename), on a real interpreter and real PyPI wheels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner import api
from provisioner.envs import EnvCache

pytestmark = pytest.mark.slow

PY311 = Path.home() / ".pyenv" / "versions" / "3.11.7" / "bin" / "python"


@pytest.mark.skipif(not PY311.exists(), reason="needs ~/.pyenv/versions/3.11.7")
def test_pip_builder_keeps_pins_and_survives_the_rename(tmp_path: Path) -> None:
    bp = tmp_path / "bp"
    for sub in ("workflow", "software", "compute"):
        (bp / sub).mkdir(parents=True)
    (bp / "workflow" / "job.py").write_text("import six\n")
    (bp / "software" / "environment.yml").write_text(
        "name: t\ndependencies:\n  - python=3.11.7\n  - pip\n  - pip:\n      - six==1.16.0\n")
    (bp / "compute" / "compute.yml").write_text(
        "vine_factory_config:\n  min-workers: 1\n  max-workers: 1\n  cores: 1\n"
        "  memory: 512\n  disk: 100\n")
    report = api.build_environments(bp, tmp_path / "cache", builder="pip")
    env = report.envs[0]
    assert env.installed["six"] == "1.16.0" and "distributed" in env.installed
    assert env.path.parent == EnvCache(tmp_path / "cache").root and env.path.name == env.key
    # An entry-point script written inside the temporary build folder still runs here.
    done = subprocess.run([env.path / "bin" / "pip", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and str(env.path) in done.stdout, done.stderr
    again = api.build_environments(bp, tmp_path / "cache", builder="pip")
    assert again.envs[0].from_cache and again.envs[0].path == env.path
