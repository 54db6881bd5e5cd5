"""Answers kept between audits on one machine: a JSON object in flo-backpack's cache folder.

What is slow to ask and rarely changes (dpkg's owner of a file, the guard around an import in
a library's source) is kept in `$XDG_CACHE_HOME/flo-backpack/NAME` (else ~/.cache/...), with
the state it is valid for: a file of another state, unreadable or torn, reads as empty. Only
a slower audit is at stake, never a different one: deleting the folder is always safe.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_folder() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "flo-backpack"


class Kept:
    """`data`: what was kept in `file` for `state` (empty otherwise); `save()` writes it back
    when `changed` (atomically: concurrent audits leave one whole file). `file` None keeps
    nothing."""

    def __init__(self, file: Path | None, state: str | None) -> None:
        self.file, self.state = file, state
        self.data: dict[str, Any] = {}
        self.changed = False
        if file is None or state is None:
            return
        try:
            kept = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(kept, dict) and kept.get("state") == state \
                and isinstance(kept.get("data"), dict):
            self.data = kept["data"]

    def save(self) -> None:
        """A cache that cannot be written is only a slower next audit: OSError is dropped."""
        if not self.changed or self.file is None or self.state is None:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=self.file.parent, prefix=f".{self.file.name}-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"state": self.state, "data": self.data}, out)
                os.replace(temp, self.file)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError:
            pass
