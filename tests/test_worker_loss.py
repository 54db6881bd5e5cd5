"""A worker killed mid-run does not fail the run (Dask recomputes its tasks on the others), and
flo-run's closing report says how many workers were lost and how each ended."""

from __future__ import annotations

import json
import re

import nbformat
import pytest

from tests.test_run_e2e import (  # noqa: F401 (places: the module's cache and scratch)
    flo_run,
    hand_backpack,
    leftovers,
    needs_py311,
    places,
    result_of,
    stream_text,
)

pytestmark = pytest.mark.slow

START = """\
import json, os, time
from distributed import Client

client = Client()
client.wait_for_workers(2)
def parent(pid):  # the `dask worker` process flo-run started (the nanny) of a worker process
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
nannies = sorted({parent(pid) for pid in client.run(os.getpid).values()})
print(json.dumps(nannies))"""

KILL_ONE = """\
def slow(i):
    time.sleep(0.3)
    return i * i

futures = client.map(slow, range(20), pure=False)
time.sleep(1.0)
os.kill(nannies[0], 9)
print(sum(client.gather(futures)))"""


@needs_py311
def test_a_worker_killed_mid_run_is_survived_and_reported(places) -> None:  # noqa: F811
    bp = hand_backpack(places["base"] / "loss", [START, KILL_ONE], min_workers=2)
    out = places["base"] / "loss-run.ipynb"
    done = flo_run([str(bp), "--execute", "-o", str(out), "--json"], places)
    result = result_of(done)
    assert result["status"] == "complete", result
    cells = nbformat.read(out, as_version=4).cells
    killed = json.loads(stream_text(cells[0]))[0]
    assert stream_text(cells[1]).strip() == str(sum(i * i for i in range(20)))
    assert result["cluster"]["lost_workers"] == 1
    [note] = [n for n in result["notes"] if "lost during the run" in n]
    assert re.search(rf"1 worker\(s\) lost during the run \(worker \d \(pid {killed}\) was "
                     r"killed by SIGKILL\)", note), note
    assert leftovers(places["cache"], places["scratch"]) == []


@needs_py311
def test_a_run_that_loses_no_worker_says_nothing_of_it(places) -> None:  # noqa: F811
    bp = hand_backpack(places["base"] / "noloss", [START], min_workers=2)
    done = flo_run([str(bp), "--execute", "-o", str(places["base"] / "noloss.ipynb"),
                    "--json"], places)
    result = result_of(done)
    assert result["status"] == "complete", result
    assert "lost_workers" not in result["cluster"]
    assert not [n for n in result["notes"] if "lost" in n]
