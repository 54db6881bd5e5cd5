"""kernels/flo_net.py in a real interpreter: URLs fetched by urllib and http.client, host
names of plain socket connects, and never a header's content in the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import STAND_IN_SHELL

KERNEL_SIDE = Path(__file__).resolve().parent.parent / "kernels" / "flo_kernel.py"

SCRIPT = r'''
import functools, http.client, http.server, os, runpy, socket, sys, threading, urllib.request

kernel_side, log, served = sys.argv[1:4]

''' + STAND_IN_SHELL + r'''
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=served)
handler.log_message = lambda *a: None
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]

runpy.run_path(kernel_side, run_name="_flo_backpack_kernel")["attach"](
    Shell(), {"log": log, "marks": False})
urllib.request.urlopen(f"http://127.0.0.1:{port}/a.csv?rows=2").read()
conn = http.client.HTTPConnection("localhost", port)
conn.request("GET", "/b.csv", headers={"Authorization": "Bearer SECRET-HEADER-7f3a"})
conn.getresponse().read()
socket.create_connection(("localhost", port)).close()
server.shutdown()
print(port)
'''


def test_urls_and_named_connects(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.csv").write_text("x\n1\n")
    (served / "b.csv").write_text("y\n2\n")
    log = tmp_path / "hooks.jsonl"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(KERNEL_SIDE), str(log), str(served)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    port = int(done.stdout.strip())
    text = log.read_text()
    assert "SECRET-HEADER" not in text  # request headers are never logged
    records = [json.loads(line) for line in text.splitlines()]
    urls = [(r["url"], r.get("via")) for r in records if r["ev"] == "url"]
    if sys.version_info >= (3, 11):  # http.client.send is audited from 3.11 on
        assert urls == [(f"http://127.0.0.1:{port}/a.csv?rows=2", None),
                        (f"http://127.0.0.1:{port}/a.csv?rows=2", "http.client"),
                        (f"http://localhost:{port}/b.csv", "http.client")]
    connects = [(r["address"], r.get("host")) for r in records if r["ev"] == "connect"]
    # An address looked up by name keeps the name; an IP literal has none.
    assert connects[0] == (f"127.0.0.1:{port}", None)
    assert connects[-1] == (f"127.0.0.1:{port}", "localhost")
    kernel = records[0]
    assert kernel["ev"] == "kernel" and kernel["home"] == str(Path.home())
