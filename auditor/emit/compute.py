"""Measuring the worker resources that go into `compute/compute.yml` (auditor/backpack/compute.py).

Measured from the recorder's psutil samples (audit/samples.jsonl) of the worker processes, each
together with its children (tools a task ran): peak resident memory, CPU time over wall time,
and the size of the files it wrote in its work area (emit/disk.py). Each value is rounded up
with the headroom stated in the file's comments. Without worker samples (no worker ran, or an
older record), the values are defaults and the file says so.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from ..backpack.compute import ComputeSpec
from .disk import DiskUse

MB = 1024 * 1024
# compute.yml memory becomes the Dask worker's memory limit, and Dask starts spilling at 60% of
# it and pauses the worker at 80%: the peak must sit under the first threshold, or a re-run can
# stall on a paused worker.
DASK_SPILL_FRACTION = 0.6
MEMORY_HEADROOM = 1 / DASK_SPILL_FRACTION  # x peak RSS
MEMORY_STEP = 256  # MB
MEMORY_FLOOR = 1024  # MB: a Dask worker with its runtime needs about this much anyway
DISK_HEADROOM = 2.0  # x the most a worker kept in files
DISK_STEP = 1024  # MB, also the least disk given
CPU_WINDOW_S = 1.0  # CPU rate is measured over windows at least this long
BUSY_CORES = 0.2  # a worker using this many cores in a window is running a task


def measure_compute(samples: Iterable[dict], worker_of: dict[int, int],
                    workers_seen: int, disk: DiskUse | None = None) -> ComputeSpec:
    """compute.yml values from the samples of worker processes.

    `worker_of` maps each sampled pid on the worker side to its worker (the task-running
    process at the top of its tree); `workers_seen` counts the workers the trace shows;
    `disk` is what the busiest worker kept in files (None: nothing written in a work area).
    """
    ticks: dict[int, dict[float, list[float]]] = defaultdict(dict)  # worker -> t -> [rss, cpu]
    for sample in samples:
        worker = worker_of.get(int(sample.get("pid", -1)))
        if worker is None or "rss" not in sample:
            continue
        row = ticks[worker].setdefault(float(sample["t"]), [0.0, 0.0])
        row[0] += sample.get("rss") or 0
        row[1] += sample.get("cpu") or 0.0
    if not ticks:
        spec = ComputeSpec()
        if workers_seen:
            spec.max_workers = workers_seen
            spec.notes["max-workers"] = f"{workers_seen} workers ran tasks (seen in the trace)"
            spec.notes["all"] = ("default, not measured: the workers ended before they could "
                                 "be sampled; edit to fit the workload")
            spec.measurements["workers_seen"] = workers_seen
        return spec
    peak_rss = max(row[0] for rows in ticks.values() for row in rows.values()) / MB
    written = disk.mb if disk is not None else 0.0
    peak_rate, mean_rate, busy = _cpu(ticks)
    cores = max(1, math.ceil(peak_rate - 0.15))
    memory = max(MEMORY_FLOOR, _round_up(peak_rss * MEMORY_HEADROOM, MEMORY_STEP))
    disk_mb = max(DISK_STEP, _round_up(written * DISK_HEADROOM, DISK_STEP))
    max_workers = busy or len(ticks)
    spec = ComputeSpec(min_workers=1, max_workers=max_workers, cores=cores, memory=memory,
                       disk=disk_mb, measured=True)
    spec.measurements = {"peak_rss_mb": round(peak_rss, 1), "disk_mb": round(written, 1),
                         "peak_cores": round(peak_rate, 2), "mean_cores": round(mean_rate, 2),
                         "workers_seen": workers_seen, "workers_sampled": len(ticks),
                         "peak_busy_workers": busy}
    spec.notes = {
        "min-workers": "one worker can run every task, one after the other",
        "max-workers": (f"{busy} workers ran tasks at the same time (of {workers_seen} seen)"
                        if busy else f"workers seen: {workers_seen}; none was measurably busy"),
        "cores": (f"peak {peak_rate:.2f} cores (CPU time over wall time, {CPU_WINDOW_S:g} s "
                  f"windows; mean {mean_rate:.2f}), rounded up"),
        "memory": (f"peak RSS {peak_rss:.0f} MB of one worker with its children, "
                   f"x{MEMORY_HEADROOM:.2f} (under Dask's {DASK_SPILL_FRACTION:.0%} spill "
                   f"threshold), rounded up to {MEMORY_STEP} MB, at least {MEMORY_FLOOR} MB"),
        "disk": _disk_note(disk),
    }
    return spec


def _disk_note(disk: DiskUse | None) -> str:
    if disk is None:
        return (f"no worker wrote files in its working or local directory; the least given, "
                f"{DISK_STEP} MB")
    return (f"{disk.mb:.1f} MB: the most one worker kept in files under its working or local "
            f"directory (peak of files open for writing {disk.peak_mb:.1f} MB, files left at "
            f"the end {disk.end_mb:.1f} MB, {disk.files} files), x{DISK_HEADROOM:g}, rounded "
            f"up to {DISK_STEP} MB")


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _cpu(ticks: dict[int, dict[float, list[float]]]) -> tuple[float, float, int]:
    """Peak and mean cores of one worker, and the most workers busy in the same window."""
    peak, mean = 0.0, 0.0
    busy_at: dict[int, set[int]] = defaultdict(set)  # whole second -> busy workers
    for worker, rows in ticks.items():
        times = sorted(rows)
        life = 0.0
        if len(times) >= 2 and times[-1] > times[0]:
            life = max(0.0, rows[times[-1]][1] - rows[times[0]][1]) / (times[-1] - times[0])
            mean = max(mean, life)
        j, windows = 0, 0
        for i, start in enumerate(times):
            j = max(j, i + 1)
            while j < len(times) and times[j] - start < CPU_WINDOW_S:
                j += 1
            if j >= len(times):
                break
            windows += 1
            rate = max(0.0, rows[times[j]][1] - rows[start][1]) / (times[j] - start)
            peak = max(peak, rate)
            if rate >= BUSY_CORES:
                busy_at[int(start)].add(worker)
        if not windows and len(times) >= 2:
            # A worker shorter-lived than a window (a pool child): its whole life is one.
            peak = max(peak, life)
            if life >= BUSY_CORES:
                busy_at[int(times[0])].add(worker)
    busy = max((len(workers) for workers in busy_at.values()), default=0)
    return peak, mean, busy
