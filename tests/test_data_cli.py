"""`flo-run fetch` and `flo-run verify` through the command line: exit codes, one-line errors,
--json, the default run folder under --scratch-dir."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_data_fetch import PAYLOAD, FileServer, _serve, all_files, backpack_with, sha256

from provisioner.cli import main
from provisioner.data import default_run_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def http() -> Iterator[tuple[FileServer, str]]:
    yield from _serve(ranges=True)


def _backpack(tmp_path: Path, base: str, checksum: str) -> Path:
    return backpack_with(tmp_path / "bp", [
        {"name": "table", "source_type": "backpack", "source": "data/t.csv",
         "target_location": "t.csv", "checksum": sha256(b"a,b\n")},
        {"name": "remote", "source_type": "http", "source": f"{base}/r.bin",
         "target_location": "r.bin", "expected_size": len(PAYLOAD), "checksum": checksum},
    ], files={"data/t.csv": b"a,b\n"})


def test_fetch_then_verify_json(tmp_path: Path, http: tuple[FileServer, str],
                                capsys: pytest.CaptureFixture[str]) -> None:
    server, base = http
    server.files["/r.bin"] = PAYLOAD
    bp = _backpack(tmp_path, base, sha256(PAYLOAD))
    run = tmp_path / "run"
    assert main(["fetch", str(bp), "--run-dir", str(run), "--json"]) == 0
    fetched = json.loads(capsys.readouterr().out)
    assert fetched["ok"] and [e["status"] for e in fetched["entries"]] == ["fetched", "fetched"]
    assert fetched["bytes"] == len(PAYLOAD) + 4 and fetched["profile"] == "local"

    assert main(["verify", str(bp), "--run-dir", str(run), "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert [e["status"] for e in checked["entries"]] == ["verified", "verified"]

    (run / "t.csv").write_bytes(b"a,c\n")
    assert main(["verify", str(bp), "--run-dir", str(run)]) == 2
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and "table" in out


def test_fetch_failure_is_one_line_exit_2(tmp_path: Path, http: tuple[FileServer, str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    server, base = http
    server.files["/r.bin"] = PAYLOAD
    bp = _backpack(tmp_path, base, sha256(b"not it"))
    run = tmp_path / "run"
    assert main(["fetch", str(bp), "--run-dir", str(run), "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"flo-run: data entry 'remote' (http {base}/r.bin): expected checksum "
                   f"{sha256(b'not it')}, found {sha256(PAYLOAD)}"]
    assert all_files(run) <= {"t.csv"}  # no half file, no .part


def test_default_run_dir_under_scratch_and_console_script(tmp_path: Path,
                                                          http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/r.bin"] = PAYLOAD
    bp = _backpack(tmp_path, base, sha256(PAYLOAD))
    scratch = tmp_path / "scratch"
    exe = Path(sys.executable).parent / "flo-run"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "provisioner.cli"]
    done = subprocess.run([*argv, "fetch", str(bp), "--scratch-dir", str(scratch), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    run = Path(json.loads(done.stdout)["run_dir"])
    assert run == default_run_dir(bp, scratch) and run.parent == scratch / "runs"
    assert (run / "r.bin").read_bytes() == PAYLOAD


def test_invalid_data_yml_stops_before_anything(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bp = backpack_with(tmp_path / "bp", [{"name": "x", "source_type": "ftp",
                                          "source": "ftp://host/x", "target_location": "x"}])
    assert main(["fetch", str(bp), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "source_type" in err and "ftp" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
