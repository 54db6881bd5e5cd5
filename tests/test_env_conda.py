"""The conda env builder, against a stand-in `micromamba` on PATH (no conda channel and no conda
tool can be installed on this machine, so the tool's CLI is the protocol edge).

The stand-in implements only `create --yes --prefix P [--override-channels -c CH] SPECS`, the
way micromamba behaves for a caller: it logs its argv, fails like micromamba (exit 1, libmamba's
solver report) for a spec it cannot provide, else makes the prefix with a pyenv interpreter for
`python=` and installs the solved packages from PyPI with uv, recording them in conda-meta/.
Everything flo-run does around it (uv for pip pins, checks, the cache, the CLI) is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_envs import FLO_RUN, needs_pyenv, versions_in
from test_run_e2e import DASK_PINS, hand_backpack, leftovers, result_of

from provisioner import api
from provisioner.envs import EnvBuildError, EnvCache, EnvRequest, requested_interpreter
from provisioner.envs.base import BuildOutcome
from provisioner.envs.cache import STAMP

pytestmark = [pytest.mark.slow, needs_pyenv]

NUMPY = "2.2.6"  # in this repo's venv, so uv's cache has its wheel

STAND_IN = r'''#!{python}
"""Stand-in for `micromamba create` (see tests/test_env_conda.py)."""
import glob, json, os, subprocess, sys, tempfile

LOG, UV, PYENV = {log!r}, {uv!r}, {pyenv!r}
args = sys.argv[1:]
with open(LOG, "a") as log:
    log.write(json.dumps(args) + "\n")


def cannot_solve(problems):
    # libmamba's report for a spec no channel provides, on stderr, exit 1.
    sys.stderr.write("error    libmamba Could not solve for environment specs\n"
                     "    The following packages are incompatible\n")
    for spec in problems:
        sys.stderr.write(f"    └─ {{spec}} does not exist (perhaps a typo or a missing "
                         "channel).\n")
    sys.stderr.write("critical libmamba Could not solve for environment specs\n")
    sys.exit(1)


if args[:2] != ["create", "--yes"] or "--prefix" not in args:
    sys.stderr.write("stand-in micromamba: only `create --yes --prefix P ...` is implemented\n")
    sys.exit(2)
rest, prefix, specs = args[2:], None, []
while rest:
    arg = rest.pop(0)
    if arg == "--prefix":
        prefix = rest.pop(0)
    elif arg == "-c":
        rest.pop(0)
    elif arg != "--override-channels":
        specs.append(arg.split("::", 1)[-1])
python, wanted = "", []
for spec in specs:
    name, _, version = spec.replace("==", "=").partition("=")
    if name == "python":
        found = sorted(glob.glob(f"{{PYENV}}/{{version}}*/bin/python"))
        if not found:
            cannot_solve([f"python ={{version}}"])
        python = found[-1]
    else:
        wanted.append(f"{{name}}=={{version}}" if version else name)
env = {{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}}
env["UV_NO_PROGRESS"] = "1"
compile = [UV, "pip", "compile", "-", "--python", python, "--no-header", "--no-annotate",
           "--quiet"]
solved = subprocess.run(compile, input="\n".join(wanted), capture_output=True, text=True,
                        env=env)
if solved.returncode != 0:
    bad = [w for w in wanted if subprocess.run(
        [*compile, "--no-deps"], input=w, capture_output=True, text=True, env=env).returncode]
    cannot_solve([b.replace("==", " ==") for b in bad] or wanted)
subprocess.run([python, "-m", "venv", "--without-pip", prefix], check=True)
with tempfile.NamedTemporaryFile("w", suffix=".txt") as lock:
    lock.write(solved.stdout)
    lock.flush()
    subprocess.run([UV, "pip", "install", "--python", f"{{prefix}}/bin/python", "--no-deps",
                    "--quiet", "-r", lock.name], check=True, env=env)
meta = os.path.join(prefix, "conda-meta")
os.makedirs(meta)
version = subprocess.run([f"{{prefix}}/bin/python", "-c",
                          "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, check=True).stdout.strip()
packages = [("python", version)] + [tuple(line.split("==")) for line in
                                    solved.stdout.split() if "==" in line]
for name, ver in packages:
    with open(os.path.join(meta, f"{{name}}-{{ver}}-0.json"), "w") as record:
        json.dump({{"name": name, "version": ver, "build": "0", "files": []}}, record)
print(f"Transaction finished\n\nTo activate this environment, use:\n\n"
      f"    micromamba activate {{prefix}}")
'''


@pytest.fixture
def micromamba(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in, first on PATH; returns its argv log (one JSON list per call)."""
    return put_stand_in_on_path(tmp_path, monkeypatch)


def put_stand_in_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import uv

    bin_dir, log = tmp_path / "bin", tmp_path / "micromamba-calls.jsonl"
    bin_dir.mkdir()
    tool = bin_dir / "micromamba"
    tool.write_text(STAND_IN.format(python=sys.executable, log=str(log), uv=uv.find_uv_bin(),
                                    pyenv=str(Path.home() / ".pyenv" / "versions")))
    tool.chmod(0o755)
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for var in ("MAMBA_EXE", "CONDA_EXE"):
        monkeypatch.delenv(var, raising=False)
    return log


@pytest.fixture
def no_conda(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.envs import find_conda_tool

    for var in ("MAMBA_EXE", "CONDA_EXE"):
        monkeypatch.delenv(var, raising=False)
    if find_conda_tool() is not None:
        pytest.skip("a real conda-family tool is installed here")


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def conda_backpack(root: Path, conda: list[str], pip: list[str], python: str = "3.11.7",
                   channels: tuple[str, ...] = ("conda-forge",)) -> Path:
    """A backpack whose environment.yml has conda pins (and pip pins)."""
    for sub in ("workflow", "software", "compute"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "workflow" / "job.py").write_text("import numpy\n")
    write_conda_env(root / "software" / "environment.yml", conda, pip, python, channels)
    (root / "compute" / "compute.yml").write_text(
        "vine_factory_config:\n  min-workers: 1\n  max-workers: 1\n  cores: 1\n"
        "  memory: 1024\n  disk: 1000\n")
    return root


def write_conda_env(path: Path, conda: list[str], pip: list[str], python: str = "3.11.7",
                    channels: tuple[str, ...] = ("conda-forge",)) -> None:
    chans = "".join(f"  - {c}\n" for c in channels)
    deps = "".join(f"  - {d}\n" for d in [f"python={python}", *conda, "pip"])
    pips = "  - pip:\n" + "".join(f"      - {p}\n" for p in pip) if pip else ""
    path.write_text(f"name: t\nchannels:\n{chans}dependencies:\n{deps}{pips}")


def test_conda_env_is_built_in_place_usable_and_reused(tmp_path: Path, micromamba: Path) -> None:
    bp = conda_backpack(tmp_path / "bp", [f"conda-forge::numpy=={NUMPY}"], ["six==1.16.0"])
    cache = tmp_path / "cache"

    [env] = api.build_environments(bp, cache, builder="conda").envs
    assert env.builder == "conda" and not env.from_cache and env.python == "3.11.7"
    [argv] = calls(micromamba)
    prefix = argv[argv.index("--prefix") + 1]
    assert prefix == str(env.path) == str(EnvCache(cache).path_for(env.key)), \
        "a conda prefix is not relocatable: it must be created at its final cache path"
    assert argv[:2] == ["create", "--yes"]
    assert argv[argv.index("--override-channels") + 1:][:2] == ["-c", "conda-forge"]
    specs = argv[argv.index("conda-forge") + 1:]
    assert specs[:2] == ["python=3.11.7", f"conda-forge::numpy=={NUMPY}"], specs
    assert sorted(specs[2:]) == ["cloudpickle", "distributed", "ipykernel"], \
        "bootstrap packages go unpinned into the same solve; pip pins do not"

    # The env works: numpy from the solve at its pin, six (a pip pin) installed by uv.
    found = versions_in(env.path, "numpy", "six", "ipykernel", "distributed")
    assert found["numpy"] == NUMPY and found["six"] == "1.16.0", found
    assert found["ipykernel"] and found["distributed"], found
    done = subprocess.run([env.path / "bin" / "python", "-c",
                           "import numpy; print(numpy.__version__, numpy.arange(4).sum())"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [NUMPY, "6"], done.stderr
    assert env.installed["numpy"] == NUMPY and env.installed["six"] == "1.16.0"
    assert env.installed["python"] == "3.11.7", "conda-meta records are part of the listing"
    assert not list(cache.glob(".*.tmp-*")) and (env.path / STAMP).exists()

    again = api.build_environments(bp, cache, builder="conda").envs[0]
    assert again.from_cache and again.path == env.path and again.builder == "conda"
    assert len(calls(micromamba)) == 1, "a cache hit must not call the conda tool"


def test_failed_solve_names_the_pin_and_leaves_nothing(tmp_path: Path, micromamba: Path) -> None:
    bp = conda_backpack(tmp_path / "bp", ["numpy==9.9"], [])
    cache = tmp_path / "cache"
    with pytest.raises(EnvBuildError) as caught:
        api.build_environments(bp, cache, builder="conda")
    message = str(caught.value)
    assert "numpy==9.9" in message and "micromamba" in message and "\n" not in message, message
    assert "ipykernel" not in message.split(":")[0], "only the pin the solver refused is named"
    assert len(calls(micromamba)) == 1
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == [], \
        "a failed build leaves no environment folder behind"


def test_non_relocatable_build_is_removed_when_interrupted(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path / "cache")
    bp = conda_backpack(tmp_path / "bp", ["numpy==1.0"], [])
    spec = api.validate(bp).specs["manager"]
    request = EnvRequest(spec, requested_interpreter("3.11.7"), ("worker",), "conda")
    seen: list[Path] = []

    def interrupted(target: Path) -> BuildOutcome:
        seen.append(target)
        (target / "conda-meta").mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.ensure(request, interrupted, relocatable=False)
    assert seen == [cache.path_for(request.key)], "built straight at the final path"
    assert not seen[0].exists(), "an interrupted in-place build must be removed"

    # A folder left by a killed build (no stamp) is not trusted: rebuilt, then stamped.
    (seen[0] / "leftover").mkdir(parents=True)
    def completes(target: Path) -> BuildOutcome:
        target.mkdir()
        return BuildOutcome({"numpy": "1.0"}, python="3.11.7")

    built = cache.ensure(request, completes, relocatable=False)
    assert not (built.path / "leftover").exists() and built.python == "3.11.7"
    assert cache.stamp(request.key)["builder"] == "conda"


def test_conda_requests_need_no_local_interpreter_and_key_on_version(tmp_path: Path,
                                                                     micromamba: Path) -> None:
    keys = set()
    for python in ("3.11.7", "3.12.1", "3.99.1"):  # 3.99 is on no machine: conda brings it
        bp = conda_backpack(tmp_path / python, ["numpy==1.0"], [], python=python)
        [request] = api.plan_environments(api.validate(bp), builder="conda")
        assert request.builder == "conda" and request.interpreter.version == python
        keys.add(request.key)
    assert len(keys) == 3
    bp = conda_backpack(tmp_path / "chan", ["numpy==1.0"], [], channels=("bioconda",))
    [other] = api.plan_environments(api.validate(bp), builder="conda")
    assert other.key not in keys, "the channels decide a conda env's content, so its key"


def test_auto_picks_conda_only_with_a_tool_and_conda_pins(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          no_conda: None) -> None:
    with_conda = conda_backpack(tmp_path / "c", ["numpy==1.0"], ["six==1.16.0"])
    pip_only = conda_backpack(tmp_path / "p", [], ["six==1.16.0"])

    def chosen(bp: Path) -> str:
        return api.plan_environments(api.validate(bp), builder="auto")[0].builder

    assert chosen(with_conda) == "uv", "no conda-family tool here: auto means uv"
    put_stand_in_on_path(tmp_path, monkeypatch)
    assert chosen(with_conda) == "conda"
    assert chosen(pip_only) == "uv", "a spec without conda pins stays with uv"


def test_builder_conda_without_a_tool_is_one_clear_line(tmp_path: Path, no_conda: None) -> None:
    bp = conda_backpack(tmp_path / "bp", ["numpy==1.0"], [])
    done = subprocess.run([*FLO_RUN, "env", str(bp), "--builder", "conda", "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "micromamba" in lines[0] and "--builder uv" in lines[0], \
        done.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_flo_run_execute_with_builder_conda(tmp_path: Path, micromamba: Path) -> None:
    bp = hand_backpack(tmp_path / "condabp", [
        "import numpy, sys\nprint('numpy', numpy.__version__)\nprint('prefix', sys.prefix)",
        "from distributed import Client\nclient = Client()\n"
        "print('sum', client.submit(lambda: int(numpy.arange(5).sum())).result())"])
    write_conda_env(bp / "software" / "environment.yml", [f"numpy=={NUMPY}"], DASK_PINS)
    places = {"cache": tmp_path / "cache", "scratch": tmp_path / "scratch"}
    output = tmp_path / "out.ipynb"
    done = subprocess.run([*FLO_RUN, str(bp), "--execute", "--builder", "conda", "--json",
                           "-o", str(output), "--cache-dir", str(places["cache"]),
                           "--scratch-dir", str(places["scratch"])],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    result = result_of(done)
    assert done.returncode == 0 and result["status"] == "complete", done.stderr[-3000:]
    assert result["envs"]["manager"]["builder"] == "conda"
    assert any("built by conda" in note for note in result["notes"]), result["notes"]
    [argv] = calls(micromamba)
    assert f"numpy=={NUMPY}" in argv and "ipykernel" in argv
    assert "distributed" not in argv, "distributed is a pip pin: the solve must not move it"
    text = output.read_text()
    assert f"numpy {NUMPY}" in text and "sum 10" in text
    assert result["envs"]["manager"]["path"] in text, "the kernel ran in the conda env"
    assert not leftovers(places["cache"], places["scratch"])
