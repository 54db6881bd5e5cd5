"""The environment cache under damage and where it lives: a cached env whose files went is
rebuilt (and says so); a read-only cache or scratch folder is one line naming it and how to
choose another; the default folder follows $FLO_CACHE_DIR, then XDG_CACHE_HOME.

Read-only folders are real: a read-only bind mount (tests run as root, whom chmod does not
stop), else an immutable folder (chattr +i), else the test is skipped saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_envs import FLO_RUN, make_backpack, needs_pyenv, versions_in

from provisioner import api
from provisioner.envs import default_cache_dir
from provisioner.envs.cache import STAMP

REPO = Path(__file__).resolve().parents[1]


def flo_run(*args: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FLO_RUN, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(source, view): `view` shows `source` read-only, even to root; fill `source` first."""
    source, view = tmp_path / "ro-source", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(view)],
                             capture_output=True, text=True).returncode == 0
    if mounted and _writable(view):  # an old kernel binds read-write despite `ro`
        subprocess.run(["umount", str(view)], check=True)
        mounted = False
    immutable = False
    if not mounted:
        view.rmdir()
        view = source
        immutable = subprocess.run(["chattr", "+i", str(view)],
                                   capture_output=True).returncode == 0
        if not immutable or _writable(view):
            if immutable:
                subprocess.run(["chattr", "-i", str(view)], check=True)
            pytest.skip("cannot make a folder read-only for root here: neither a read-only "
                        "bind mount (needs CAP_SYS_ADMIN) nor chattr +i worked")
    try:
        yield source, view
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(view)], check=True)
        if immutable:
            subprocess.run(["chattr", "-i", str(view)], check=True)


# ----- damaged cached environments -----


@pytest.mark.slow
@needs_pyenv
def test_damaged_cached_env_is_rebuilt_and_says_so(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0", "tabulate==0.9.0"])
    cache = tmp_path / "cache"
    [env] = api.build_environments(bp, cache).envs
    assert not env.from_cache
    warm = api.build_environments(bp, cache).envs[0]
    assert warm.from_cache and not any("damaged" in n for n in warm.notes), warm.notes

    shutil.rmtree(env.path / "lib")  # what a tmp cleaner does to an old folder
    [rebuilt] = api.build_environments(bp, cache).envs
    assert not rebuilt.from_cache and rebuilt.path == env.path
    [note] = [n for n in rebuilt.notes if "damaged" in n]
    assert str(env.path) in note and "rebuilt" in note and "distributed" in note, note
    found = versions_in(rebuilt.path, "six", "tabulate", "ipykernel", "distributed")
    assert found["six"] == "1.16.0" and found["tabulate"] == "0.9.0" and found["distributed"]
    assert not list(cache.glob(".*.tmp-*")), "the damaged folder must not be left aside"

    # One file gone from an installed distribution (not only lib/ as a whole), through the CLI:
    # the note is printed, the env rebuilt and whole again.
    gone = rebuilt.path / "lib" / "python3.11" / "site-packages" / "six.py"
    gone.unlink()
    done = flo_run("env", str(bp), "--cache-dir", str(cache))
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "was damaged" in text and "1 installed file(s) are gone" in text, done.stdout
    assert gone.exists(), "the rebuilt environment has the file again"
    again = json.loads(flo_run("env", str(bp), "--cache-dir", str(cache), "--json").stdout)
    [entry] = again["envs"]
    assert entry["from_cache"] and not any("damaged" in n for n in entry["notes"]), entry


# ----- read-only folders -----


def test_read_only_cache_is_one_line_naming_it(tmp_path: Path,
                                               read_only: tuple[Path, Path]) -> None:
    _, view = read_only
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0"])
    cache = view / "envs"  # not there yet, and cannot be made
    line = one_line_error(flo_run("env", str(bp), "--cache-dir", str(cache)))
    assert f"the environment cache {cache} is not writable" in line, line
    assert "--cache-dir" in line and "$FLO_CACHE_DIR" in line, line

    line = one_line_error(flo_run("env", str(bp), env={"FLO_CACHE_DIR": str(view)}))
    assert f"the environment cache {view} is not writable" in line, line


@pytest.mark.slow
@needs_pyenv
def test_read_only_cache_still_serves_what_it_holds(tmp_path: Path,
                                                    read_only: tuple[Path, Path]) -> None:
    source, view = read_only
    if source == view:
        pytest.skip("needs a read-only bind mount over a cache filled beforehand")
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0"])
    [built] = api.build_environments(bp, source).envs
    [served] = api.build_environments(bp, view).envs
    assert served.from_cache and served.path == view / built.key, served
    assert (served.path / STAMP).exists() and not _writable(served.path)


def test_read_only_scratch_is_one_line_naming_it(tmp_path: Path,
                                                 read_only: tuple[Path, Path]) -> None:
    _, view = read_only
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0"])
    for argv, env in (([str(bp), "--execute", "--scratch-dir", str(view)], None),
                      ([str(bp), "--execute"], {"FLO_SCRATCH_DIR": str(view)}),
                      (["fetch", str(bp), "--scratch-dir", str(view)], None)):
        line = one_line_error(flo_run(*argv, env=env, timeout=120))
        assert f"the scratch folder {view} is not writable" in line, (argv, line)
        assert "--scratch-dir" in line and "$FLO_SCRATCH_DIR" in line, line


# ----- where the cache is -----


def test_default_cache_dir_follows_flo_then_scratch_then_xdg(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLO_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "flo-backpack" / "envs"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid per the spec: ignored
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "flo-backpack" / "envs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "flo-backpack" / "envs"
    assert default_cache_dir(tmp_path / "scratch") == tmp_path / "scratch" / "envs"
    monkeypatch.setenv("FLO_CACHE_DIR", str(tmp_path / "flo"))
    assert default_cache_dir(tmp_path / "scratch") == tmp_path / "flo"


def test_flo_run_env_uses_xdg_cache_home(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0"])
    xdg = tmp_path / "xdg"
    env = {"XDG_CACHE_HOME": str(xdg), "FLO_CACHE_DIR": ""}  # empty: not set
    done = flo_run("env", str(bp), "--list", "--json", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cache_dir"] == str(xdg / "flo-backpack" / "envs")
    chosen = tmp_path / "chosen"
    done = flo_run("env", str(bp), "--list", "--json", "--cache-dir", str(chosen), env=env,
                   timeout=120)
    assert json.loads(done.stdout)["cache_dir"] == str(chosen), "--cache-dir wins"
    help_text = " ".join(flo_run("env", "--help").stdout.split())
    assert "$XDG_CACHE_HOME/flo-backpack/envs" in help_text
