"""The `disk` figure of compute.yml: how much a worker keeps in files under its work area.

A worker's work area is its working directory and its local directory (Dask's
`dask-scratch-space/worker-*`, spill files included). Two sources, both in the record:

- the sampler's ticks: the size of each file a worker-side process had open for writing, so a
  file written and deleted within a task still counts at its peak (audit/samples.jsonl);
- the files the trace shows a worker-side process opened for writing (written and closed
  between two ticks), at their size when the run ended: stat'ed once when the audit derives
  first and kept in audit/written.json, so a later `flo-audit derive` gives the same value.

Per worker, the figure is the larger of the peak total seen at one tick and the total at the
end; the worker with the most is what compute.yml provisions for.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

WRITTEN_FILE = "written.json"
SCRATCH_MARK = "/dask-scratch-space/"  # under a Dask worker's local directory
_PSEUDO = ("/dev/", "/proc/", "/sys/", "/run/")
MB = 1024 * 1024


@dataclass
class DiskUse:
    """Bytes in MB of the busiest worker: the figure, its peak at a tick, its total at the end."""

    mb: float
    peak_mb: float
    end_mb: float
    files: int  # files counted for that worker


def in_work_area(path: str, cwd: str | None) -> bool:
    """Whether `path` is under `cwd` or a Dask worker's local directory."""
    if path.startswith(_PSEUDO):
        return False
    if SCRATCH_MARK in path:
        return True
    return bool(cwd and path.startswith(cwd.rstrip("/") + "/"))


def written_sizes(record_dir: Path | None, paths: Iterable[str]) -> tuple[dict[str, int], bool]:
    """Sizes of `paths` that exist: from audit/written.json when it is there, else stat'ed now.

    The flag says the sizes are new (the caller keeps them with `save_written`).
    """
    stored = Path(record_dir) / WRITTEN_FILE if record_dir is not None else None
    if stored is not None and stored.is_file():
        try:
            return {str(k): int(v) for k, v in json.loads(stored.read_text()).items()}, False
        except (OSError, ValueError, AttributeError):
            pass  # unreadable: measure again rather than fail a derive
    sizes = {}
    for path in sorted(set(paths)):
        try:
            sizes[path] = os.stat(path).st_size
        except OSError:
            continue
    return sizes, True


def save_written(record_dir: Path, sizes: dict[str, int]) -> None:
    """Keep the sizes `written_sizes` measured in the record folder."""
    (Path(record_dir) / WRITTEN_FILE).write_text(json.dumps(sizes, indent=1, sort_keys=True)
                                                 + "\n", encoding="utf-8")


def worker_written(writes: dict[str, set[int]], worker_of: dict[int, int],
                   cwd: str | None) -> dict[int, set[str]]:
    """Worker -> the files in its work area the trace shows it (or its children) writing."""
    by_worker: dict[int, set[str]] = defaultdict(set)
    for path, pids in writes.items():
        if not in_work_area(path, cwd):
            continue
        for pid in pids:
            worker = worker_of.get(pid)
            if worker is not None:
                by_worker[worker].add(path)
    return by_worker


def measure_disk(samples: Iterable[dict], worker_of: dict[int, int],
                 traced: dict[int, set[str]], sizes: dict[str, int],
                 cwd: str | None) -> DiskUse | None:
    """The disk figure of the busiest worker, or None when no worker wrote in its work area.

    `traced`: worker -> files the trace shows it writing (`worker_written`); `sizes`: their
    size at the end (`written_sizes`); `cwd`: the run's folder, for processes never sampled.
    """
    ticks: dict[int, dict[float, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    paths: dict[int, set[str]] = defaultdict(set)
    end: dict[str, int] = {}
    for sample in samples:
        if "end" in sample:
            end.update(sample["end"])
            continue
        worker = worker_of.get(int(sample.get("pid", -1)))
        if worker is None or not sample.get("files"):
            continue
        where = sample.get("cwd") or cwd
        for path, size in sample["files"].items():
            if in_work_area(path, where):
                ticks[worker][float(sample["t"])][path] = int(size)
                paths[worker].add(path)
    for worker, files in traced.items():
        paths[worker] |= files
    best: DiskUse | None = None
    for worker, files in paths.items():
        peak = max((sum(tick.values()) for tick in ticks[worker].values()), default=0)
        at_end = sum(end.get(p, sizes.get(p, 0)) for p in files)
        use = DiskUse(max(peak, at_end) / MB, peak / MB, at_end / MB, len(files))
        if best is None or use.mb > best.mb:
            best = use
    return best if best is not None and best.files else None
