"""No raw tracebacks: an exception nobody raised on purpose is caught once at each CLI's entry
point, printed as one line (what failed, where the traceback is, please report it) with exit
status 1, and its traceback is written to a crash log. Bad input stays exit 2.

The faults are real, not mocks of our code: a record whose session.json, or a backpack whose
audit/summary.json, is valid JSON of the right schema but of the wrong shape in a part its
model does not type reaches code that trusts that shape.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_envs import make_backpack, needs_pyenv

REPO = Path(__file__).resolve().parents[1]
FLO_AUDIT = [sys.executable, "-m", "auditor"]
FLO_RUN = [sys.executable, "-m", "provisioner.cli"]


def run(argv: list[str], env: dict[str, str], cwd: Path,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **env})


def crash_log(done: subprocess.CompletedProcess[str], prog: str, folder: Path) -> str:
    """Check the one-line report and return the log it names (which must be in `folder`)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith(f"{prog}: internal error in ") and "please report it" in line, line
    found = re.search(r"the traceback is in (\S+);", line)
    assert found, line
    log = Path(found.group(1))
    assert log.parent == folder and log.is_file(), (log, folder)
    return log.read_text()


def summary_backpack(root: Path, summary: object) -> Path:
    """A hand-made backpack whose audit/summary.json holds `summary`."""
    (root / "audit").mkdir(parents=True)
    (root / "software").mkdir()
    (root / "software" / "environment.yml").write_text(
        "name: t\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - six==1.16.0\n")
    (root / "audit" / "summary.json").write_text(json.dumps(summary))
    return root


def bad_pool_record(folder: Path) -> Path:
    """A record whose session.json lists its worker pool's processes as a number: the session
    model keeps `pool` as written, so derive fails in its own code (emit/sides.py)."""
    folder.mkdir()
    (folder / "session.json").write_text(json.dumps(
        {"schema": 1, "backend": "hooks", "kernel": {}, "notebook": str(folder / "nb.ipynb"),
         "status": "complete", "pool": {"processes": 5}}))
    return folder


def test_flo_audit_internal_error_is_one_line_and_a_log(tmp_path: Path) -> None:
    record = bad_pool_record(tmp_path / "record")
    derive = [*FLO_AUDIT, "derive", str(record), "-o", str(tmp_path / "out")]
    state = tmp_path / "state"
    done = run(derive, {"XDG_STATE_HOME": str(state)}, tmp_path)
    text = crash_log(done, "flo-audit", state / "flo-backpack" / "crashes")
    assert "TypeError" in done.stderr, done.stderr
    assert text.startswith(f"command: flo-audit derive {record} -o {tmp_path / 'out'}\n"), \
        text[:200]
    assert "Traceback (most recent call last)" in text and "TypeError" in text, text

    # No writable state folder (XDG_STATE_HOME under a file): the log goes to the tmp folder.
    (tmp_path / "a-file").write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = run(derive, {"XDG_STATE_HOME": str(tmp_path / "a-file" / "state"),
                        "TMPDIR": str(tmp)}, tmp_path)
    assert "Traceback (most recent call last)" in crash_log(
        done, "flo-audit", tmp / "flo-backpack-crashes")

    # Bad input is still a FloError: exit 2, one line, no crash log; a summary.json of the
    # wrong shape is bad input too (diff reads it through the summary model).
    good = summary_backpack(tmp_path / "good", {"schema": 1, "status": "complete"})
    bad = summary_backpack(tmp_path / "bad", [1])
    for argv in ([*FLO_AUDIT, "diff", str(good), str(tmp_path / "missing")],
                 [*FLO_AUDIT, "diff", str(good), str(bad)]):
        done = run(argv, {"XDG_STATE_HOME": str(state)}, tmp_path)
        assert done.returncode == 2 and "internal error" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert str(bad / "audit" / "summary.json") in done.stderr, done.stderr
    assert len(list((state / "flo-backpack" / "crashes").iterdir())) == 1


@pytest.mark.slow
@needs_pyenv
def test_flo_run_internal_error_is_one_line_and_a_log(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0"])
    (bp / "audit").mkdir()
    # A summary of the right schema whose data part lists outputs as a number, not a list:
    # the summary model does not type that deep, so flo-run fails in its own code.
    (bp / "audit" / "summary.json").write_text(json.dumps(
        {"schema": 1, "status": "complete", "notebook": "/p/nb.ipynb", "data": {"outputs": 5}}))
    state, out = tmp_path / "state", tmp_path / "out.ipynb"
    done = run([*FLO_RUN, str(bp), "--execute", "-o", str(out), "--cache-dir",
                str(tmp_path / "cache"), "--scratch-dir", str(tmp_path / "scratch")],
               {"XDG_STATE_HOME": str(state)}, tmp_path)
    text = crash_log(done, "flo-run", state / "flo-backpack" / "crashes")
    assert "Traceback (most recent call last)" in text and "TypeError" in text, text
    assert not out.exists(), "nothing ran, so no executed notebook"
    assert not list((tmp_path / "scratch").glob("run-*")), "the run folder is removed"

    # The subcommands share the entry point: bad input there is still exit 2.
    done = run([*FLO_RUN, "validate", str(tmp_path / "missing")],
               {"XDG_STATE_HOME": str(state)}, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


def test_a_reader_that_goes_away_is_no_internal_error(tmp_path):
    """`flo-audit diff A B --format json | head -1`: the pipe closes under a long output; the
    command ends quietly with the status of a program ended by SIGPIPE, and logs no crash."""
    pins = "".join(f"      - pkg{i}==1.0\n" for i in range(5000))
    (tmp_path / "a.yml").write_text(f"name: a\ndependencies:\n  - python=3.11.7\n  - pip:\n{pins}")
    (tmp_path / "b.yml").write_text("name: b\ndependencies:\n  - python=3.11.7\n")
    state = tmp_path / "state"
    proc = subprocess.Popen([*FLO_AUDIT, "diff", "a.yml", "b.yml", "--format", "json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO),
                                 "XDG_STATE_HOME": str(state)})
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()  # the reader goes, as `head -1` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, stderr
    assert stderr == "" and not state.exists()
