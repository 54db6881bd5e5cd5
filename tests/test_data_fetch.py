"""flo-run's data step on real files and a real loopback HTTP server (started here, in a thread).

The server serves bytes from a dict, counts requests, and can refuse Range, cut a body in the
middle (closing the connection), or answer with error statuses first.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from test_envs import make_backpack

from auditor.backpack.checksums import (
    CHUNK,
    directory_checksum,
    directory_listing,
    parse_checksum,
)
from auditor.backpack.data import DataSpecError
from auditor.backpack.layout import load_backpack
from provisioner.data import DataError, fetch, profile_notebook_dir, verify

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not repetitive within a chunk boundary


class FileServer:
    """State shared with the handler: what to serve and how to misbehave."""

    def __init__(self, ranges: bool) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = ranges
        self.cut: dict[str, int] = {}  # path -> how many responses to cut mid-body
        self.fail: dict[str, list[int]] = {}  # path -> statuses to answer first
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def hits(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: FileServer = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.requests.append((self.path, self.headers.get("Range")))
            queued = state.fail.get(self.path)
            status = queued.pop(0) if queued else None
            cut = state.cut.get(self.path, 0)
            if cut:
                state.cut[self.path] = cut - 1
        if status is not None:
            self.send_error(status)
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        wanted = self.headers.get("Range")
        if state.ranges and wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[6:-1])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if cut:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


def _serve(ranges: bool) -> Iterator[tuple[FileServer, str]]:
    state = FileServer(ranges)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def http() -> Iterator[tuple[FileServer, str]]:
    yield from _serve(ranges=True)


@pytest.fixture
def http_no_range() -> Iterator[tuple[FileServer, str]]:
    yield from _serve(ranges=False)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def backpack_with(root: Path, entries: list[dict], policy: dict | None = None,
                  files: dict[str, bytes] | None = None, legacy: bool = False) -> Path:
    """A minimal valid backpack whose data.yml lists `entries`; `files` go inside it."""
    make_backpack(root, "3.11.7", ["six==1.16.0"])
    for relative, data in (files or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    policy = {"retry_attempts": 3, "timeout": 10, "backoff": 0, **(policy or {})}
    doc = ({"data": entries} if legacy else
           {"schema_version": 1.0, "default_profile": "local",
            "profiles": {"local": {"policy": policy, "data": entries}}})
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "data.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def all_files(folder: Path) -> set[str]:
    """Every file and folder under `folder`, hidden ones included, relative."""
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}



def test_targets_above_the_notebook_land_inside_the_run_folder(tmp_path: Path) -> None:
    """'../../shared/a.txt' and 'b.txt': the notebook runs two folders down, so both land in
    the run folder where the notebook's own relative names reach them."""
    bp = backpack_with(tmp_path / "bp", [
        {"name": "a", "source_type": "backpack", "source": "data/a.txt",
         "target_location": "../../shared/a.txt"},
        {"name": "b", "source_type": "backpack", "source": "data/b.txt",
         "target_location": "b.txt"}], files={"data/a.txt": b"A", "data/b.txt": b"B"})
    run = tmp_path / "run"
    workdir = profile_notebook_dir(bp, run)
    assert workdir == run / "notebook" / "notebook"
    fetch(bp, run)
    assert (run / "shared" / "a.txt").read_bytes() == b"A"
    assert (workdir / "b.txt").read_bytes() == b"B"
    assert (workdir / "../../shared/a.txt").resolve() == (run / "shared" / "a.txt").resolve()
    assert all(e.ok for e in verify(bp, run).entries)

# ---------------------------------------------------------------- the happy path


def test_fetch_every_source_type_then_skip(tmp_path: Path, http: tuple[FileServer, str]) -> None:
    server, base = http
    outside = tmp_path / "elsewhere"
    (outside / "tiles" / "sub").mkdir(parents=True)
    (outside / "tiles" / "a.txt").write_text("alpha\n")
    (outside / "tiles" / "sub" / "b.txt").write_text("beta\n")
    (outside / "big.bin").write_bytes(PAYLOAD)
    (outside / "notes.txt").write_text("in place\n")
    (outside / "url.txt").write_text("file url\n")
    table = b"x,y\n1,2\n"
    server.files["/remote.bin"] = PAYLOAD
    server.files["/second.csv"] = table
    tiles_sum = directory_checksum(outside / "tiles")
    entries = [
        {"name": "table", "source_type": "backpack", "source": "data/table.csv",
         "target_location": "table.csv", "expected_size": len(table),
         "checksum": hashlib.md5(table).hexdigest(),  # bare hex: md5 by its length
         "read_by": "manager", "first_cell": 1},
        {"name": "local-dir", "source_type": "backpack", "source": "data/inner",
         "target_location": "inputs/inner", "files": 1, "expected_size": 3},
        {"name": "big", "source_type": "fs", "source": str(outside / "big.bin"),
         "target_location": "inputs/big.bin", "expected_size": len(PAYLOAD),
         "checksum": "sha1:" + hashlib.sha1(PAYLOAD).hexdigest()},
        {"name": "tiles", "source_type": "fs", "source": str(outside / "tiles"),
         "target_location": "tiles", "files": 2, "expected_size": 11, "checksum": tiles_sum},
        {"name": "notes", "source_type": "fs", "source": str(outside / "notes.txt"),
         "target_location": str(outside / "notes.txt"), "checksum":
         sha256(b"in place\n")},
        {"name": "via-url", "source_type": "file", "source": (outside / "url.txt").as_uri(),
         "target_location": "url.txt", "checksum": sha256(b"file url\n")},
        {"name": "remote", "source_type": "http", "source": f"{base}/remote.bin",
         "target_location": "downloads/remote.bin", "expected_size": len(PAYLOAD),
         "checksum": sha256(PAYLOAD)},
        {"name": "second", "source_type": "http", "source": f"{base}/second.csv",
         "target_location": "second.csv", "checksum": sha256(table)},
    ]
    bp = backpack_with(tmp_path / "bp", entries,
                       files={"data/table.csv": table, "data/inner/c.txt": b"hey"})
    run = tmp_path / "run"
    seen: dict[str, int] = {}
    report = fetch(bp, run, progress=lambda name, done, total: seen.__setitem__(name, done))

    assert report.ok and report.profile == "local"
    status = {e.name: e.status for e in report.entries}
    assert status == {"table": "fetched", "local-dir": "fetched", "big": "fetched",
                      "tiles": "fetched", "notes": "in place", "via-url": "fetched",
                      "remote": "fetched", "second": "fetched"}
    assert (run / "table.csv").read_bytes() == table
    assert (run / "inputs/inner/c.txt").read_bytes() == b"hey"
    assert (run / "inputs/big.bin").read_bytes() == PAYLOAD
    assert (run / "tiles/sub/b.txt").read_text() == "beta\n"
    assert directory_checksum(run / "tiles") == tiles_sum
    assert (run / "url.txt").read_text() == "file url\n"
    assert (run / "downloads/remote.bin").read_bytes() == PAYLOAD
    assert not any("notes" in name for name in all_files(run))  # in place: nothing copied
    assert not [n for n in all_files(run) if ".part" in n or ".flo-" in n]
    assert seen["remote"] == len(PAYLOAD)
    assert report.to_dict()["entries"][0]["name"] == "table"

    requests = len(server.requests)
    again = fetch(bp, run)
    assert {e.status for e in again.entries} == {"present", "in place"}
    assert all(e.from_cache for e in again.entries)
    assert len(server.requests) == requests  # nothing downloaded the second time


def test_legacy_flat_list_and_inferred_source_type(tmp_path: Path,
                                                   http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/a.txt"] = b"legacy\n"
    bp = backpack_with(tmp_path / "bp", [
        {"name": "a", "source": f"{base}/a.txt", "target_location": "a.txt"},
        {"name": "b", "source_type": "backpack", "source": "data/b.txt",
         "target_location": "b.txt", "checksum": sha256(b"bee")},
    ], files={"data/b.txt": b"bee"}, legacy=True)
    spec = load_backpack(bp).data_spec
    assert spec is not None and spec.legacy
    assert spec.profile().entries[0].source_type == "http"
    report = fetch(bp, tmp_path / "run")
    assert report.ok and (tmp_path / "run/a.txt").read_bytes() == b"legacy\n"
    with pytest.raises(DataSpecError, match="flat 'data' list"):
        fetch(bp, tmp_path / "run", profile="cluster")


def test_profiles_choose_and_unknown_keys_warn(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp", "3.11.7", ["six==1.16.0"])
    (bp / "data").mkdir()
    (bp / "data/x.txt").write_text("x")
    entry = {"name": "x", "source_type": "backpack", "source": "data/x.txt"}
    (bp / "data/data.yml").write_text(yaml.safe_dump({
        "schema_version": 1.0, "default_profile": "small",
        "profiles": {"small": {"data": [dict(entry, target_location="small.txt")]},
                     "big": {"data": [dict(entry, target_location="big.txt", color="red")]}}},
        sort_keys=False))
    loaded = load_backpack(bp)
    assert any("unknown key 'color'" in w for w in loaded.warnings)
    fetch(bp, tmp_path / "run")
    assert (tmp_path / "run/small.txt").exists() and not (tmp_path / "run/big.txt").exists()
    fetch(bp, tmp_path / "run", profile="big")
    assert (tmp_path / "run/big.txt").read_text() == "x"
    with pytest.raises(DataSpecError, match="no profile 'huge'; expected one of small, big"):
        fetch(bp, tmp_path / "run", profile="huge")


# ---------------------------------------------------------------- clean failures


def _failing_cases(base: str, tmp_path: Path) -> dict[str, tuple[dict, str]]:
    return {
        "wrong checksum": ({"name": "remote", "source_type": "http",
                            "source": f"{base}/remote.bin", "target_location": "remote.bin",
                            "checksum": sha256(b"something else")},
                           rf"'remote'.*expected checksum {sha256(b'something else')}, found "
                           rf"{sha256(PAYLOAD)}"),
        "404": ({"name": "gone", "source_type": "http", "source": f"{base}/missing.bin",
                 "target_location": "gone.bin"}, r"'gone'.*HTTP 404"),
        # '../x' is allowed (the notebook then runs a folder down); climbing past the limit
        # is not
        "traversal": ({"name": "escape", "source_type": "backpack", "source": "data/ok.txt",
                       "target_location": "../" * 9 + "x"},
                      r"'escape'.*climbs more than 8 folders"),
        "absolute": ({"name": "abs", "source_type": "fs", "source": str(tmp_path / "ok.txt"),
                      "target_location": str(tmp_path / "other.txt")},
                     r"'abs'.*is absolute; expected a path inside the run folder"),
        "missing backpack file": ({"name": "lost", "source_type": "backpack",
                                   "source": "data/lost.csv", "target_location": "lost.csv"},
                                  r"'lost'.*expected the source to exist, found no file"),
        "wrong size": ({"name": "sized", "source_type": "backpack", "source": "data/ok.txt",
                        "target_location": "sized.txt", "expected_size": 99},
                       r"'sized'.*expected 99 bytes, found 3"),
    }


@pytest.mark.parametrize("case", ["wrong checksum", "404", "traversal", "absolute",
                                  "missing backpack file", "wrong size"])
def test_bad_entry_fails_cleanly(case: str, tmp_path: Path, http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/remote.bin"] = PAYLOAD
    (tmp_path / "ok.txt").write_text("ok\n")
    entry, pattern = _failing_cases(base, tmp_path)[case]
    good = {"name": "good", "source_type": "backpack", "source": "data/ok.txt",
            "target_location": "good.txt"}
    bp = backpack_with(tmp_path / "bp", [entry, good], files={"data/ok.txt": b"ok!"})
    run = tmp_path / "run"
    with pytest.raises(DataError, match=pattern) as caught:
        fetch(bp, run, jobs=1)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"data entry {entry['name']!r}")
    leftovers = all_files(run) - {"good.txt"}  # a sibling that verified may stay
    assert leftovers == set(), leftovers
    assert not (tmp_path / "x").exists() and not (tmp_path / "other.txt").exists()
    if case in ("traversal", "absolute", "missing backpack file"):
        assert not run.exists()  # refused while planning: before any copy or download


# ---------------------------------------------------------------- resume and retry


def test_interrupted_download_resumes_with_range(tmp_path: Path,
                                                 http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/big.bin"] = PAYLOAD
    server.cut["/big.bin"] = 1
    bp = backpack_with(tmp_path / "bp", [{"name": "big", "source": f"{base}/big.bin",
                                          "source_type": "http", "target_location": "big.bin",
                                          "checksum": sha256(PAYLOAD)}])
    report = fetch(bp, tmp_path / "run")
    assert (tmp_path / "run/big.bin").read_bytes() == PAYLOAD
    assert server.hits("/big.bin") == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert report.entries[0].bytes == len(PAYLOAD)


def test_server_without_range_starts_over(tmp_path: Path,
                                          http_no_range: tuple[FileServer, str]) -> None:
    server, base = http_no_range
    server.files["/big.bin"] = PAYLOAD
    server.cut["/big.bin"] = 1
    bp = backpack_with(tmp_path / "bp", [{"name": "big", "source": f"{base}/big.bin",
                                          "source_type": "http", "target_location": "big.bin",
                                          "checksum": sha256(PAYLOAD)}])
    fetch(bp, tmp_path / "run")
    assert (tmp_path / "run/big.bin").read_bytes() == PAYLOAD
    assert len(server.hits("/big.bin")) == 2  # asked for a range, got the whole body again


def test_part_file_from_an_earlier_run_is_continued(tmp_path: Path,
                                                    http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/big.bin"] = PAYLOAD
    run = tmp_path / "run"
    run.mkdir()
    (run / ".big.bin.part").write_bytes(PAYLOAD[:1000])
    bp = backpack_with(tmp_path / "bp", [{"name": "big", "source": f"{base}/big.bin",
                                          "source_type": "http", "target_location": "big.bin",
                                          "checksum": sha256(PAYLOAD)}])
    fetch(bp, run)
    assert server.hits("/big.bin") == ["bytes=1000-"]
    assert (run / "big.bin").read_bytes() == PAYLOAD and all_files(run) == {"big.bin"}


def test_stale_part_file_fails_checksum_then_downloads_fresh(
        tmp_path: Path, http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/big.bin"] = PAYLOAD
    run = tmp_path / "run"
    run.mkdir()
    (run / ".big.bin.part").write_bytes(b"\xff" * 1000)  # not the server's bytes
    bp = backpack_with(tmp_path / "bp", [{"name": "big", "source": f"{base}/big.bin",
                                          "source_type": "http", "target_location": "big.bin",
                                          "checksum": sha256(PAYLOAD)}])
    fetch(bp, run)
    assert server.hits("/big.bin") == ["bytes=1000-", None]
    assert (run / "big.bin").read_bytes() == PAYLOAD


def test_retry_attempts_honoured(tmp_path: Path, http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/flaky.bin"] = b"finally"
    server.fail["/flaky.bin"] = [503, 503]
    server.fail["/down.bin"] = [503] * 10
    entry = {"source_type": "http", "checksum": sha256(b"finally")}
    bp = backpack_with(tmp_path / "bp", [
        dict(entry, name="flaky", source=f"{base}/flaky.bin", target_location="flaky.bin")],
        policy={"retry_attempts": 3})
    fetch(bp, tmp_path / "run")
    assert len(server.hits("/flaky.bin")) == 3
    assert (tmp_path / "run/flaky.bin").read_bytes() == b"finally"

    down = backpack_with(tmp_path / "down", [
        dict(entry, name="down", source=f"{base}/down.bin", target_location="down.bin")],
        policy={"retry_attempts": 4})
    with pytest.raises(DataError, match=r"'down'.*HTTP 503.*gave up after 4 attempts"):
        fetch(down, tmp_path / "run2")
    assert len(server.hits("/down.bin")) == 4
    assert all_files(tmp_path / "run2") == set()


# ---------------------------------------------------------------- post_fetch


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_untar_and_unzip_post_fetch(tmp_path: Path) -> None:
    archive = _tar({"set/one.txt": b"1", "set/two.txt": b"2"})
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("zipped/three.txt", "3")
    bp = backpack_with(tmp_path / "bp", [
        {"name": "set", "source_type": "backpack", "source": "data/set.tar.gz",
         "target_location": "in/set.tar.gz", "checksum": sha256(archive),
         "post_fetch": {"operation": "untar"}},
        {"name": "zipped", "source_type": "backpack", "source": "data/z.zip",
         "target_location": "z.zip", "post_fetch": {"operation": "unzip"}},
    ], files={"data/set.tar.gz": archive, "data/z.zip": zipped.getvalue()})
    run = tmp_path / "run"
    report = fetch(bp, run)
    assert (run / "in/set/two.txt").read_text() == "2"
    assert (run / "zipped/three.txt").read_text() == "3"
    assert report.entries[0].extracted == ["set"]
    (run / "in/set/two.txt").write_text("changed by the notebook")
    fetch(bp, run)  # verified archive, already unpacked: not unpacked again
    assert (run / "in/set/two.txt").read_text() == "changed by the notebook"


def test_untar_refuses_member_escaping_the_folder(tmp_path: Path) -> None:
    archive = _tar({"fine.txt": b"ok", "../evil.txt": b"gotcha"})
    bp = backpack_with(tmp_path / "bp", [
        {"name": "bad", "source_type": "backpack", "source": "data/bad.tar.gz",
         "target_location": "bad.tar.gz", "post_fetch": {"operation": "untar"}},
    ], files={"data/bad.tar.gz": archive})
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"'bad'.*member '\.\./evil\.txt' would land outside"):
        fetch(bp, run)
    assert not (tmp_path / "evil.txt").exists()
    assert all_files(run) == set()


# ---------------------------------------------------------------- verify and odds


def test_verify_in_run_dir_and_at_sources(tmp_path: Path, http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/r.txt"] = b"remote"
    bp = backpack_with(tmp_path / "bp", [
        {"name": "local", "source_type": "backpack", "source": "data/l.txt",
         "target_location": "l.txt", "expected_size": 5, "checksum": sha256(b"local")},
        {"name": "remote", "source_type": "http", "source": f"{base}/r.txt",
         "target_location": "r.txt", "checksum": sha256(b"remote")},
    ], files={"data/l.txt": b"local"})
    at_sources = verify(bp)
    assert at_sources.ok and [e.status for e in at_sources.entries] == ["verified", "unchecked"]
    run = tmp_path / "run"
    missing = verify(bp, run)
    assert not missing.ok and "found nothing" in missing.entries[0].message
    fetch(bp, run)
    assert verify(bp, run).exit_code == 0
    (run / "r.txt").write_bytes(b"REMOTE")
    damaged = verify(bp, run)
    assert damaged.exit_code == 2 and damaged.entries[0].ok
    assert f"expected checksum {sha256(b'remote')}, found {sha256(b'REMOTE')}" \
        in damaged.entries[1].message
    fetch(bp, run)  # a damaged target is fetched again, then verifies
    assert (run / "r.txt").read_bytes() == b"remote" and verify(bp, run).ok


def test_directory_checksum_byte_layout(tmp_path: Path) -> None:
    (tmp_path / "d/z").mkdir(parents=True)
    (tmp_path / "d/b.txt").write_bytes(b"bb")
    (tmp_path / "d/z/a.txt").write_bytes(b"a")
    (tmp_path / "d/a.txt").write_bytes(b"")
    stream = b"a.txt\x000\x00" + b"b.txt\x002\x00bb" + b"z/a.txt\x001\x00a"
    assert directory_checksum(tmp_path / "d") == sha256(stream)
    assert parse_checksum("SHA1:" + "A" * 40) == ("sha1", "a" * 40)
    with pytest.raises(ValueError, match="length 12"):
        parse_checksum("abcdefabcdef")


def test_directory_checksum_reads_files_whole_whatever_the_listing_says(tmp_path: Path) -> None:
    # The listing's sizes spare a stat and a last empty read per file; a file that grew or
    # shrank since it was listed is still read to its end (and the stream records the listed
    # size, so such a folder does not match itself listed afresh).
    (tmp_path / "d").mkdir()
    grown, shrunk = tmp_path / "d/grown.bin", tmp_path / "d/shrunk.bin"
    grown.write_bytes(b"x" * 10)
    shrunk.write_bytes(b"y" * 10)
    listing = directory_listing(tmp_path / "d")
    grown.write_bytes(b"x" * (CHUNK + 7))
    shrunk.write_bytes(b"y" * 3)
    stream = (b"grown.bin\x0010\x00" + b"x" * (CHUNK + 7)
              + b"shrunk.bin\x0010\x00" + b"yyy")
    assert directory_checksum(tmp_path / "d", listing=listing) == sha256(stream)
    fresh = b"grown.bin\x00%d\x00" % (CHUNK + 7) + b"x" * (CHUNK + 7) + b"shrunk.bin\x003\x00yyy"
    assert directory_checksum(tmp_path / "d") == sha256(fresh)


def test_bad_checksum_text_names_file_and_entry(tmp_path: Path) -> None:
    bp = backpack_with(tmp_path / "bp", [{"name": "x", "source_type": "backpack",
                                          "source": "data/x", "checksum": "crc32:1234"}])
    with pytest.raises(DataSpecError, match=r"data\.yml: entry .*'x'.*key 'checksum'.*crc32"):
        load_backpack(bp)


def test_s3_without_s3fs_names_the_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` fails as when not installed
    bp = backpack_with(tmp_path / "bp", [{"name": "obj", "source_type": "s3",
                                          "source": "s3://bucket/key.csv",
                                          "target_location": "key.csv"}])
    with pytest.raises(DataError, match=r"'obj'.*pip install s3fs"):
        fetch(bp, tmp_path / "run")
    assert all_files(tmp_path / "run") == set()


def test_a_notebook_writing_its_inputs_never_changes_the_originals(tmp_path: Path) -> None:
    """Inputs are copies in the run folder (cloned where the filesystem can): a notebook that
    appends to one must not change the backpack's file or an fs source."""
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"fs source\n")
    bp = backpack_with(tmp_path / "bp", [
        {"name": "log", "source_type": "backpack", "source": "data/log.txt",
         "target_location": "log.txt"},
        {"name": "ext", "source_type": "fs", "source": str(outside),
         "target_location": "ext.txt"}], files={"data/log.txt": b"backpack file\n"})
    run = tmp_path / "run"
    fetch(bp, run)
    for name in ("log.txt", "ext.txt"):
        with open(run / name, "ab") as handle:  # what the notebook does
            handle.write(b"appended by the run\n")
    assert (bp / "data" / "log.txt").read_bytes() == b"backpack file\n"
    assert outside.read_bytes() == b"fs source\n"
    assert all(e.ok for e in verify(bp).entries), "the sources still verify"


def test_the_notebook_runs_deep_enough_for_what_the_audit_saw_it_write(tmp_path: Path) -> None:
    """No data climbs, but the audited run wrote '../../out/r.txt': flo-run nests the notebook
    two folders down, named as its folders were; outputs far away do not count."""
    from provisioner.data import audit_layout, notebook_dir

    bp = tmp_path / "bp"
    (bp / "audit").mkdir(parents=True)
    summary = {"schema": 1, "status": "complete",
               "notebook": "/home/u/proj/analysis/notebooks/nb.ipynb",
               "data": {"outputs": ["/home/u/proj/out/r.txt", "/var/tmp/far/x"],
                        "intermediates": ["/home/u/proj/analysis/notebooks/mid.csv"]}}
    (bp / "audit" / "summary.json").write_text(json.dumps(summary))
    layout = audit_layout(bp)
    assert layout.wrote_up == 2
    assert notebook_dir(tmp_path / "run", [], layout) == tmp_path / "run" / "analysis" / "notebooks"
    assert notebook_dir(tmp_path / "run", []) == tmp_path / "run"  # hand-written, nothing above


# ---------------------------------------------------------------- partial downloads outlive a run


def test_partial_download_in_the_shared_folder_resumes_in_the_next_run_folder(
        tmp_path: Path, http: tuple[FileServer, str]) -> None:
    server, base = http
    server.files["/big.bin"] = PAYLOAD
    server.cut["/big.bin"] = 1
    entry = {"name": "big", "source": f"{base}/big.bin", "source_type": "http",
             "target_location": "big.bin", "checksum": sha256(PAYLOAD)}
    bp = backpack_with(tmp_path / "bp", [entry], policy={"retry_attempts": 1})
    partials = tmp_path / "downloads"
    with pytest.raises(DataError):
        fetch(bp, tmp_path / "run-1", partials=partials)
    assert all_files(tmp_path / "run-1") == set()  # nothing half-made under the target
    [part] = partials.glob("*.part")
    assert part.stat().st_size == len(PAYLOAD) // 2
    fetch(bp, tmp_path / "run-2", partials=partials)
    assert server.hits("/big.bin") == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert (tmp_path / "run-2/big.bin").read_bytes() == PAYLOAD
    assert all_files(tmp_path / "run-2") == {"big.bin"}
    assert list(partials.glob("*.part")) == []


@pytest.mark.slow
def test_flo_run_keeps_a_cut_download_for_the_next_run(tmp_path: Path,
                                                      http: tuple[FileServer, str]) -> None:
    """`flo-run BP --execute` removes its run folder; the partial download stays in the
    scratch folder and the next run asks only for the rest."""
    import subprocess

    server, base = http
    server.files["/big.bin"] = PAYLOAD
    server.cut["/big.bin"] = 1
    bp = backpack_with(tmp_path / "bp", [{"name": "big", "source": f"{base}/big.bin",
                                          "source_type": "http", "target_location": "big.bin",
                                          "checksum": sha256(PAYLOAD)}],
                       policy={"retry_attempts": 1})
    import nbformat

    [notebook] = (bp / "workflow").glob("*.ipynb")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nprint(os.path.getsize('big.bin'))")]
    nbformat.write(nb, notebook)
    argv = [sys.executable, "-m", "provisioner.cli", str(bp), "--execute", "--json",
            "--scratch-dir", str(tmp_path / "scratch"), "--cache-dir", str(tmp_path / "cache"),
            "-o", str(tmp_path / "out.ipynb")]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 2, first.stderr
    assert not any(p.name.startswith("run-") for p in (tmp_path / "scratch").iterdir())
    assert len(list((tmp_path / "scratch" / "downloads").glob("*.part"))) == 1
    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert server.hits("/big.bin") == [None, f"bytes={len(PAYLOAD) // 2}-"]
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[0].outputs[0]["text"].strip() == str(len(PAYLOAD))
