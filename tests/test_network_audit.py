"""What the run's own network use means: a local-IP probe is no remote input, a URL the run
served itself is not fetched (issue 11, items 4 and 7). Parser and draft units on recorded
lines and events; then real audits of the net_local_ip_probe and data_served_url fixtures, and
a flo-run --execute of the second backpack. No traffic leaves the machine: a UDP connect sends
nothing, and the only server is on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import AuditRun

from auditor.emit.data.collect import DataRules, draft_data
from auditor.emit.data.report import SERVED_URL_NOTE
from auditor.events import Accept, Access, Connect, read_jsonl
from auditor.record.strace_parse import parse_strace

PROBE = ('7 1.5 connect(3<UDP:[58251]>, {sa_family=AF_INET, sin_port=htons(80), '
         'sin_addr=inet_addr("8.8.8.8")}, 16) = 0')
ACCEPTED = ('8 2.0 accept4(4<TCP:[127.0.0.1:36233]>, {sa_family=AF_INET, '
            'sin_port=htons(44592), sin_addr=inet_addr("127.0.0.1")}, [16], SOCK_CLOEXEC) '
            '= 6<TCP:[127.0.0.1:36233->127.0.0.1:44592]>')
TCP = ('7 1.9 connect(5<TCP:[58259]>, {sa_family=AF_INET, sin_port=htons(443), '
       'sin_addr=inet_addr("93.184.215.14")}, 16) = -1 EINPROGRESS (Operation now in progress)')


def test_parser_marks_udp_connects_and_reads_the_served_port() -> None:
    events = [e for e in parse_strace(["7 1.0 execve(\"/bin/python\", [\"python\"], "
                                       "0x1 /* 1 vars */) = 0", PROBE, TCP, ACCEPTED])
              if e.kind in ("connect", "accept")]
    assert [(e.kind, e.address, getattr(e, "datagram", None)) for e in events] == [
        ("connect", "8.8.8.8:80", True), ("connect", "93.184.215.14:443", False),
        ("accept", "127.0.0.1:36233", None)]


def draft(events: list, tmp_path: Path):
    return draft_data(events, {1: "manager"}, owned=lambda p, r: False,
                      rules=DataRules(home="/nonexistent", environ={}),
                      notebook_dir=str(tmp_path), cwd=str(tmp_path))


def test_udp_probe_is_no_remote_connection_tcp_still_is(tmp_path: Path) -> None:
    result = draft([Connect(1, "8.8.8.8:80", t=1, cell=0, datagram=True),
                    Connect(1, "93.184.215.14:443", t=2, cell=0)], tmp_path)
    assert result.remote == ["93.184.215.14:443"]


def test_url_on_a_port_the_run_accepted_on_is_served_not_fetched(tmp_path: Path) -> None:
    served = tmp_path / "served" / "table.csv"
    served.parent.mkdir()
    served.write_text("x\n1\n")
    url = "http://127.0.0.1:36233/table.csv"
    events = [Accept(1, "127.0.0.1:36233", t=2, cell=1),
              Connect(1, url, t=1, cell=1, url=url),
              Connect(1, "127.0.0.1:36233", t=1, cell=1),
              Access(1, str(served), "r", t=3, cell=1)]
    result = draft(events, tmp_path)
    assert result.served_urls == [url]
    assert [e.target_location for e in result.inputs] == ["served/table.csv"]  # what it served
    alone = draft([Connect(1, url, t=1, cell=1, url=url)], tmp_path)  # nobody of ours served it
    assert alone.served_urls == [] and [e.source for e in alone.inputs] == [url]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ptrace", "strace"])
def test_local_ip_probe_is_left_out_of_the_report(
        backend: str, audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("net_local_ip_probe", backend)
    assert run.returncode == 0, run.describe()
    probe = run.scenario.expect["probe"]
    no_route = "no route to 8.8.8.8 here: the connect failed, nothing to leave out"
    if backend == "strace":
        trace = run.path("audit/trace.strace").read_text(encoding="utf-8", errors="replace")
        if f'inet_addr("{probe.split(":")[0]}")' not in trace:
            pytest.skip(no_route)
        assert "UDP:" in trace  # kept in the raw record, with the socket's protocol
    else:
        probes = [e for e in read_jsonl(str(run.path("audit/trace.jsonl")))
                  if isinstance(e, Connect) and e.address == probe]
        if not probes:
            pytest.skip(no_route)
        assert all(e.datagram for e in probes), probes  # the record says it was UDP
    data = run.load_json("audit/summary.json")["data"]
    assert data["remote_connections"] == [], data
    assert "remote connection" not in run.stdout and probe not in run.stdout


@pytest.mark.slow
def test_self_served_url_is_not_fetched_and_the_backpack_reruns(
        audit_runs: Callable[..., AuditRun], tmp_path: Path) -> None:
    run = audit_runs("data_served_url")
    assert run.returncode == 0, run.describe()
    data = run.load_json("audit/summary.json")["data"]
    assert [u["note"] for u in data["served_urls"]] == [SERVED_URL_NOTE], data
    assert data["served_urls"][0]["url"].endswith("/table.csv")
    assert "served by the run: not fetched" in run.stdout
    yml = yaml.safe_load(run.path("data/data.yml").read_text(encoding="utf-8"))
    entries = yml["profiles"][yml["default_profile"]]["data"]
    assert [e["target_location"] for e in entries] == ["served/table.csv"], entries
    assert all(e["source_type"] not in ("http", "https") for e in entries), entries
    out = tmp_path / "run.ipynb"
    done = subprocess.run([sys.executable, "-m", "provisioner.cli", str(run.out), "--execute",
                           "-o", str(out), "--json", "--cache-dir", str(tmp_path / "cache"),
                           "--scratch-dir", str(tmp_path / "scratch")],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["status"] == "complete", (result, done.stderr[-3000:])
    executed = nbformat.read(out, as_version=4)
    printed = [o.get("text", "") for c in executed.cells if c.cell_type == "code"
               for o in c.get("outputs", ())]
    assert "3\n" in printed, printed
