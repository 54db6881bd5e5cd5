"""The data draft's classification is pure: from a recorded list of events and the facts about
the disk it is given, with no file of the run present and the filesystem out of reach."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable
from typing import TypeVar

import pytest

from auditor.emit.data.classify import GONE, OnDisk, classify, needs_look, role_lookup
from auditor.emit.data.collect import DataCollector, DataRules
from auditor.emit.data.inputs import look
from auditor.events import Access

NB = "/nonexistent-flo/project/nb"  # nothing of the run is on this machine
HOME = "/nonexistent-flo/home"
T = TypeVar("T")

EVENTS = [
    Access(1, f"{NB}/in.csv", "r", t=1, cell=0),
    Access(1, f"{NB}/out/plot.png", "w", t=2, cell=1),
    Access(1, f"{NB}/step.parquet", "w", t=3, cell=1),
    Access(1, f"{NB}/step.parquet", "r", t=4, cell=2),
    Access(1, f"{HOME}/.aws/credentials", "r", t=5, cell=2),
    Access(1, f"{NB}/removed.tmp", "w", t=6, cell=2),  # made and removed: scratch
    Access(1, f"{NB}/runs.db", "rw", t=7, cell=3),  # opened for update, changed: an output
    Access(1, f"{NB}/helpers.py", "r", t=8, cell=0),  # the project's own code
    Access(1, f"{NB}/tables", "r", t=8, cell=0),  # a folder opened as a file
    Access(1, f"{NB}/kernel-machinery.json", "r", t=9, cell=None),  # between cells
    Access(2, f"{NB}/shards/part-0.csv", "r", t=10, cell=4),  # a worker's read
    Access(3, f"{NB}/traced.log", "w", t=11, cell=4),  # the tracer's own file
    Access(1, "/proc/self/status", "r", t=12, cell=0),
]

#: What the disk held after the run, as recorded: everything but removed.tmp.
DISK = {
    f"{NB}/in.csv": OnDisk(named=True, exists=True, mtime=0.5),
    f"{NB}/out/plot.png": OnDisk(named=True, exists=True, mtime=2),
    f"{NB}/step.parquet": OnDisk(named=True, exists=True, mtime=3),
    f"{HOME}/.aws/credentials": OnDisk(named=True, exists=True, mtime=0.1),
    f"{NB}/runs.db": OnDisk(named=True, exists=True, mtime=7.5),
    f"{NB}/helpers.py": OnDisk(named=True, exists=True, mtime=0.1),
    f"{NB}/tables": OnDisk(named=True, exists=True, folder=True, mtime=0.1),
    f"{NB}/shards/part-0.csv": OnDisk(named=True, exists=True, mtime=0.2),
}


def without_filesystem(call: Callable[[], T]) -> T:
    """`call()` with every look at the filesystem refused (OSError, as for a missing file) and
    counted; the test fails when there was any."""
    touched: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        touched.append(repr(args)[:80])
        raise FileNotFoundError(args[0] if args else "")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("stat", "lstat", "scandir", "listdir", "access"):
            patch.setattr(os, name, refuse)
        patch.setattr(builtins, "open", refuse)
        result = call()
    assert not touched, f"classification touched the filesystem: {touched}"
    return result


def collected() -> DataCollector:
    collector = DataCollector(DataRules(home=HOME, environ={}), lambda p, r: False, NB, NB)
    for event in EVENTS:
        collector.note(event)
    return collector


def test_classification_reads_only_events_and_facts() -> None:
    collector = collected()
    role_of = role_lookup({1: "manager", 2: "worker", 3: "tracer"})
    found = without_filesystem(lambda: classify(collector.paths, collector.listed, role_of,
                                                DISK, collector.place, started=1.0))
    assert sorted(found.inputs) == [f"{NB}/in.csv", f"{NB}/shards/part-0.csv"]
    assert found.inputs[f"{NB}/shards/part-0.csv"].pid == 2
    assert found.outputs == [f"{NB}/out/plot.png", f"{NB}/runs.db"]
    assert found.intermediates == [f"{NB}/step.parquet"]
    assert found.secrets == [f"{HOME}/.aws/credentials"]
    assert found.scratch == 1  # removed.tmp
    assert any("runs.db: opened for update and changed" in w for w in found.warnings)


def test_the_facts_decide_not_the_disk() -> None:
    """The same events with other facts: what the disk holds is what classify was told."""
    collector = collected()
    role_of = role_lookup({1: "manager", 2: "worker", 3: "tracer"})
    gone = {path: GONE for path in DISK}  # the run removed everything it made
    found = without_filesystem(lambda: classify(collector.paths, collector.listed, role_of,
                                                gone, collector.place, started=1.0))
    assert found.outputs == [] and found.intermediates == []
    assert found.scratch == 4  # plot.png, step.parquet, removed.tmp, runs.db
    # What was only read stays an input (hashing then reports it gone), the folder too now
    # that the facts no longer say it is one; the project's code is told by its name alone.
    assert sorted(found.inputs) == [f"{NB}/in.csv", f"{NB}/shards/part-0.csv", f"{NB}/tables"]


def test_look_gathers_the_facts_classify_asks_for(tmp_path) -> None:
    """The one stat pass before classification: a file, a folder, a dangling link, a gone
    path (absent from the answer)."""
    (tmp_path / "f.csv").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    paths = [str(tmp_path / n) for n in ("f.csv", "d", "dangling", "gone")]
    facts = look(paths)
    assert facts[paths[0]].exists and not facts[paths[0]].folder and facts[paths[0]].mtime
    assert facts[paths[1]].folder
    assert facts[paths[2]] == OnDisk(named=True, exists=False)
    assert paths[3] not in facts
    collector = collected()
    assert f"{NB}/in.csv" in needs_look(collector.paths, frozenset())
    assert "/proc/self/status" not in needs_look(collector.paths, frozenset())
