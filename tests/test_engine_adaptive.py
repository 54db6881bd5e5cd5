"""dask-local adaptive scaling on real processes: up to max-workers under load, back to
min-workers when idle, with the retired workers' data moved (not lost, not recomputed) and every
process gone after teardown; and the scaling rule itself on plain numbers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from provisioner.engines import EngineSpec
from provisioner.engines.dask_local import DaskLocal, DaskLocalCluster, decide
from tests.test_engine import PYTHON, token_holders


class QuickDaskLocal(DaskLocal):
    """The dask-local engine with a short watcher interval and idle cooldown (not registered)."""

    adapt_interval = 0.3
    scale_down_after = 2.0
    exit_grace = 10.0


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:g} s"
        time.sleep(0.2)


def test_scales_up_to_max_then_back_to_min_keeping_data(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    token = f"flo-test-adapt-down-{time.time_ns()}"
    # A memory limit lets the scheduler see room for the retired workers' data elsewhere.
    spec = EngineSpec(run_dir=tmp_path / "run", worker_python=PYTHON, workers=1, max_workers=3,
                      threads=1, memory_mb=400, token=token)
    cluster = QuickDaskLocal().start(spec)

    def stamp(index: int) -> tuple[int, int, int]:
        """A result a recomputation could not reproduce: the computing process and the time
        (a local function, so it travels by value: the workers cannot import the tests)."""
        import os
        import time
        return index, os.getpid(), time.time_ns()

    assert isinstance(cluster, DaskLocalCluster)
    try:
        with distributed.Client(cluster.scheduler_address, timeout=30) as client:
            load = client.map(time.sleep, [0.5] * 60, pure=False)
            wait_until(lambda: len(cluster.running_workers()) == 3, 60,
                       "three worker processes under load")
            client.wait_for_workers(3, timeout=60)
            up = [cluster.worker_processes[i] for i in cluster.running_workers()]
            assert all(psutil.Process(p.pid).is_running() for p in up)

            # One result on each worker, computed there (ahead of the load, which keeps the
            # workers busy meanwhile) and held: two of them must move when workers retire.
            addresses = sorted(client.scheduler_info()["workers"])
            held = [client.submit(stamp, i, workers=[a], allow_other_workers=False, pure=False,
                                  priority=10) for i, a in enumerate(addresses)]
            distributed.wait(held, timeout=30)
            scattered = client.scatter([bytes([i]) * 200_000 for i in range(3)])
            client.cancel(load)
            client.publish_dataset(held=held)
            before = client.gather(held)
            assert len({pid for _, pid, _ in before}) == 3, "each result from its own worker"

            wait_until(lambda: len(cluster.running_workers()) == 1 and len(cluster.retired) == 2,
                       45, "back to min-workers (1) once idle, two workers retired")
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 20,
                       "the scheduler down to one worker")
            kept = client.get_dataset("held")
            distributed.wait([*kept, *scattered], timeout=20)
            assert client.gather(kept) == before, \
                "results held before the scale-down are the same objects, not recomputed"
            assert client.gather(scattered) == [bytes([i]) * 200_000 for i in range(3)]

            retired = [p for i, p in enumerate(cluster.worker_processes) if i in cluster.retired]
            assert len(retired) == 2 and all(p.returncode is not None for p in retired), \
                "retired workers exited and were reaped"
            assert not any(psutil.pid_exists(p.pid) and psutil.Process(p.pid).status()
                           == psutil.STATUS_ZOMBIE for p in retired)
            assert cluster.to_dict()["workers"] == 1
            assert set(cluster.worker_pids).isdisjoint(p.pid for p in retired)
    finally:
        survivors = cluster.stop()
    assert survivors == [] and token_holders(token) == []
    assert all(p.returncode is not None for p in cluster.worker_processes)
    assert cluster.scheduler_process is not None and cluster.scheduler_process.returncode \
        is not None


@pytest.mark.parametrize(("target", "running", "below_since", "now", "expected"), [
    (5, 1, None, 0.0, (2, 0, None)),  # up at once, capped at max (3)
    (0, 3, None, 0.0, (0, 0, 0.0)),  # below: the cooldown starts
    (0, 3, 0.0, 1.9, (0, 0, 0.0)),  # still cooling down
    (0, 3, 0.0, 2.0, (0, 2, None)),  # retire down to min (1), not to the target (0)
    (2, 3, 0.0, 5.0, (0, 1, None)),
    (3, 3, 0.0, 5.0, (0, 0, None)),  # back at the running count: the cooldown resets
    (1, 1, 0.0, 5.0, (0, 0, None)),  # at min: nothing to retire
])
def test_scaling_rule(target: int, running: int, below_since: float | None, now: float,
                      expected: tuple[int, int, float | None]) -> None:
    step = decide(target, running, low=1, high=3, below_since=below_since, now=now, cooldown=2.0)
    assert (step.start, step.retire, step.below_since) == expected
