"""Resource samples of every process of a recording, for compute.yml: audit/samples.jsonl.

A thread samples each process of the recording (the kernel's tree and the `--workers` pool)
every `interval` seconds with psutil: resident memory, CPU time (user + system) and bytes
written to storage (`write_bytes`). Roles are not known yet while the notebook runs (they
come from the trace), so every process is sampled and derive picks the workers' samples.
One JSON object per process per tick: {"t", "pid", "ppid", "rss", "cpu", "wb"} (bytes,
seconds); sampling keeps running through teardown's start so short runs still get a tick.

Disk: `write_bytes` reads 0 on many kernels, so each tick also lists the regular files a
process has open for writing, with their size now (`files`: path -> bytes, and its `cwd`),
for every process but the roots `skip_files` names (the kernel and its launcher: the manager).
That is a readlink per open descriptor, not a walk of any folder. When sampling stops, one
last line {"t", "end": {path: bytes}} gives the size of each such file that still exists.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from ..common.tree import descendant_pids

log = logging.getLogger("flo.record")

SAMPLES_FILE = "samples.jsonl"
INTERVAL_S = 0.2


class Sampler:
    """Samples the processes under `roots()` (and all their descendants) into `path`."""

    def __init__(self, path: Path, roots: Callable[[], list[int]],
                 interval: float = INTERVAL_S,
                 skip_files: Callable[[], list[int]] = list) -> None:
        self.path = Path(path)
        self.roots = roots
        self.skip_files = skip_files
        self._written: set[str] = set()  # every file seen open for writing
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        self._known: dict[int, psutil.Process] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flo-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take a last sample, stop the thread, close the file; safe to call twice."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        if not self._out.closed:
            self._out.close()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # a sampler must never break the recording
                log.debug("sampling failed: %s", exc)
            if self._stop.wait(self.interval):
                break
        try:
            self.sample()
            self._end_sizes()
        except Exception as exc:
            log.debug("last sample failed: %s", exc)

    def _end_sizes(self) -> None:
        end = {}
        for path in sorted(self._written):
            try:
                end[path] = os.stat(path).st_size
            except OSError:
                continue  # deleted: its size while open is in the ticks
        if not self._out.closed:
            self._out.write(json.dumps({"t": round(time.time(), 3), "end": end},
                                       separators=(",", ":")) + "\n")
            self._out.flush()

    def sample(self) -> None:
        """One tick: a line per living process of the recording."""
        now = time.time()
        processes: dict[int, psutil.Process] = {}
        roots = self.roots()
        for pid in [*roots, *descendant_pids(roots)]:
            try:
                processes.setdefault(pid, self._known.get(pid) or psutil.Process(pid))
            except psutil.Error:
                continue
        lines = []
        skip = set(self.skip_files())
        for pid, proc in processes.items():
            try:
                with proc.oneshot():
                    cpu = proc.cpu_times()
                    record: dict[str, object] = {
                        "t": round(now, 3), "pid": pid, "ppid": proc.ppid(),
                        "rss": proc.memory_info().rss,
                        "cpu": round(cpu.user + cpu.system, 3), "wb": _written(proc)}
                files = {} if pid in skip else _open_for_writing(proc)
                if files:
                    record.update(files=files, cwd=proc.cwd())
                    self._written.update(files)
            except psutil.Error:
                continue
            self._known[pid] = proc  # keeps psutil's create-time check against pid reuse
            lines.append(json.dumps(record, separators=(",", ":")))
        if lines and not self._out.closed:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()


def _written(proc: psutil.Process) -> int | None:
    try:
        return int(proc.io_counters().write_bytes)
    except (psutil.Error, AttributeError, NotImplementedError):
        return None


def _open_for_writing(proc: psutil.Process) -> dict[str, int]:
    """Regular files `proc` has open in a writing mode, with their size now."""
    sizes = {}
    for opened in proc.open_files():
        if opened.mode == "r":
            continue
        try:
            sizes[opened.path] = os.stat(opened.path).st_size
        except OSError:
            continue
    return sizes


def read_samples(record_dir: Path) -> list[dict]:
    """The samples of a record folder ([] when it has none: older audits, hooks-only)."""
    path = Path(record_dir) / SAMPLES_FILE
    if not path.is_file():
        return []
    samples = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            try:
                samples.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a kill
    return samples
