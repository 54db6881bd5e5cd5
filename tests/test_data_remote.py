"""flo-run's remote data sources for real on loopback: https (a test CA made by trustme, trusted
through $SSL_CERT_FILE as on clusters with a site CA), s3 (moto's S3-compatible server, read
through s3fs), and a server that stalls mid-body, which Ctrl-C or a failing sibling must not
wait for.

The http(s) servers reuse test_data_fetch's handler (ranges, cut bodies, error statuses).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import psutil
import pytest
import trustme
from moto.server import ThreadedMotoServer
from test_data_fetch import PAYLOAD, FileServer, _Handler, all_files, backpack_with, sha256

from auditor.backpack.checksums import directory_checksum
from auditor.backpack.data import DataSpecError
from auditor.backpack.layout import load_backpack
from provisioner.data import DataError, fetch

FLO_RUN = [sys.executable, "-m", "provisioner.cli"]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _start(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return thread


def _stop(server: ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _tls(server: ThreadingHTTPServer, ca: trustme.CA) -> None:
    """Wrap the listening socket: every accepted connection speaks TLS with a cert from `ca`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)


@pytest.fixture
def https(ca: trustme.CA) -> Iterator[tuple[FileServer, str]]:
    state = FileServer(ranges=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = state  # type: ignore[attr-defined]
    _tls(server, ca)
    thread = _start(server)
    try:
        yield state, f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        _stop(server, thread)


@pytest.fixture
def trusted(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test CA as the site's CA bundle, named the way users name it."""
    bundle = tmp_path / "site-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    return bundle


# ---------------------------------------------------------------- https


def test_https_fetch_verifies_checksum_and_resumes_with_range(
        https: tuple[FileServer, str], trusted: Path, tmp_path: Path) -> None:
    server, base = https
    server.files["/table.csv"] = b"x,y\n1,2\n"
    server.files["/big.bin"] = PAYLOAD
    server.cut["/big.bin"] = 1  # the first response stops half way and closes
    bp = backpack_with(tmp_path / "bp", [
        {"name": "table", "source_type": "https", "source": f"{base}/table.csv",
         "target_location": "table.csv", "checksum": sha256(b"x,y\n1,2\n")},
        {"name": "big", "source_type": "https", "source": f"{base}/big.bin",
         "target_location": "in/big.bin", "expected_size": len(PAYLOAD),
         "checksum": sha256(PAYLOAD)}])
    run = tmp_path / "run"
    report = fetch(bp, run)
    assert [e.status for e in report.entries] == ["fetched", "fetched"]
    assert (run / "table.csv").read_bytes() == b"x,y\n1,2\n"
    assert (run / "in/big.bin").read_bytes() == PAYLOAD
    assert server.hits("/big.bin") == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert all_files(run) == {"table.csv", "in", "in/big.bin"}


def test_untrusted_https_fails_at_once_naming_the_entry_and_ssl_cert_file(
        https: tuple[FileServer, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server, base = https
    server.files["/big.bin"] = PAYLOAD
    bp = backpack_with(tmp_path / "bp", [
        {"name": "big", "source_type": "https", "source": f"{base}/big.bin",
         "target_location": "big.bin", "checksum": sha256(PAYLOAD)}],
        policy={"retry_attempts": 3, "backoff": 5})
    run = tmp_path / "run"
    began = time.monotonic()
    with pytest.raises(DataError) as caught:
        fetch(bp, run)
    message = str(caught.value)
    assert message.startswith(f"data entry 'big' (https {base}/big.bin): the server's "
                              "certificate is not trusted"), message
    assert "set SSL_CERT_FILE to its CA bundle" in message and "\n" not in message
    assert time.monotonic() - began < 5, "a certificate problem is not retried with backoff"
    assert server.requests == [] and all_files(run) == set()


def test_untrusted_https_stops_flo_run_before_any_environment_work(
        https: tuple[FileServer, str], tmp_path: Path) -> None:
    server, base = https
    server.files["/big.bin"] = PAYLOAD
    bp = backpack_with(tmp_path / "bp", [
        {"name": "big", "source_type": "https", "source": f"{base}/big.bin",
         "target_location": "big.bin", "checksum": sha256(PAYLOAD)}])
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    done = subprocess.run([*FLO_RUN, str(bp), "--execute", "--cache-dir", str(cache),
                           "--scratch-dir", str(scratch)], capture_output=True, text=True,
                          timeout=300, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "'big'" in lines[0] and "set SSL_CERT_FILE" in lines[0], lines[0]
    assert not cache.exists() or not any(cache.iterdir()), "no environment was built"
    assert not any(scratch.glob("run-*")), "the run folder is removed"


# ---------------------------------------------------------------- a stalled server


class Stall:
    """A server that answers headers and the first `sent` bytes, then says nothing until
    released; /gone answers 404 once the client is reading the stalled body (its .part made)."""

    def __init__(self, sent: int = 1000) -> None:
        self.sent = sent
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.part: Path | None = None  # the client's .part: it exists once the body is read

    def reading(self, within: float = 30) -> bool:
        """Bounded wait until the client has taken the headers and opened its .part."""
        deadline = time.monotonic() + within
        while not (self.stalled.is_set() and self.part is not None and self.part.exists()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


class _StallHandler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        stall: Stall = self.server.stall  # type: ignore[attr-defined]
        if self.path == "/gone":
            stall.reading()
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[:stall.sent])
        self.wfile.flush()
        stall.stalled.set()
        stall.release.wait(60)  # bounded: a broken test cannot hang the suite


@pytest.fixture(params=["http", "https"])
def stalling(request: pytest.FixtureRequest, ca: trustme.CA,
             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Stall, str]]:
    stall = Stall()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StallHandler)
    server.stall = stall  # type: ignore[attr-defined]
    if request.param == "https":
        _tls(server, ca)
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    thread = _start(server)
    try:
        yield stall, f"{request.param}://127.0.0.1:{server.server_address[1]}"
    finally:
        stall.release.set()
        _stop(server, thread)


def fetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("flo-fetch")]


def test_failing_entry_hangs_up_a_stalled_sibling(stalling: tuple[Stall, str],
                                                  tmp_path: Path) -> None:
    stall, base = stalling
    bp = backpack_with(tmp_path / "bp", [
        {"name": "slow", "source": f"{base}/big.bin", "target_location": "big.bin",
         "checksum": sha256(PAYLOAD)},
        {"name": "gone", "source": f"{base}/gone", "target_location": "gone.bin"}],
        policy={"timeout": 600})
    run = tmp_path / "run"
    stall.part = run / ".big.bin.part"
    began = time.monotonic()
    with pytest.raises(DataError, match=r"^data entry 'gone' .*HTTP 404") as caught:
        fetch(bp, run, jobs=2)
    assert time.monotonic() - began < 10, "the stalled download was waited for"
    assert stall.stalled.is_set(), "the sibling was stalled when the 404 came"
    assert [e.status for e in caught.value.report.entries] == ["cancelled", "failed"]
    assert fetch_threads() == []
    # Cancelled, not failed: the bytes received stay in the hidden .part for the next run.
    assert all_files(run) == {".big.bin.part"}
    assert (run / ".big.bin.part").read_bytes() == PAYLOAD[:stall.sent]


def test_ctrl_c_on_a_stalled_download_exits_promptly(stalling: tuple[Stall, str],
                                                     tmp_path: Path) -> None:
    stall, base = stalling
    bp = backpack_with(tmp_path / "bp", [
        {"name": "slow", "source": f"{base}/big.bin", "target_location": "big.bin",
         "checksum": sha256(PAYLOAD)}], policy={"timeout": 600})
    run = tmp_path / "run"
    stall.part = run / ".big.bin.part"
    proc = subprocess.Popen([*FLO_RUN, "fetch", str(bp), "--run-dir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    try:
        assert stall.reading(60), "flo-run fetch never started reading the body"
        assert psutil.Process(proc.pid).children() == []
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert took < 5, f"Ctrl-C took {took:.1f} s against a policy timeout of 600 s"
    assert err.strip().splitlines()[-1] == "flo-run: interrupted" and "Traceback" not in err
    assert all_files(run) == {".big.bin.part"}, "the target name never holds a partial file"
    assert (run / ".big.bin.part").read_bytes() == PAYLOAD[:stall.sent]


# ---------------------------------------------------------------- s3 (moto)

BUCKET = "flo-data"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket with objects on the moto server; fake credentials, no ~/.aws read."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    client = boto3.client("s3", endpoint_url=moto_server)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="tables/big.bin", Body=PAYLOAD)
    client.put_object(Bucket=BUCKET, Key="tiles/a.txt", Body=b"alpha\n")
    client.put_object(Bucket=BUCKET, Key="tiles/sub/b.txt", Body=b"beta\n")
    client.put_object(Bucket=BUCKET, Key="open/readme.txt", Body=b"public\n", ACL="public-read")
    yield moto_server
    for key in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=key["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_s3_object_and_folder_fetched_and_verified(s3: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    (reference / "sub").mkdir(parents=True)
    (reference / "a.txt").write_bytes(b"alpha\n")
    (reference / "sub/b.txt").write_bytes(b"beta\n")
    bp = backpack_with(tmp_path / "bp", [
        {"name": "big", "source_type": "s3", "source": f"s3://{BUCKET}/tables/big.bin",
         "target_location": "big.bin", "expected_size": len(PAYLOAD),
         "checksum": sha256(PAYLOAD), "storage_options": {"endpoint_url": s3}},
        {"name": "tiles", "source_type": "s3", "source": f"s3://{BUCKET}/tiles/",
         "target_location": "inputs/tiles", "files": 2, "expected_size": 11,
         "checksum": directory_checksum(reference), "storage_options": {"endpoint_url": s3}}])
    run = tmp_path / "run"
    report = fetch(bp, run)
    assert [e.status for e in report.entries] == ["fetched", "fetched"]
    assert (run / "big.bin").read_bytes() == PAYLOAD
    assert (run / "inputs/tiles/sub/b.txt").read_bytes() == b"beta\n"
    assert all_files(run) == {"big.bin", "inputs", "inputs/tiles", "inputs/tiles/a.txt",
                              "inputs/tiles/sub", "inputs/tiles/sub/b.txt"}

    # The endpoint from the standard AWS environment instead of the entry.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    plain = backpack_with(tmp_path / "plain", [
        {"name": "big", "source": f"s3://{BUCKET}/tables/big.bin",
         "target_location": "big.bin", "checksum": sha256(PAYLOAD)}])
    assert load_backpack(plain).data_spec.profile().entries[0].source_type == "s3"
    assert fetch(plain, tmp_path / "run2").entries[0].status == "fetched"
    assert (tmp_path / "run2/big.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("case", ["missing key", "wrong checksum"])
def test_s3_bad_entry_fails_cleanly(case: str, s3: str, tmp_path: Path) -> None:
    entry = {"name": "obj", "source_type": "s3", "source": f"s3://{BUCKET}/tables/big.bin",
             "target_location": "in/big.bin", "checksum": sha256(b"other"),
             "storage_options": {"endpoint_url": s3}}
    pattern = rf"expected checksum {sha256(b'other')}, found {sha256(PAYLOAD)}"
    if case == "missing key":
        entry["source"] = f"s3://{BUCKET}/tables/nothing.bin"
        pattern = "expected the object .* to exist, found none"
    bp = backpack_with(tmp_path / "bp", [entry], policy={"retry_attempts": 3, "backoff": 5})
    run = tmp_path / "run"
    began = time.monotonic()
    with pytest.raises(DataError, match=rf"^data entry 'obj' \(s3 {entry['source']}\): "
                                        + pattern) as caught:
        fetch(bp, run)
    assert "\n" not in str(caught.value)
    assert time.monotonic() - began < 5, "not retried with backoff"
    assert all_files(run) == {"in"}, "no partial file, nothing under a hidden name"


def test_s3_anonymous_access_reads_public_objects_only(s3: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    anon = {"endpoint_url": s3, "anon": True}
    bp = backpack_with(tmp_path / "bp", [
        {"name": "open", "source_type": "s3", "source": f"s3://{BUCKET}/open/readme.txt",
         "target_location": "readme.txt", "checksum": sha256(b"public\n"),
         "storage_options": anon}])
    fetch(bp, tmp_path / "run")
    assert (tmp_path / "run/readme.txt").read_bytes() == b"public\n"

    private = backpack_with(tmp_path / "private", [
        {"name": "big", "source_type": "s3", "source": f"s3://{BUCKET}/tables/big.bin",
         "target_location": "big.bin", "storage_options": anon}])
    with pytest.raises(DataError, match=r"'big'.*access denied.*AWS_ACCESS_KEY_ID"):
        fetch(private, tmp_path / "run2")
    assert all_files(tmp_path / "run2") == set()


@pytest.mark.parametrize("options, source_type, pattern", [
    ({"endpoint_url": "http://x"}, "https", "applies to s3 entries only"),
    (["endpoint_url"], "s3", "expected a mapping of s3fs options"),
    ({"key": "AKIA", "secret": "x"}, "s3", r"holds credentials \('key'\).*AWS_ACCESS_KEY_ID"),
    ({"client_kwargs": {"aws_secret_access_key": "x"}}, "s3", "holds credentials"),
])
def test_storage_options_validated(options: object, source_type: str, pattern: str,
                                   tmp_path: Path) -> None:
    bp = backpack_with(tmp_path / "bp", [
        {"name": "obj", "source_type": source_type, "source": f"{source_type}://b/k",
         "target_location": "k", "storage_options": options}])
    with pytest.raises(DataSpecError, match=r"entry .*'obj'.*key 'storage_options': " + pattern):
        load_backpack(bp)
