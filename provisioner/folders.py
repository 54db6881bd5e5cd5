"""The folders flo-run writes into (environment cache, scratch) and the error when it cannot.

A read-only mount, a folder of another user or a full disk shows up as an `OSError` at the first
write; `writing_into` turns it into one line naming the folder and how to choose another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from auditor.common.errors import FloError


@dataclass(frozen=True)
class Place:
    """A folder flo-run writes into, as the user names and overrides it."""

    what: str  # "the environment cache"
    option: str  # "--cache-dir"
    variable: str | None = None  # "FLO_CACHE_DIR"

    def how_to_choose(self) -> str:
        return self.option + " DIR" + (f" or ${self.variable}" if self.variable else "")


CACHE = Place("the environment cache", "--cache-dir", "FLO_CACHE_DIR")
SCRATCH = Place("the scratch folder", "--scratch-dir", "FLO_SCRATCH_DIR")
RUN_DIR = Place("the run folder", "--run-dir")


class NotWritable(FloError):
    """A folder flo-run must write into cannot be written (read-only, not ours, full)."""

    def __init__(self, folder: Path, place: Place, reason: str) -> None:
        super().__init__(f"{place.what} {folder} is not writable ({reason}); choose another "
                         f"with {place.how_to_choose()}")
        self.folder = folder
        self.place = place
        self.reason = reason


@contextmanager
def writing_into(folder: Path, place: Place) -> Iterator[None]:
    """Run the first writes into `folder` (creating it, a lock or a temporary folder in it);
    an `OSError` they raise becomes `NotWritable`."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NotWritable(folder, place, reason) from exc

