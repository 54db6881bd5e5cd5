"""The environment index built while the notebook runs, for derive to take when it is done.

The index (path -> owning distribution) depends only on the kernel's environment, which the
kernel side names at bootstrap (its `kernel` record), so the audit builds it in a thread of its
own process during the run, where a core is mostly idle, instead of after it. derive takes it
only if nothing was installed or removed meanwhile (a cell's `%pip install` makes a dist-info
folder): every folder the index was read from keeps the modification time it had before the
build began (a folder's mtime moves when an entry is added, removed or renamed in it),
else derive indexes again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from .base import Environment
from .index import EnvIndex, index_environment

log = logging.getLogger("flo.resolve")


class IndexAhead:
    """One index, built in a daemon thread once `start` names the environment."""

    def __init__(self, exclude_names: Iterable[str] = ()) -> None:
        self.exclude_names = tuple(exclude_names)
        self.env: Environment | None = None
        self._stamps: dict[str, int | None] = {}
        self._index: EnvIndex | None = None
        self._thread: threading.Thread | None = None

    def start(self, kernel: dict) -> None:
        """Begin indexing the environment of this kernel record (nothing if it has none)."""
        if self._thread is not None:
            return
        try:
            self.env = Environment.from_kernel_record(kernel)
        except Exception as exc:  # an incomplete record: derive says so itself
            log.debug("no index ahead: %s", exc)
            return
        self._stamps = _stamps(self.env)
        self._thread = threading.Thread(target=self._build, name="flo-index-ahead", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        assert self.env is not None
        try:
            self._index = index_environment(self.env, exclude_names=self.exclude_names)
        except Exception as exc:  # derive indexes again and reports what fails there
            log.debug("index ahead failed: %s", exc)

    def take(self, env: Environment, exclude_names: Iterable[str] = ()) -> EnvIndex | None:
        """The index, if it was built for `env` (and the same exclusions) and the environment
        has not changed since; None: index it now."""
        if self._thread is None or env != self.env or tuple(exclude_names) != self.exclude_names:
            return None
        self._thread.join()
        if self._index is None or _stamps(env) != self._stamps:
            return None
        return self._index


def _stamps(env: Environment) -> dict[str, int | None]:
    """The mtime (ns) of each folder the scanners read: the import path's folders and the
    prefix's conda-meta; None for one that is not there."""
    stamps: dict[str, int | None] = {}
    for folder in (*env.paths, os.path.join(env.prefix, "conda-meta")):
        try:
            stamps[folder] = os.stat(folder).st_mtime_ns
        except OSError:
            stamps[folder] = None
    return stamps
