"""End to end: the data_inputs fixture audited with the real CLI under strace, with HOME set to
a temporary folder holding a fake secret. The draft must list exactly the inputs the notebook
read (sizes and sha256 recomputed here), the URL and the folder; never the intermediate, the
output or the secret, whose bytes must appear in no file of the backpack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import AUDIT_TIMEOUT_S, FIXTURES, Scenario, flo_audit_argv
from rich.console import Console

from auditor.backpack.checksums import directory_checksum, file_checksum
from auditor.emit.data.rules import SECRET_NOTE
from auditor.summary_view import render_data

pytestmark = pytest.mark.slow

CASE = "data_inputs"
MARKER = f"FLOMARKER-{uuid.uuid4().hex}"
BUNDLE_LIMIT = "1k"  # measurements.csv, worker_input.txt and series/ fit; the rest does not


@dataclass
class DataRun:
    workdir: Path
    home: Path
    out: Path
    proc: subprocess.CompletedProcess[str]
    expect: dict[str, Any]

    def describe(self) -> str:
        return (f"exit {self.proc.returncode}\n--- stdout\n{self.proc.stdout[-3000:]}\n"
                f"--- stderr\n{self.proc.stderr[-3000:]}")

    @property
    def data_yml(self) -> dict[str, Any]:
        return yaml.safe_load((self.out / "data/data.yml").read_text(encoding="utf-8"))

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        """data.yml entries by target_location (URLs by their last path segment)."""
        return {e["target_location"]: e for e in self.data_yml["profiles"]["local_data"]["data"]}

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.out / "audit/summary.json").read_text(encoding="utf-8"))


def run_cli(argv: list[str], cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # The CLI hands its environment to the kernel: HOME here is the kernel's HOME.
    env = {**os.environ, "HOME": str(home)}
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=AUDIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flo-audit did not finish within {AUDIT_TIMEOUT_S} s: {' '.join(argv)}")


@pytest.fixture(scope="module")
def data_run(tmp_path_factory: pytest.TempPathFactory) -> DataRun:
    base = tmp_path_factory.mktemp("data-audit")
    workdir = base / CASE
    shutil.copytree(FIXTURES / CASE, workdir)
    home = tmp_path_factory.mktemp("home")
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text(
        f"[default]\naws_access_key_id = {MARKER}\naws_secret_access_key = {MARKER}-key\n")
    out = base / "backpack"
    argv = [*flo_audit_argv(), str(workdir / f"{CASE}.ipynb"), "-o", str(out),
            "--backend", "strace", "--bundle-data", "--max-bundle-size", BUNDLE_LIMIT,
            "--json"]
    proc = run_cli(argv, base, home)
    run = DataRun(workdir, home, out, proc, Scenario(CASE).expect["data"])
    assert proc.returncode == 0, run.describe()
    return run


def test_inputs_are_exactly_what_the_notebook_read(data_run: DataRun) -> None:
    entries = data_run.entries
    expected = set(data_run.expect["inputs"]) | set(data_run.expect["urls"])
    assert set(entries) == expected, yaml.safe_dump(data_run.data_yml)
    for target, role in data_run.expect["inputs"].items():
        entry, original = entries[target], data_run.workdir / target
        assert entry["read_by"] == role, entry
        if original.is_dir():
            assert entry["files"] == data_run.expect["folders"][target], entry
            assert entry["checksum"] == directory_checksum(original), entry
            assert entry["expected_size"] == sum(p.stat().st_size for p in original.iterdir())
        else:
            assert entry["checksum"] == file_checksum(original), entry
            assert entry["expected_size"] == original.stat().st_size, entry
            assert "files" not in entry


def test_cells_and_roles(data_run: DataRun) -> None:
    entries = data_run.entries
    # Cell indexes count the markdown cell: the CSV is read in notebook cell 2.
    assert entries["measurements.csv"]["first_cell"] == 2
    assert entries["grid.h5"]["first_cell"] == 3  # C-level open: only strace sees it
    assert entries["catalog.sqlite"]["first_cell"] == 4
    assert entries["worker_input.txt"]["read_by"] == "worker"


def test_url_the_run_served_is_reported_not_fetched(data_run: DataRun) -> None:
    """The notebook's own loopback server: its URL exists only while the notebook runs."""
    assert "remote.csv" not in data_run.entries
    served = [u["url"] for u in data_run.summary["data"]["served_urls"]]
    assert [u.rsplit("/", 1)[-1] for u in served] == data_run.expect["served_urls"], served
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/remote\.csv", served[0]), served


def test_intermediates_outputs_and_secret_are_not_inputs(data_run: DataRun) -> None:
    data = data_run.summary["data"]
    assert data["intermediates"] == [str(data_run.workdir / "derived.csv")]
    assert data["outputs"] == [str(data_run.workdir / "report.txt")]
    secret = str(data_run.home / ".aws" / "credentials")
    assert data["secrets"] == [{"path": secret, "note": SECRET_NOTE}]
    sources = {e["source"] for e in data["inputs"]}
    text = (data_run.out / "data/data.yml").read_text(encoding="utf-8")
    assert secret not in sources and "credentials" not in text
    assert "derived.csv" not in text and "report.txt" not in text
    assert data["absolute_inputs"] == []  # every input lies in the notebook's folder
    assert json.loads(data_run.proc.stdout)["data"]["secrets"] == data["secrets"]


def test_secret_bytes_appear_nowhere_in_the_backpack(data_run: DataRun) -> None:
    marker = MARKER.encode()
    checked = 0
    for path in data_run.out.rglob("*"):
        if path.is_file():
            assert marker not in path.read_bytes(), f"the secret's content leaked into {path}"
            checked += 1
    assert checked >= 8 and (data_run.out / "audit/trace.strace").is_file()
    assert MARKER not in data_run.proc.stdout + data_run.proc.stderr


def test_bundle_copies_what_fits_and_warns_about_the_rest(data_run: DataRun) -> None:
    entries = data_run.entries
    bundled = {"measurements.csv", "worker_input.txt", "series"}
    for target in bundled:
        assert entries[target]["source_type"] == "backpack", entries[target]
        assert entries[target]["source"] == f"data/{target}"
    for name in ("measurements.csv", "worker_input.txt", "series/part-0.txt",
                 "series/part-2.txt"):
        copy = data_run.out / "data" / name
        assert copy.read_bytes() == (data_run.workdir / name).read_bytes(), name
    warnings = data_run.summary["warnings"]
    for target in ("grid.h5", "signal.f64", "catalog.sqlite"):
        assert entries[target]["source_type"] == "fs"
        assert entries[target]["source"] == str(data_run.workdir / target)
        assert not (data_run.out / "data" / target).exists()
        assert any("--max-bundle-size" in w and target.split(".")[0] in w for w in warnings)


def test_rederive_from_the_record_gives_the_same_draft(data_run: DataRun,
                                                       tmp_path: Path) -> None:
    """derive reads the kernel's HOME from the record: the secret is still recognised under
    another HOME, and the inputs (not bundled this time) keep their checksums."""
    proc = run_cli([*flo_audit_argv(), "derive", str(data_run.out), "-o", str(tmp_path / "bp"),
                    "--json"], tmp_path, tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)["data"]
    again = {e["target_location"]: e for e in data["inputs"]}
    assert {t: e.get("checksum") for t, e in again.items()} == {
        t: e.get("checksum") for t, e in data_run.entries.items()}
    assert {e["source_type"] for e in again.values()} == {"fs"}  # the served URL stays out
    assert data["served_urls"] == data_run.summary["data"]["served_urls"]
    assert [s["path"] for s in data["secrets"]] == [str(data_run.home / ".aws/credentials")]


def test_terminal_summary_flags_the_secret(data_run: DataRun) -> None:
    console = Console(record=True, width=200)
    render_data(data_run.summary, console)
    text = console.export_text()
    assert f"{data_run.home / '.aws' / 'credentials'}: {SECRET_NOTE}" in text
    assert "worker_input.txt" in text and "1 outputs, 1 intermediates" in text


def test_checksum_remote_downloads_what_the_notebook_fetched(tmp_path: Path) -> None:
    """--checksum-remote through the CLI: the test serves the file (still up when the audit
    hashes it); the hooks backend is enough to see the URL."""
    import functools
    import hashlib
    import http.server
    import threading

    import nbformat

    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(200_000)
    (served / "table.bin").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/table.bin"
    work = tmp_path / "nb"
    work.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(
        f"import urllib.request\nsize = len(urllib.request.urlopen({url!r}).read())")]
    nbformat.write(notebook, work / "fetch.ipynb")
    try:
        proc = run_cli([*flo_audit_argv(), str(work / "fetch.ipynb"), "-o", str(tmp_path / "bp"),
                        "--backend", "hooks", "--checksum-remote", "--json"], tmp_path, tmp_path)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    inputs = json.loads(proc.stdout)["data"]["inputs"]
    assert [(e["source"], e["expected_size"], e["checksum"]) for e in inputs] == [
        (url, len(payload), "sha256:" + hashlib.sha256(payload).hexdigest())]


def test_terminal_summary_shows_the_first_inputs_and_counts_the_rest() -> None:
    """A notebook that reads thousands of files gets a table of the first ones and one line
    for the rest, not a table of thousands of rows (data.yml lists them all)."""
    from auditor.summary_view import INPUTS_SHOWN

    inputs = [{"name": f"f{i:05d}", "target_location": f"files/f{i:05d}.txt",
               "expected_size": 1000, "read_by": "manager", "first_cell": 1,
               "source_type": "fs"} for i in range(INPUTS_SHOWN + 980)]
    console = Console(record=True, width=200)
    render_data({"data": {"file": "data/data.yml", "inputs": inputs}}, console)
    text = console.export_text()
    assert f"files/f{INPUTS_SHOWN - 1:05d}.txt" in text
    assert f"files/f{INPUTS_SHOWN:05d}.txt" not in text
    assert "... and 980 more inputs (980.0 kB), all in data/data.yml" in text
