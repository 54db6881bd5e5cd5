"""What runs beside the kernel during a recording: the resource sampler and the `--workers` pool.

One object for session.py to start before the kernel and stop at teardown (the sampler first,
so teardown's kills are not measured; then the pool, noting which workers had already ended).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Tracer
from .sampler import SAMPLES_FILE, Sampler
from .workers import ADDRESS_VARIABLE, WorkerPool, kernel_python

__all__ = ["SAMPLES_FILE", "Companions"]


class Companions:
    """The sampler (always) and the Dask pool (with `workers` > 0) of one recording."""

    def __init__(self, *, workers: int, kernel_name: str, python: str | None, tracer: Tracer,
                 record_dir: Path, cwd: Path, roots: list[int]) -> None:
        self.pool = (WorkerPool(workers, kernel_python(kernel_name, python), tracer, record_dir,
                                cwd, {}) if workers else None)
        # `roots` is the process tree's live list: the kernel is added to it once it runs.
        self.sampler = Sampler(record_dir / SAMPLES_FILE,
                               lambda: [*roots, *(self.pool.pids() if self.pool else ())],
                               skip_files=lambda: roots)

    def start(self, env: dict[str, str]) -> dict[str, str]:
        """Start the pool (before the kernel) and the sampler; the kernel's environment."""
        if self.pool is not None:
            self.pool.env = env
            env = {**env, ADDRESS_VARIABLE: self.pool.start()}  # a plain Client() finds it
        self.sampler.start()
        return env

    def stop(self) -> None:
        self.sampler.stop()
        if self.pool is not None:
            self.pool.stop()

    def pool_json(self) -> dict[str, Any] | None:
        return self.pool.to_json() if self.pool else None
