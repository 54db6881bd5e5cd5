"""flo-run validate / env through the real command line (console script and main())."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_envs import PY311, make_backpack, needs_pyenv

from provisioner.cli import main

REPO = Path(__file__).resolve().parents[1]


def flo_run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "flo-run"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "provisioner.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return make_backpack(tmp_path / "good", "3.11.7", ["six==1.16.0", "tabulate==0.9.0"])


def test_validate_good_backpack(good: Path) -> None:
    done = flo_run("validate", str(good), "--strict", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["valid"] and result["workflow"].endswith("workflow/analysis.ipynb")
    assert result["python"] == {"manager": "3.11.7", "worker": "3.11.7"}
    assert result["checked_with"] == "auditor.backpack.layout"


def problems(backpack: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    assert main(["validate", str(backpack), "--json", *extra]) == 2
    return json.loads(capsys.readouterr().out)["problems"]


def test_missing_environment_names_the_file(good: Path, capsys) -> None:
    (good / "software" / "environment.yml").unlink()
    [problem] = problems(good, capsys=capsys)
    assert problem["file"] == "software/environment.yml" and "missing" in problem["expected"]


def test_two_notebooks_are_ambiguous(good: Path, capsys) -> None:
    shutil.copy(good / "workflow" / "analysis.ipynb", good / "workflow" / "other.ipynb")
    [problem] = problems(good, capsys=capsys)
    assert problem["file"] == "workflow/" and "exactly one" in problem["expected"]
    assert "analysis.ipynb" in problem["expected"] and "other.ipynb" in problem["expected"]


def test_helper_modules_beside_the_notebook_are_fine(good: Path, capsys) -> None:
    (good / "workflow" / "helpers.py").write_text("X = 1\n")
    assert main(["validate", str(good)]) == 0


def test_bad_key_names_file_key_and_expectation(good: Path, capsys) -> None:
    (good / "software" / "environment.yml").write_text("name: t\ndependencies: numpy\n")
    [problem] = problems(good, capsys=capsys)
    assert problem["file"] == "software/environment.yml"
    assert problem["key"] == "dependencies" and "expected" in problem["expected"]


def test_bad_compute_value(good: Path, capsys) -> None:
    (good / "compute" / "compute.yml").write_text("vine_factory_config:\n  cores: many\n")
    [problem] = problems(good, capsys=capsys)
    assert problem["file"] == "compute/compute.yml"
    assert problem["key"] == "vine_factory_config.cores" and "integer" in problem["expected"]


def test_strict_parses_the_notebook(good: Path, capsys) -> None:
    (good / "workflow" / "analysis.ipynb").write_text('{"cells": "not a list"}')
    assert main(["validate", str(good)]) == 0  # layout alone is fine
    capsys.readouterr()
    [problem] = problems(good, "--strict", capsys=capsys)
    assert problem["file"] == "workflow/analysis.ipynb" and "notebook" in problem["expected"]


def test_invalid_backpack_stops_env_before_any_build(good: Path, tmp_path: Path) -> None:
    (good / "software" / "environment.yml").unlink()
    done = flo_run("env", str(good), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2 and "software/environment.yml" in done.stderr
    assert not (tmp_path / "cache").exists()


@needs_pyenv
def test_env_build_list_and_clean(good: Path, tmp_path: Path) -> None:
    assert PY311.exists()
    cache = tmp_path / "cache"
    first = flo_run("env", str(good), "--cache-dir", str(cache), "--json")
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)["envs"][0]
    second = json.loads(flo_run("env", str(good), "--cache-dir", str(cache), "--json").stdout)
    assert second["envs"][0]["from_cache"] and second["envs"][0]["path"] == built["path"]

    human = flo_run("env", str(good), "--cache-dir", str(cache))
    assert human.returncode == 0 and "cache" in human.stdout and "environment phase" in human.stdout

    listed = json.loads(flo_run("env", str(good), "--list", "--cache-dir", str(cache),
                                "--json").stdout)
    [entry] = listed["envs"]
    assert entry["current"] and entry["key"] == built["key"] and entry["size_bytes"] > 1_000_000

    # Change the spec: the old env is now stale for this backpack and --clean removes it.
    env_yml = good / "software" / "environment.yml"
    env_yml.write_text(env_yml.read_text().replace("      - tabulate==0.9.0\n", ""))
    cleaned = json.loads(flo_run("env", str(good), "--clean", "--cache-dir", str(cache),
                                 "--json").stdout)
    assert [e["key"] for e in cleaned["removed"]] == [built["key"]]
    assert not Path(built["path"]).exists()


def test_clean_keeps_an_env_built_by_another_builder(good: Path, tmp_path: Path) -> None:
    # Built with --builder pip, pruned without naming a builder: the env still serves the
    # current spec, so --clean must not delete it (only stale specs are pruned).
    cache = tmp_path / "cache"
    done = flo_run("env", str(good), "--builder", "pip", "--cache-dir", str(cache), "--json")
    assert done.returncode == 0, done.stderr
    [built] = json.loads(done.stdout)["envs"]
    cleaned = json.loads(flo_run("env", str(good), "--clean", "--cache-dir", str(cache),
                                 "--json").stdout)
    assert cleaned["removed"] == [] and Path(built["path"]).is_dir()
    [entry] = cleaned["envs"]
    assert entry["current"]


def test_run_form_reaches_the_runner(good: Path, capsys) -> None:
    # The run itself is tested in test_run_e2e.py; here only that `flo-run BP ...` is parsed
    # by the runner's options (a usage error, before any work).
    assert main([str(good), "-o", "out.ipynb"]) == 2
    assert "-o goes with --execute" in capsys.readouterr().err


def test_run_and_check_take_the_same_deploy_flags() -> None:
    """`flo-run check BP` checks the run `flo-run BP` would make: every deploy flag is on both,
    with one help text and one default; only the run's own flags (-o, --keep, ...) differ."""
    from provisioner.cli import _parser, _run_parser

    def flags(parser: argparse.ArgumentParser) -> dict[str, tuple]:
        return {opt: (a.dest, a.help, a.default, a.choices) for a in parser._actions
                for opt in a.option_strings}

    [sub] = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    check, run = flags(sub.choices["check"]), flags(_run_parser())
    shared = {"--engine", "--site", "--queue", "--partition", "--account", "--walltime",
              "--workers", "--scratch-dir", "--cache-dir", "--host", "--scheduler-port",
              "--python", "--builder", "--profile", "--json", "-h", "--help"}
    assert set(check) == shared, set(check) ^ shared
    assert {opt: run[opt] for opt in shared} == check
    assert set(run) - shared == {"--execute", "-o", "--output", "-p", "--parameter", "--keep",
                                 "--timeout", "--cell"}
