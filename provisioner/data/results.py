"""What fetching and verifying data produced: one result per entry, a report per command."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from auditor.common.errors import FloError


class DataError(FloError):
    """A data entry could not be put in place or did not verify. The message is one line naming
    the entry, what was expected and what was found; `report` holds every entry's result."""

    def __init__(self, message: str, entry: str | None = None,
                 report: FetchReport | None = None) -> None:
        super().__init__(message)
        self.entry = entry
        self.report = report


class Mismatch(DataError):
    """Content in place differs from data.yml (size, file count or checksum)."""


@dataclass
class EntryResult:
    """One entry: where it came from, where it went, and how that went.

    `status` is one of: fetched, present (already in place and verified), in place (used at
    its source, nothing copied), verified, unchecked, failed, cancelled.
    """

    name: str
    source: str
    target: str | None
    bytes: int = 0
    seconds: float = 0.0
    from_cache: bool = False
    ok: bool = True
    message: str = ""
    status: str = ""
    extracted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class _Report:
    backpack: Path
    run_dir: Path | None
    profile: str | None
    entries: list[EntryResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 2

    @property
    def problems(self) -> list[EntryResult]:
        return [e for e in self.entries if not e.ok and e.status != "cancelled"]

    def to_dict(self) -> dict:
        return {"backpack": str(self.backpack),
                "run_dir": str(self.run_dir) if self.run_dir else None,
                "profile": self.profile, "ok": self.ok,
                "bytes": sum(e.bytes for e in self.entries),
                "seconds": round(self.seconds, 3),
                "entries": [e.to_dict() for e in self.entries]}


@dataclass
class FetchReport(_Report):
    """Every entry of the chosen profile, fetched (or found in place) and verified."""


@dataclass
class VerifyReport(_Report):
    """Checksums and sizes of what is in place, entry by entry."""
