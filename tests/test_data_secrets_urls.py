"""URLs in the data draft: credentials in a URL never reach the record or the backpack (they
are flagged instead), only URLs that were read are listed (not a 404, not a refused
connection), a redirect is listed once under the URL the notebook asked for; and folders set
through MPLCONFIGDIR / XDG_* in the kernel's environment are tool state, not data.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import runpy
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from conftest import AUDIT_TIMEOUT_S, flo_audit_argv

from auditor.emit.data.rules import REDACTED, SIGNED_URL_NOTE, UNREAD_URL_NOTE, strip_credentials
from auditor.emit.data.urls import UrlOutcomes

KERNEL_NET = Path(__file__).resolve().parent.parent / "kernels" / "flo_net.py"
SIGNATURE = "5f1e0c9a7b3d2e4f6a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN0123456789"
REDIRECT_SIGNATURE = "0badc0ffee0ddf00d1234567890abcdef0123456789abcdef0123456789abcd"
ACCESS_KEY = "AKIAEXAMPLE7Q2W3E4R5"
API_TOKEN = "tok3n0f4nap1f0rthe5amefile"


@pytest.fixture(scope="module")
def redact() -> Any:
    return runpy.run_path(str(KERNEL_NET), run_name="_flo_backpack_net")["redact_url"]


@pytest.mark.parametrize(("url", "kept", "gone"), [
    (f"https://b.s3.amazonaws.com/x.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
     f"{ACCESS_KEY}%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z"
     f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token={SESSION_TOKEN}"
     f"&X-Amz-Signature={SIGNATURE}",
     "https://b.s3.amazonaws.com/x.csv", [SIGNATURE, SESSION_TOKEN, ACCESS_KEY]),
    (f"https://storage.googleapis.com/b/x.nc?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential"
     f"=sa%40p.iam.gserviceaccount.com&X-Goog-Signature={SIGNATURE}&generation=7",
     "https://storage.googleapis.com/b/x.nc?generation=7", [SIGNATURE, "sa%40p"]),
    (f"https://a.blob.core.windows.net/c/x.zip?sv=2022-11-02&se=2030-01-01&sr=b&sp=r&sig="
     f"{SIGNATURE}", "https://a.blob.core.windows.net/c/x.zip", [SIGNATURE]),
    (f"https://api.example.org/v1/t.json?access_token={SIGNATURE}&page=2",
     "https://api.example.org/v1/t.json?page=2", [SIGNATURE]),
    (f"https://h.example.org/d.csv?key={ACCESS_KEY}x9&apikey=abc&token=t1&password=pw",
     "https://h.example.org/d.csv", [ACCESS_KEY, "abc", "t1", "pw"]),
    (f"https://user:{SIGNATURE}@h.example.org/d.csv", "https://user@h.example.org/d.csv",
     [SIGNATURE]),
])
def test_kernel_side_redacts_credentials_and_drafter_strips_them(
        redact: Any, url: str, kept: str, gone: list[str]) -> None:
    recorded = redact(url)
    assert REDACTED in recorded and all(secret not in recorded for secret in gone), recorded
    source, removed = strip_credentials(recorded)
    assert source == kept and removed, (recorded, source)


def test_plain_parameters_are_not_credentials(redact: Any) -> None:
    """`key=` naming an object, short values and ordinary parameters stay as they are."""
    for url in ("https://h.example.org/get?key=data/2024/file.csv&rows=10",
                "https://h.example.org/d.csv?key=abc&format=csv",
                "https://h.example.org/d.csv#part-2"):
        assert redact(url) == url
        assert strip_credentials(url) == (url, [])


def test_outcomes_follow_redirect_chains() -> None:
    base = "http://127.0.0.1:9"
    outcomes = UrlOutcomes([
        {"url": f"{base}/a", "status": 301, "location": f"{base}/b"},
        {"url": f"{base}/b", "status": 302, "location": f"{base}/c"},
        {"url": f"{base}/c", "status": 200},
        {"url": f"{base}/loop", "status": 302, "location": f"{base}/loop"},
        {"url": f"{base}/gone", "status": 404},
    ])
    asked = {f"{base}/{p}" for p in ("a", "b", "c", "loop", "gone", "never")}
    assert [outcomes.read(f"{base}/{p}") for p in ("a", "b", "c", "loop", "gone", "never")] == [
        True, True, True, False, False, False]
    assert outcomes.followed(f"{base}/c", asked) and outcomes.followed(f"{base}/b", asked)
    assert not outcomes.followed(f"{base}/a", asked)
    assert "404" in outcomes.why_not(f"{base}/gone")
    assert UrlOutcomes(None).read(f"{base}/gone")  # an old record: nothing to judge by


# -- end to end: a real kernel under strace, a loopback server ------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; /moved.csv redirects in the folder, /release.csv to a signed URL."""

    redirects = {"/moved.csv": "/target.csv",
                 "/release.csv": f"/blob.csv?X-Amz-Credential={ACCESS_KEY}"
                                 f"&X-Amz-Signature={REDIRECT_SIGNATURE}"}

    def do_GET(self) -> None:
        location = self.redirects.get(self.path.split("?")[0])
        if location:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    served = tmp_path_factory.mktemp("served")
    for name in ("signed.csv", "target.csv", "blob.csv"):
        (served / name).write_text(f"name\n{name}\n")
    handler = functools.partial(_Handler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


NOTEBOOK_CELLS = [
    # The signed URL comes from the environment, as it would from a secret store: the
    # notebook's own text never holds the credential.
    "import os, urllib.error, urllib.request\nbase = os.environ['FLO_TEST_BASE']",
    "signed = urllib.request.urlopen(os.environ['FLO_TEST_SIGNED']).read()",
    "try:\n    extra = urllib.request.urlopen(base + '/missing.csv').read()\n"
    "except urllib.error.HTTPError:\n    extra = b''  # the notebook copes without it",
    "moved = urllib.request.urlopen(base + '/moved.csv').read()\n"
    "release = urllib.request.urlopen(base + '/release.csv').read()",
    # The same URL again with a token: one entry, but flagged (the token is not kept).
    "again = urllib.request.urlopen(base + '/moved.csv?token=' + os.environ['FLO_TEST_TOKEN'])"
    ".read()",
    "try:\n    urllib.request.urlopen(os.environ['FLO_TEST_CLOSED'], timeout=10).read()\n"
    "except OSError:\n    pass",
    "fonts = open(os.path.join(os.environ['MPLCONFIGDIR'], 'fontlist-v390.json')).read()\n"
    "conf = open(os.path.join(os.environ['XDG_CONFIG_HOME'], 'tool', 'settings.ini')).read()\n"
    "table = open('table.csv').read()",
]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: connects are refused


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, server: str) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("urls")
    work, mpl, xdg = base / "nb", base / "mplconfig", base / "xdgconfig"
    for folder in (work, mpl, xdg / "tool"):
        folder.mkdir(parents=True)
    (mpl / "fontlist-v390.json").write_text('{"ttflist": []}')
    (xdg / "tool" / "settings.ini").write_text("[tool]\nx = 1\n")
    (work / "table.csv").write_text("a\n1\n")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in NOTEBOOK_CELLS]
    nbformat.write(notebook, work / "fetch.ipynb")
    signed = (f"{server}/signed.csv?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential="
              f"{ACCESS_KEY}%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T0"
              f"00000Z&X-Amz-Security-Token={SESSION_TOKEN}&X-Amz-Signature={SIGNATURE}")
    closed = f"http://127.0.0.1:{_closed_port()}/offline.csv"
    env = {**os.environ, "FLO_TEST_BASE": server, "FLO_TEST_SIGNED": signed,
           "FLO_TEST_CLOSED": closed, "FLO_TEST_TOKEN": API_TOKEN,
           "MPLCONFIGDIR": str(mpl), "XDG_CONFIG_HOME": str(xdg), "HOME": str(base / "home")}
    out = base / "backpack"
    argv = [*flo_audit_argv(), str(work / "fetch.ipynb"), "-o", str(out), "--backend", "strace",
            "--json"]
    try:
        proc = subprocess.run(argv, cwd=base, env=env, capture_output=True, text=True,
                              timeout=AUDIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flo-audit did not finish within {AUDIT_TIMEOUT_S} s")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data_yml = yaml.safe_load((out / "data/data.yml").read_text(encoding="utf-8"))
    return {"out": out, "work": work, "closed": closed, "mpl": mpl, "xdg": xdg, "proc": proc,
            "server": server,
            "entries": data_yml["profiles"]["local_data"]["data"],
            "summary": json.loads((out / "audit/summary.json").read_text(encoding="utf-8"))}


def test_only_urls_that_were_read_are_listed_under_the_url_asked_for(audited: dict) -> None:
    server = audited["server"]
    urls = sorted(e["source"] for e in audited["entries"] if e["source_type"] == "http")
    assert urls == [f"{server}/moved.csv", f"{server}/release.csv", f"{server}/signed.csv"]
    unread = {u["url"]: u for u in audited["summary"]["data"]["unread_urls"]}
    assert set(unread) == {f"{server}/missing.csv", audited["closed"]}
    assert "404" in unread[f"{server}/missing.csv"]["why"]
    assert "no answer" in unread[audited["closed"]]["why"]
    assert all(u["note"] == UNREAD_URL_NOTE for u in unread.values())


def test_signed_url_is_listed_without_credentials_and_flagged(audited: dict) -> None:
    server = audited["server"]
    flagged = audited["summary"]["data"]["signed_urls"]
    assert [f["url"] for f in flagged] == [f"{server}/moved.csv", f"{server}/signed.csv"]
    assert flagged[0]["removed"] == ["token"]  # read plain and with a token: still flagged
    assert {"X-Amz-Signature", "X-Amz-Security-Token", "X-Amz-Credential"} <= set(
        flagged[1]["removed"]) and flagged[1]["note"] == SIGNED_URL_NOTE
    text = (audited["out"] / "data/data.yml").read_text(encoding="utf-8")
    assert "X-Amz-Signature" in text and "supply them at run time" in text  # header comment


def test_credentials_appear_nowhere_in_the_backpack(audited: dict) -> None:
    """Every file, the raw record under audit/ included: the kernel side redacts at record
    time, so not even hooks.jsonl holds the signature, the token or the key id."""
    secrets = [s.encode() for s in (SIGNATURE, SESSION_TOKEN, ACCESS_KEY, REDIRECT_SIGNATURE,
                                         API_TOKEN)]
    checked = 0
    for path in audited["out"].rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not [s for s in secrets if s in content], f"a credential leaked into {path}"
            checked += 1
    assert checked >= 8 and (audited["out"] / "audit/hooks.jsonl").is_file()
    assert b"FLO-REDACTED" in (audited["out"] / "audit/hooks.jsonl").read_bytes()
    proc = audited["proc"]
    assert not [s for s in secrets if s.decode() in proc.stdout + proc.stderr]


def test_tool_folders_from_the_kernel_environment_are_not_data(audited: dict) -> None:
    files = {e["source"] for e in audited["entries"] if e["source_type"] == "fs"}
    assert files == {str(audited["work"] / "table.csv")}, files
    session = json.loads((audited["out"] / "audit/session.json").read_text(encoding="utf-8"))
    tool_dirs = session["kernel"]["tool_dirs"]
    assert tool_dirs["MPLCONFIGDIR"] == str(audited["mpl"])
    assert tool_dirs["XDG_CONFIG_HOME"] == str(audited["xdg"])
