"""Temporary folders left by a flo-audit or flo-run that was killed, and their sweep.

A SIGKILL runs no `finally`: the audit's record folder (flo-audit-*), the kernel's connection
folder, flo-run's run folder (run-*) stay behind. Each is made by `owned_folder`, which writes
an owner file naming the process that made it: its pid and start time (a reused pid is another
process) and the host (a scratch folder shared by several nodes is judged only by the node that
wrote it). The next start of either command calls `sweep`, which removes the folders whose owner
is gone. A folder without our owner file, or of another user, is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psutil

log = logging.getLogger("flo.stale")

OWNER_FILE = ".flo-owner.json"
#: The folders flo-audit makes in the temporary directory (the record, the kernel's
#: connection file, the --workers scratch); flo-run's run folders start with "run-".
AUDIT_PREFIXES = ("flo-audit-", "flo-kernel-", "flo-workers-")
RUN_PREFIXES = ("run-",)
#: The kernelspec folder flo-run's headless runner makes in the temporary directory.
KERNELSPEC_PREFIX = "flo-run-kernelspec-"
#: psutil's start times come from the same clock ticks each time: equal within a tick.
_SAME_START_S = 0.05


def owned_folder(prefix: str, parent: str | os.PathLike[str] | None = None) -> Path:
    """A new folder (`tempfile.mkdtemp`) holding the owner file of this process."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    me = psutil.Process()
    owner = {"pid": me.pid, "started": me.create_time(), "host": socket.gethostname()}
    part = folder / (OWNER_FILE + ".part")
    part.write_text(json.dumps(owner) + "\n", encoding="utf-8")
    os.replace(part, folder / OWNER_FILE)
    return folder


def release(folder: str | os.PathLike[str]) -> None:
    """Keep `folder` for good: without its owner file, no sweep removes it."""
    Path(folder, OWNER_FILE).unlink(missing_ok=True)


def sweep(parent: str | os.PathLike[str] | None, prefixes: Sequence[str]) -> list[Path]:
    """Remove the folders in `parent` (default: the temporary directory) named with one of
    `prefixes` whose owner process is gone; returns them."""
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(tuple(prefixes)) or not _own_folder(entry):
            continue
        folder = Path(entry.path)
        owner = _owner(folder)
        if owner is None or _alive(owner):
            continue
        log.info("removing %s, left by process %s that is gone", folder, owner.get("pid"))
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _own_folder(entry: os.DirEntry[str]) -> bool:
    """A real folder (not a link to one) of the user running us."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def _owner(folder: Path) -> dict | None:
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    return owner


def _alive(owner: dict) -> bool:
    """Whether the process that wrote `owner` still runs (another host's: assumed so)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        proc = psutil.Process(owner["pid"])
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # not allowed to look: leave it
        return True
    recorded = owner.get("started")
    return not isinstance(recorded, (int, float)) or abs(started - recorded) < _SAME_START_S
