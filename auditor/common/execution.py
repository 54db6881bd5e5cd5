"""How an execution of a notebook ended, in the words flo-audit and flo-run both use.

The audit's recorder (auditor/record/session.py) and flo-run's runner (provisioner/runner.py)
both run a notebook cell by cell under nbclient, and both report the end the same way: one
`Status` (session.json's `status`, summary.json's, flo-run's `--json`) and, for a cell that
raised, one `FailedCell`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Status(str, Enum):
    """How a run ended (a `str`: compares and serialises as its value)."""

    COMPLETE = "complete"
    FAILED = "failed"  # a cell raised
    TIMEOUT = "timeout"  # a cell ran longer than --timeout
    KERNEL_DIED = "kernel-died"
    WORKER_DIED = "worker-died"  # a worker ended while a cell ran (audit --workers, derive)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FailedCell:
    """The cell that raised: its notebook index (0-based, markdown counted) and the error."""

    index: int
    ename: str
    evalue: str

    @property
    def line(self) -> str:
        """`cell 3 raised ValueError: bad input`, on one line however long the value."""
        said = f"cell {self.index} raised {self.ename or 'an error'}"
        value = " ".join(self.evalue.split())
        return f"{said}: {value}" if value else said

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "ename": self.ename, "evalue": self.evalue}

    @classmethod
    def from_json(cls, data: Any) -> FailedCell | None:
        """The record in `data` (a JSON object), or None for none; KeyError/TypeError/
        ValueError when it is malformed (the caller names the file)."""
        if not data:
            return None
        return cls(int(data["index"]), str(data.get("ename") or ""),
                   str(data.get("evalue") or ""))
