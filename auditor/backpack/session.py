"""audit/session.json: what ran and how it ended, as written by the recorder.

Written once per audit by auditor/record/session.py (`write_session`); read by derive, verify,
`flo-audit cells` and reproduce (`read_session`). Schema 1 is the first and only one: keys
added to it since (`code_cells`, `samples`, `pool`) are optional and default when absent. A
record of another schema, or one that is not a session at all, is refused with one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import RecordFormatError
from ..common.execution import FailedCell, Status

SESSION_FILE = "session.json"  # in the record folder (a backpack's audit/)
SCHEMA = 1
@dataclass
class Session:
    """session.json as data (docs/internals.md lists each key)."""

    notebook: str
    cwd: str
    backend: str  # "strace" | "ptrace" | "hooks"
    status: str  # a Status value ("unknown" when a record lacks it)
    started: float
    ended: float
    cells: list[tuple[int, int]]  # (seq, notebook index), in the order the kernel ran them
    code_cells: int | None = None
    failed_cell: FailedCell | None = None
    kernel: dict[str, Any] = field(default_factory=dict)  # hooks.jsonl's `kernel` record
    kernel_pid: int | None = None
    tracer_pid: int | None = None
    warnings: list[str] = field(default_factory=list)
    samples: str | None = None  # the samples file, in the same folder
    pool: dict[str, Any] | None = None  # --workers: the scheduler and the workers

    @property
    def complete(self) -> bool:
        return self.status == Status.COMPLETE

    @property
    def cell_of_seq(self) -> dict[int, int]:
        return dict(self.cells)

    @property
    def failed_index(self) -> int | None:
        return self.failed_cell.index if self.failed_cell else None

    @property
    def folder(self) -> str:
        """Where the notebook ran: its working folder, else the notebook's own folder."""
        return self.cwd or os.path.dirname(self.notebook)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "notebook": self.notebook, "cwd": self.cwd,
            "backend": self.backend, "started": self.started, "ended": self.ended,
            "status": self.status,
            "failed_cell": None if self.failed_cell is None else self.failed_cell.to_json(),
            "cells": [{"seq": seq, "index": index} for seq, index in self.cells],
            "code_cells": self.code_cells, "kernel": self.kernel,
            "kernel_pid": self.kernel_pid, "tracer_pid": self.tracer_pid,
            "warnings": self.warnings, "pool": self.pool, "samples": self.samples,
        }

    @classmethod
    def from_json(cls, data: Any, path: str | os.PathLike[str] = SESSION_FILE) -> Session:
        """The session in `data` (session.json's object); RecordFormatError naming `path` and
        what to do when it is not one this version reads."""
        if not isinstance(data, dict) or "backend" not in data or "kernel" not in data:
            raise RecordFormatError(f"{path}: expected an object with 'backend' and 'kernel' "
                                    "(docs/internals.md); re-run flo-audit on the notebook")
        schema = data.get("schema")
        if schema != SCHEMA:
            newer = isinstance(schema, int) and schema > SCHEMA
            raise RecordFormatError(
                f"{path}: schema {schema!r}, this flo-audit reads schema {SCHEMA}; "
                + ("upgrade flo-backpack to read it" if newer
                   else "re-run flo-audit on the notebook"))
        try:
            return cls(
                notebook=str(data.get("notebook") or ""), cwd=str(data.get("cwd") or ""),
                backend=str(data["backend"]), status=str(data.get("status") or "unknown"),
                started=float(data.get("started") or 0), ended=float(data.get("ended") or 0),
                cells=[(int(c["seq"]), int(c["index"])) for c in data.get("cells") or ()],
                code_cells=data.get("code_cells"),
                failed_cell=FailedCell.from_json(data.get("failed_cell")),
                kernel=dict(data.get("kernel") or {}), kernel_pid=data.get("kernel_pid"),
                tracer_pid=data.get("tracer_pid"),
                warnings=[str(w) for w in data.get("warnings") or ()],
                samples=data.get("samples"), pool=data.get("pool"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RecordFormatError(f"{path}: a field is malformed ({exc!r}); re-run flo-audit "
                                    "on the notebook") from None


def read_session(record_dir: str | os.PathLike[str]) -> Session:
    """The session of the record folder `record_dir` (a backpack's audit/)."""
    path = Path(record_dir) / SESSION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordFormatError(f"{path} is missing: {record_dir} is not an audit record "
                                "(give the audit/ folder of a backpack)") from None
    except (OSError, ValueError) as exc:
        raise RecordFormatError(f"{path} is not readable JSON ({exc}); "
                                "re-run flo-audit on the notebook") from None
    return Session.from_json(data, path)


def write_session(record_dir: str | os.PathLike[str], session: Session) -> Path:
    """session.json in `record_dir`, written whole (a temporary file renamed into place)."""
    path = Path(record_dir) / SESSION_FILE
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(session.to_json(), indent=1) + "\n", encoding="utf-8")
    os.replace(part, path)
    return path
