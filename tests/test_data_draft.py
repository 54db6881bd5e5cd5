"""data.yml drafting (rule 8) on hand-made event streams over real files; checksums; bundling."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from auditor.backpack.checksums import directory_checksum, directory_files
from auditor.common.errors import UsageError
from auditor.emit.data.collect import DataRules, draft_data
from auditor.emit.data.hashing import sha256_file, sha256_folder
from auditor.emit.data.report import data_summary
from auditor.emit.data.rules import SECRET_NOTE, normalize_url
from auditor.emit.data.yml import bundle, parse_size, render_data_yml
from auditor.events import Access, Connect
from auditor.roles import Roles


def make(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def draft(events: list, tmp_path: Path, roles: object = None, **kw: object):
    kw.setdefault("owned", lambda p, r: False)
    kw.setdefault("rules", DataRules(home="/nonexistent", environ={}))
    return draft_data(events, roles or {1: "manager"}, notebook_dir=str(tmp_path),
                      cwd=str(tmp_path), **kw)


def test_inputs_outputs_intermediates_secrets_and_urls(tmp_path: Path) -> None:
    nb = tmp_path / "nb"
    home = tmp_path / "home"
    csv = make(nb / "in.csv", b"a,b\n1,2\n")
    outside = make(tmp_path / "shared" / "big.bin", b"x" * 5000)
    out = make(nb / "result.png", b"png")
    tmp = make(nb / "tmp.parquet", b"pq")
    secret = make(home / ".aws" / "credentials", b"AKIA-SECRET")
    gcloud = make(home / ".config" / "gcloud" / "adc.json", b"{}")  # a secret under ~/.config
    dotenv = make(nb / ".env", b"TOKEN=1")
    cache = make(home / ".cache" / "x" / "y.bin", b"c")
    env_file = make(tmp_path / "venv" / "lib" / "mod.py", b"")
    cert = make(tmp_path / "venv" / "certifi" / "cacert.pem", b"")  # owned: not a secret
    helper = make(nb / "helpers.py", b"")
    folder = [make(nb / "series" / f"s{i}.txt", bytes([65 + i]) * (i + 1)) for i in range(3)]
    events = [
        Access(1, csv, "r", t=1, cell=0),
        Access(1, csv, "r", t=1.5, cell=4),
        Access(1, outside, "r", t=2, cell=1),
        Access(1, out, "w", t=3, cell=2),
        Access(1, tmp, "w", t=4, cell=2),
        Access(1, tmp, "r", t=5, cell=3),
        Access(1, secret, "r", t=6, cell=3),
        Access(1, gcloud, "r", t=6, cell=3),
        Access(1, dotenv, "r", t=6, cell=3),
        Access(1, cache, "r", t=7, cell=3),
        Access(1, env_file, "r", t=8, cell=3),
        Access(1, cert, "r", t=8, cell=3),
        Access(1, helper, "r", t=8, cell=0),
        Access(1, "/proc/self/status", "r", t=8, cell=0),
        Access(1, "/etc/hosts", "r", t=8, cell=0),
        Access(1, str(nb / "machinery.json"), "r", t=8, cell=None),  # outside cells: kernel
        Access(1, str(nb / "series"), "d", t=9, cell=5),
        *[Access(7, f, "r", t=10 + i, cell=5) for i, f in enumerate(folder)],
        Connect(1, "http://127.0.0.1:8000/remote.csv", t=11, cell=6,
                url="http://127.0.0.1:8000/remote.csv"),
        Connect(1, "127.0.0.1:8000", t=11.1, cell=6),  # the URL's own socket: local anyway
        Connect(1, "93.184.216.34:443", t=12, cell=6, host="example.org"),
        Connect(7, "10.1.2.3:5432", t=13, cell=6),
    ]
    roles = {1: "manager", 7: "worker"}
    result = draft_data(events, roles, owned=lambda p, r: p.startswith(str(tmp_path / "venv")),
                        notebook_dir=str(nb), cwd=str(nb),
                        rules=DataRules(home=str(home), environ={}), workflow=[helper])
    by_name = {e.name: e for e in result.inputs}
    assert set(by_name) == {"in", "big", "series", "remote.csv"}
    assert by_name["in"].target_location == "in.csv" and by_name["in"].source == csv
    assert by_name["in"].first_cell == 0 and by_name["in"].read_by == "manager"
    assert by_name["in"].checksum == sha(b"a,b\n1,2\n")
    assert by_name["in"].expected_size == 8 and not by_name["in"].absolute
    # Beside the notebook's folder (named absolutely, as abspath('../shared') would): copied to
    # the same place relative to the notebook, so not flagged as an absolute input.
    assert not by_name["big"].absolute and by_name["big"].target_location == "../shared/big.bin"
    assert by_name["big"].source == outside and result.absolute == []
    series = by_name["series"]
    assert series.files == 3 and series.expected_size == 1 + 2 + 3
    assert series.read_by == "worker" and series.target_location == "series"
    assert series.checksum == directory_checksum(nb / "series")
    assert by_name["remote.csv"].source_type == "http" and by_name["remote.csv"].checksum is None
    assert result.outputs == [out]
    assert result.intermediates == [tmp]
    assert result.secrets == sorted([secret, gcloud, dotenv])
    assert result.remote == ["10.1.2.3:5432", "example.org:443 (93.184.216.34)"]
    text = render_data_yml(result, "nb.ipynb")
    assert "AKIA" not in text and "credentials" not in text
    doc = yaml.safe_load(text)
    assert doc["default_profile"] == "local_data"
    assert len(doc["profiles"]["local_data"]["data"]) == 4
    summary = data_summary(result)
    assert {"path": secret, "note": SECRET_NOTE} in summary["secrets"]
    assert summary["absolute_inputs"] == []


def test_named_inputs_far_from_the_notebook_are_used_in_place(tmp_path: Path) -> None:
    """Relative names keep their place ('../../data/a.csv'); an absolute name counts as the
    project's only a couple of folders up; further away it is used in place and flagged."""
    nb = tmp_path / "proj" / "analysis" / "notebooks"
    named = make(tmp_path / "proj" / "data" / "a.csv", b"a")
    near = make(tmp_path / "proj" / "analysis" / "src" / "m.py", b"m")
    far = make(tmp_path / "elsewhere" / "deep" / "b.csv", b"b")
    result = draft([Access(1, named, "r", t=1, cell=0, given="../../data/a.csv"),
                    Access(1, near, "r", t=2, cell=0), Access(1, far, "r", t=3, cell=0)],
                   nb)
    targets = {e.name: (e.target_location, e.absolute) for e in result.inputs}
    assert targets == {"a": ("../../data/a.csv", False), "m": ("../src/m.py", False),
                       "b": (far, True)}
    assert result.absolute == [far]


def test_a_project_in_tmp_keeps_its_outputs(tmp_path: Path) -> None:
    """pytest's tmp_path is under /tmp, like many evaluation folders: files the notebook
    writes beside its folder ('../results') are outputs; far-away temp files are scratch."""
    nb = tmp_path / "a" / "proj" / "notebooks"
    result_file = make(tmp_path / "a" / "proj" / "results" / "r.txt", b"r")
    far = make(tmp_path / "scratch-space" / "w.bin", b"w")
    result = draft([Access(1, result_file, "w", t=1, cell=0), Access(1, far, "w", t=2, cell=0)],
                   nb)
    assert result.outputs == [result_file] and result.scratch == 1


def test_a_zarr_store_read_by_key_is_one_folder_entry(tmp_path: Path) -> None:
    """zarr opens metadata and chunks by key, never listing: the whole store is one entry
    (chunks this run skipped included), named as the notebook named the store."""
    store = tmp_path / "precip.zarr"
    meta = [make(store / "zarr.json", b"{}"), make(store / "rain" / "zarr.json", b"{}")]
    chunks = [make(store / "rain" / "c" / "0" / str(i), bytes([i]) * 10) for i in range(3)]
    events = [Access(1, p, "r", t=i, cell=2, given=os.path.relpath(p, tmp_path))
              for i, p in enumerate([*meta, *chunks[:2]])]
    result = draft(events, tmp_path)
    [entry] = result.inputs
    assert entry.target_location == "precip.zarr" and entry.files == 5
    assert entry.checksum == directory_checksum(store)


def test_partly_read_directory_stays_per_file(tmp_path: Path) -> None:
    files = [make(tmp_path / "d" / n, b"1") for n in ("a.csv", "b.csv", "README")]
    events = [Access(1, str(tmp_path / "d"), "d", t=1, cell=0),
              *[Access(1, f, "r", t=2, cell=0) for f in files[:2]]]
    result = draft(events, tmp_path)
    assert sorted(e.target_location for e in result.inputs) == ["d/a.csv", "d/b.csv"]


def test_nested_folders_become_one_entry(tmp_path: Path) -> None:
    files = [make(tmp_path / "runs" / d / "x.txt", d.encode()) for d in ("r1", "r2")]
    events = [Access(1, str(tmp_path / "runs"), "d", t=1, cell=0),
              Access(1, str(tmp_path / "runs" / "r1"), "d", t=1.1, cell=0),
              *[Access(1, f, "r", t=2, cell=0) for f in files]]
    result = draft(events, tmp_path)
    assert [(e.name, e.files) for e in result.inputs] == [("runs", 2)]


def test_folder_checksum_is_the_documented_stream(tmp_path: Path) -> None:
    make(tmp_path / "f" / "b.txt", b"bee")
    make(tmp_path / "f" / "a" / "z.bin", b"")
    expected = hashlib.sha256(b"a/z.bin\x000\x00" + b"b.txt\x003\x00bee").hexdigest()
    assert sha256_folder(str(tmp_path / "f")) == ("sha256:" + expected, 2, 3)
    assert [rel for rel, _ in directory_files(tmp_path / "f")] == ["a/z.bin", "b.txt"]


def test_vanished_file_is_listed_with_a_warning(tmp_path: Path) -> None:
    gone = str(tmp_path / "gone.csv")
    result = draft([Access(1, gone, "r", t=1, cell=0)], tmp_path)
    assert [e.name for e in result.inputs] == ["gone"]
    assert result.inputs[0].checksum is None and result.inputs[0].expected_size is None
    assert any("gone.csv" in w for w in result.warnings)


def test_tools_count_as_their_caller_and_machinery_does_not(tmp_path: Path) -> None:
    archive = make(tmp_path / "in.csv.gz", b"gz")
    boot = make(tmp_path / "boot.json", b"{}")
    roles = Roles(kernel_pid=1, role={1: "manager", 5: "worker", 9: "tool"}, parent={9: 5})
    result = draft([Access(9, archive, "r", t=1, cell=None),
                    Access(1, boot, "r", t=1, cell=None)], tmp_path, roles)
    assert [(e.name, e.read_by) for e in result.inputs] == [("in", "worker")]


def test_archive_gets_post_fetch_only_when_its_contents_were_read(tmp_path: Path) -> None:
    archive = make(tmp_path / "raw.tar.gz", b"tar")
    extracted = make(tmp_path / "raw" / "a.csv", b"1")
    alone = draft([Access(1, archive, "r", t=1, cell=0)], tmp_path)
    assert alone.inputs[0].post_fetch is None
    used = draft([Access(1, archive, "r", t=1, cell=0), Access(1, extracted, "w", t=2, cell=0),
                  Access(1, extracted, "r", t=3, cell=1)], tmp_path)
    assert [e.post_fetch for e in used.inputs] == [{"operation": "untar"}]
    assert used.intermediates == [extracted]


def test_updated_in_place_is_an_output_and_journals_are_scratch(tmp_path: Path) -> None:
    db = make(tmp_path / "cache.sqlite", b"db")
    journal = str(tmp_path / "cache.sqlite-journal")  # made and removed by sqlite
    result = draft([Access(1, db, "rw", t=1, cell=0), Access(1, journal, "rw", t=2, cell=0)],
                   tmp_path, started=os.stat(db).st_mtime - 1)
    assert result.inputs == [] and result.outputs == [db] and result.scratch == 1
    untouched = draft([Access(1, db, "rw", t=1, cell=0)], tmp_path,
                      started=os.stat(db).st_mtime + 1)
    assert [e.name for e in untouched.inputs] == ["cache"]


def test_a_file_probed_for_update_then_recreated_is_produced(tmp_path: Path) -> None:
    """libhdf5's h5py.File(p, 'w') on an existing file: O_RDWR probe, O_TRUNC, then read
    back. The old content was never read, so the file is an intermediate, as it is on a first
    audit when it did not exist yet; a real read before the rewrite stays an input."""
    h5 = make(tmp_path / "out.h5", b"old")
    again = draft([Access(1, h5, "rw", t=1, cell=0), Access(1, h5, "w", t=2, cell=0),
                   Access(1, h5, "r", t=3, cell=1)], tmp_path)
    assert again.inputs == [] and again.intermediates == [h5]
    only_written = draft([Access(1, h5, "rw", t=1, cell=0), Access(1, h5, "w", t=2, cell=0)],
                         tmp_path)
    assert only_written.inputs == [] and only_written.outputs == [h5]
    read_first = draft([Access(1, h5, "r", t=1, cell=0), Access(1, h5, "w", t=2, cell=0)],
                       tmp_path)
    assert [e.name for e in read_first.inputs] == ["out"]
    assert any("read in cell 0, then written by the run in cell 0" in w
               for w in read_first.warnings), read_first.warnings


def test_an_input_a_later_cell_overwrote_names_both_cells(tmp_path: Path) -> None:
    """A folder globbed in cell 1 and rewritten by cell 3 (an audit in a folder an earlier run
    left dirty): each file's warning names both cells and says to audit in a clean folder."""
    parts = [make(tmp_path / "series" / f"part-{i}.txt", b"%d" % i) for i in range(2)]
    events = [Access(1, str(tmp_path / "series"), "d", t=1, cell=1)]
    events += [Access(1, p, "r", t=2, cell=1) for p in parts]
    events += [Access(1, p, "w", t=3, cell=3) for p in parts]
    result = draft(events, tmp_path)
    assert [e.name for e in result.inputs] == ["series"]
    for path in parts:
        warning = next((w for w in result.warnings if w.startswith(path)), "")
        assert "read in cell 1" in warning and "in cell 3" in warning, result.warnings
        assert "clean copy of the notebook's folder" in warning, warning


def test_no_input_still_renders_an_empty_list(tmp_path: Path) -> None:
    text = render_data_yml(draft([], tmp_path), "nb.ipynb")
    assert "read no input" in text
    assert yaml.safe_load(text)["profiles"]["local_data"]["data"] == []


def test_urls_are_normalised_and_deduplicated() -> None:
    assert normalize_url("HTTP://Example.ORG:80/a.csv#x") == "http://example.org/a.csv"
    assert normalize_url("https://h:8443/p?q=1") == "https://h:8443/p?q=1"
    assert normalize_url("not a url") is None


def test_hashing_streams_and_reports_progress(tmp_path: Path) -> None:
    data = b"\0" * (3 * (1 << 20) + 5)
    path = make(tmp_path / "big", data)
    seen: list[int] = []
    assert sha256_file(path, lambda p, done, total: seen.append(done)) == sha(data)
    assert len(seen) == 4 and seen[-1] == len(data)


def test_huge_input_is_hashed_in_small_memory(tmp_path: Path) -> None:
    size = 200 * 10**6
    path = tmp_path / "huge.bin"
    with open(path, "wb") as out:  # sparse: costs no disk
        out.truncate(size)
    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    calls = []

    def progress(what: str, done: int, total: int) -> None:
        calls.append(done)
        peak[0] = max(peak[0], process.memory_info().rss)

    result = draft([Access(1, str(path), "r", t=1, cell=0)], tmp_path, progress=progress)
    assert result.inputs[0].expected_size == size
    assert calls[-1] == size and len(calls) > 100  # a live progress display can follow
    assert peak[0] - before < 50 * 2**20, f"RSS grew by {(peak[0] - before) >> 20} MiB"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    served = tmp_path / "served"
    payload = os.urandom(3 * (1 << 20) + 17)
    make(served / "blob.bin", payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", payload
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_checksum_remote_downloads_once_and_removes_it(
        tmp_path: Path, http_server: tuple[str, bytes]) -> None:
    base, payload = http_server
    url = f"{base}/blob.bin"
    events = [Connect(1, url, t=1, cell=0, url=url), Connect(1, url, t=2, cell=0, url=url),
              Connect(1, f"{base}/missing.bin", t=3, cell=0, url=f"{base}/missing.bin")]
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))
    result = draft(events, tmp_path, checksum_remote=True)
    by_name = {e.name: e for e in result.inputs}
    assert by_name["blob.bin"].checksum == sha(payload)
    assert by_name["blob.bin"].expected_size == len(payload)
    assert by_name["missing.bin"].checksum is None
    assert any("missing.bin" in w and "404" in w for w in result.warnings)
    left = {n for n in set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - before
            if n.startswith("flo-fetch-")}
    assert not left


def test_bundle_copies_inputs_under_the_notebook_and_respects_the_limit(tmp_path: Path) -> None:
    nb = tmp_path / "nb"
    small = make(nb / "small.csv", b"1,2\n")
    big = make(nb / "big.bin", b"x" * 4000)
    outside = make(tmp_path / "elsewhere.csv", b"o")
    series = [make(nb / "series" / f"{i}.txt", b"s") for i in range(2)]
    events = [Access(1, p, "r", t=i, cell=0) for i, p in enumerate([small, big, outside])]
    events += [Access(1, str(nb / "series"), "d", t=5, cell=1),
               *[Access(1, p, "r", t=6, cell=1) for p in series]]
    result = draft_data(events, {1: "manager"}, owned=lambda p, r: False, notebook_dir=str(nb),
                        cwd=str(nb), rules=DataRules(home="/nonexistent", environ={}))
    copies, warnings = bundle(result, nb, parse_size("1k"))
    by_name = {e.name: e for e in result.inputs}
    assert sorted(rel for _, rel in copies) == ["data/_up/elsewhere.csv", "data/series/0.txt",
                                                "data/series/1.txt", "data/small.csv"]
    assert (by_name["small"].source_type, by_name["small"].source) == ("backpack",
                                                                       "data/small.csv")
    assert by_name["series"].source == "data/series" and by_name["series"].files == 2
    assert by_name["big"].source_type == "fs"
    # beside the notebook's folder: bundled too, still fetched to '../elsewhere.csv'
    assert by_name["elsewhere"].source == "data/_up/elsewhere.csv"
    assert by_name["elsewhere"].target_location == "../elsewhere.csv"
    assert len(warnings) == 1 and "big" in warnings[0] and "--max-bundle-size" in warnings[0]


@pytest.mark.parametrize(("text", "size"), [("100MB", 10**8), ("1.5GB", 15 * 10**8),
                                            ("500k", 500_000), ("2MiB", 2 * 2**20),
                                            ("1k", 1000), ("42", 42)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "10 parsecs", "-5MB", "1.2.3G"])
def test_parse_size_rejects_bad_values(text: str) -> None:
    with pytest.raises(UsageError, match="500k, 100MB or 1.5GB"):
        parse_size(text)
