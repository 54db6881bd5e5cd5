"""data.yml drafting (rule 8) on hand-made event streams over real files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from auditor.emit.data import DataRules, draft_data, render_data_yml, sha256_file
from auditor.events import Access, Connect


def make(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_inputs_outputs_intermediates_secrets_and_urls(tmp_path: Path) -> None:
    nb = tmp_path / "nb"
    home = tmp_path / "home"
    csv = make(nb / "in.csv", b"a,b\n1,2\n")
    outside = make(tmp_path / "shared" / "big.bin", b"x" * 5000)
    out = str(nb / "result.png")
    tmp = make(nb / "tmp.parquet", b"pq")
    secret = make(home / ".aws" / "credentials", b"AKIA-SECRET")
    dotenv = make(nb / ".env", b"TOKEN=1")
    cache = make(home / ".cache" / "x" / "y.bin", b"c")
    env_file = make(tmp_path / "venv" / "lib" / "mod.py", b"")
    helper = make(nb / "helpers.py", b"")
    folder = [make(nb / "series" / f"s{i}.txt", bytes([i]) * (i + 1)) for i in range(3)]
    events = [
        Access(1, csv, "r", t=1, cell=0),
        Access(1, csv, "r", t=1.5, cell=4),
        Access(1, outside, "r", t=2, cell=1),
        Access(1, out, "w", t=3, cell=2),
        Access(1, tmp, "w", t=4, cell=2),
        Access(1, tmp, "r", t=5, cell=3),
        Access(1, secret, "r", t=6, cell=3),
        Access(1, dotenv, "r", t=6, cell=3),
        Access(1, cache, "r", t=7, cell=3),
        Access(1, env_file, "r", t=8, cell=3),
        Access(1, helper, "r", t=8, cell=0),
        Access(1, "/proc/self/status", "r", t=8, cell=0),
        Access(1, "/etc/hosts", "r", t=8, cell=0),
        Access(1, str(nb / "machinery.json"), "r", t=8, cell=None),  # outside cells: kernel
        Access(1, str(nb / "series"), "d", t=9, cell=5),
        *[Access(7, f, "r", t=10 + i, cell=5) for i, f in enumerate(folder)],
        Connect(1, "127.0.0.1:8000", t=11, cell=6, url="http://127.0.0.1:8000/remote.csv"),
    ]
    roles = {1: "manager", 7: "worker"}
    rules = DataRules(home=str(home), environ={})
    draft = draft_data(events, roles, owned=lambda p, r: p.startswith(str(tmp_path / "venv")),
                       notebook_dir=str(nb), cwd=str(nb), rules=rules, workflow=[helper])
    by_name = {e.name: e for e in draft.inputs}
    assert set(by_name) == {"in", "big", "series", "remote.csv"}
    assert by_name["in"].target_location == "in.csv"
    assert by_name["in"].first_cell == 0 and by_name["in"].read_by == "manager"
    assert by_name["in"].checksum == "sha256:" + hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert by_name["in"].expected_size == 8 and not by_name["in"].absolute
    assert by_name["big"].absolute and by_name["big"].target_location == outside
    assert by_name["series"].files == 3 and by_name["series"].expected_size == 1 + 2 + 3
    assert by_name["series"].read_by == "worker" and by_name["series"].target_location == "series"
    assert by_name["remote.csv"].source_type == "http" and by_name["remote.csv"].checksum is None
    assert draft.outputs == [out]
    assert draft.intermediates == [tmp]
    assert draft.secrets == sorted([secret, dotenv])
    text = render_data_yml(draft, "nb.ipynb")
    assert "AKIA" not in text and "credentials" not in text
    doc = yaml.safe_load(text)
    assert doc["default_profile"] == "local_data"
    assert len(doc["profiles"]["local_data"]["data"]) == 4


def test_partly_read_directory_stays_per_file(tmp_path: Path) -> None:
    files = [make(tmp_path / "d" / n, b"1") for n in ("a.csv", "b.csv", "README")]
    events = [Access(1, str(tmp_path / "d"), "d", t=1, cell=0),
              *[Access(1, f, "r", t=2, cell=0) for f in files[:2]]]
    draft = draft_data(events, {1: "manager"}, owned=lambda p, r: False,
                       notebook_dir=str(tmp_path), cwd=str(tmp_path),
                       rules=DataRules(home="/nonexistent", environ={}))
    assert sorted(e.target_location for e in draft.inputs) == ["d/a.csv", "d/b.csv"]


def test_vanished_file_is_listed_with_a_warning(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.csv")
    draft = draft_data([Access(1, gone, "r", t=1, cell=0)], {1: "manager"},
                       owned=lambda p, r: False, notebook_dir=str(tmp_path), cwd=str(tmp_path),
                       rules=DataRules(home="/nonexistent", environ={}))
    assert [e.name for e in draft.inputs] == ["gone"]
    assert draft.inputs[0].checksum is None
    assert any("gone.csv" in w for w in draft.warnings)


def test_hashing_streams_and_reports_progress(tmp_path: Path) -> None:
    path = make(tmp_path / "big", b"\0" * (3 * (1 << 20) + 5))
    seen: list[int] = []
    digest = sha256_file(path, lambda p, done, total: seen.append(done))
    assert digest == "sha256:" + hashlib.sha256(b"\0" * (3 * (1 << 20) + 5)).hexdigest()
    assert len(seen) == 4 and seen[-1] == 3 * (1 << 20) + 5
