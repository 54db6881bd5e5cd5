"""A notebook that downloads its data itself (the Dask tutorial's way: urlretrieve into data/,
untar there, skip both when the folder exists): data.yml puts the URL where the notebook saved
it, with the unpacking, so flo-run's fetch leaves what the notebook's guard looks for.

Real: a loopback http.server, flo-audit under strace, flo-run's fetch.
"""

from __future__ import annotations

import functools
import http.server
import io
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from conftest import AUDIT_TIMEOUT_S, flo_audit_argv

from provisioner.data import fetch


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    served = tmp_path_factory.mktemp("served")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for name, text in (("flights/1990.csv", "delay\n3\n"), ("flights/1991.csv", "delay\n5\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (served / "flights.tar.gz").write_bytes(packed.getvalue())
    (served / "airports.csv").write_text("code\nEWR\n")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


CELLS = [
    "import os, tarfile, urllib.request\nbase = os.environ['FLO_TEST_BASE']",
    # downloaded, saved under data/, unpacked there, skipped when already there
    "if not os.path.exists('data/flights'):\n    os.makedirs('data', exist_ok=True)\n"
    "    saved, _ = urllib.request.urlretrieve(base + '/flights.tar.gz', 'data/flights.tar.gz')\n"
    "    with tarfile.open(saved) as tar:\n        tar.extractall('data')\n"
    "print(sum(int(open(f'data/flights/{y}.csv').read().split()[1]) for y in (1990, 1991)))",
    # read straight from the URL, never saved
    "print(urllib.request.urlopen(base + '/airports.csv').read().decode().split()[1])",
]


def test_a_download_is_fetched_where_the_notebook_saved_it(tmp_path: Path, server: str,
                                                            monkeypatch) -> None:
    work = tmp_path / "nb"
    work.mkdir()
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    nbformat.write(notebook, work / "tutorial.ipynb")
    monkeypatch.setenv("FLO_TEST_BASE", server)
    out = tmp_path / "backpack"
    done = subprocess.run([*flo_audit_argv(), str(work / "tutorial.ipynb"), "-o", str(out),
                           "--backend", "strace"], capture_output=True, text=True,
                          timeout=AUDIT_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = yaml.safe_load((out / "data" / "data.yml").read_text())
    entries = {e["source"]: e for e in doc["profiles"][doc["default_profile"]]["data"]}
    assert set(entries) == {f"{server}/flights.tar.gz", f"{server}/airports.csv"}
    flights = entries[f"{server}/flights.tar.gz"]
    assert flights["target_location"] == "data/flights.tar.gz"
    assert flights["post_fetch"] == {"operation": "untar"}
    airports = entries[f"{server}/airports.csv"]
    assert airports["target_location"] == "airports.csv" and "post_fetch" not in airports

    run = tmp_path / "run"
    fetch(out, run)
    assert (run / "data" / "flights" / "1991.csv").read_text() == "delay\n5\n"
    assert (run / "airports.csv").read_text() == "code\nEWR\n"
