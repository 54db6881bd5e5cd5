"""audit/summary.json: the machine-readable account of one audit.

Written by flo-audit's derive (auditor/emit/report.py builds it; auditor/emit/data/,
the minimize and verify steps add their parts) and printed by `flo-audit --json`; read back by
flo-run (which notebook the audit ran, whether the run completed, what the notebook wrote),
by `--verify`, by `flo-audit cells` and by `flo-audit diff` (what each cell used: `cells`).
Schema 1 is the first and only one; a summary of a newer schema is refused with a line saying
to upgrade, one without a schema number (or of an older, unknown one) with a line saying to
re-derive.

`Summary` types the parts other commands read; `doc` keeps the whole object as written, so a
reader of this version loses nothing a newer writer added.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import SpecError
from ..common.execution import Status

SUMMARY = "audit/summary.json"
SCHEMA = 1


@dataclass(frozen=True)
class CellUse:
    """One code cell's line of summary.json's `cells`: what it used (emit/report.py)."""

    index: int  # the cell's notebook index (markdown cells counted)
    source: str
    packages: tuple[str, ...] = ()  # the distributions it used, by name
    files: tuple[str, ...] = ()  # the workflow and unknown files it read

    @classmethod
    def from_json(cls, doc: Any, path: str | os.PathLike[str], key: str) -> CellUse:
        """The cell in `doc`; SpecError naming `path` and `key` (`cells[2]`) when it is not one."""
        if not isinstance(doc, dict):
            raise SpecError(path, key, "an object with index, source, packages, files",
                            type(doc).__name__)
        index, source = doc.get("index"), doc.get("source")
        if not isinstance(index, int) or isinstance(index, bool):
            raise SpecError(path, f"{key}.index", "the cell's index (an integer)", repr(index))
        if not isinstance(source, str):
            raise SpecError(path, f"{key}.source", "the cell's source (a string)",
                            repr(source)[:60])
        return cls(index, source, _names(doc, "packages", path, key),
                   _names(doc, "files", path, key))


def _names(doc: dict[str, Any], name: str, path: str | os.PathLike[str],
           key: str) -> tuple[str, ...]:
    value = doc.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(path, f"{key}.{name}", "a list of strings", repr(value)[:60])
    return tuple(value)


@dataclass
class Summary:
    notebook: str | None  # the workflow the audit ran (absolute, at audit time)
    status: str  # session.json's status, or "worker-died" when derive saw a worker crash
    complete: bool
    failed_cell: dict[str, Any] | None = None  # {"index", "ename", "evalue"}
    #: The data draft's account (inputs, outputs, intermediates, served_urls, warnings...).
    data: dict[str, Any] = field(default_factory=dict)
    verify: dict[str, Any] | None = None  # the last --verify verdict, when there was one
    #: Per role ("manager", "worker"): the processes, who started the workers, their tools.
    roles: dict[str, Any] = field(default_factory=dict)
    #: Per code cell, what it used; None when the summary lists no cells.
    cells: list[CellUse] | None = None
    doc: dict[str, Any] = field(default_factory=dict)  # the whole object, as read

    @property
    def written(self) -> list[str]:
        """The files the run wrote and kept (outputs and intermediates), relative to where it
        ran."""
        return [str(p) for p in (*(self.data.get("outputs") or ()),
                                 *(self.data.get("intermediates") or ()))]

    @classmethod
    def from_json(cls, doc: Any, path: str | os.PathLike[str] = SUMMARY) -> Summary:
        """The summary in `doc`; SpecError naming `path`, the key and what to do."""
        if not isinstance(doc, dict):
            raise SpecError(path, "", "expected a JSON object", type(doc).__name__)
        schema = doc.get("schema")
        if schema != SCHEMA:
            newer = isinstance(schema, int) and schema > SCHEMA
            raise SpecError(path, "schema", f"{SCHEMA}, the schema this flo-backpack reads, "
                            f"not {schema!r}; " + ("upgrade flo-backpack to read it" if newer
                                                   else "re-derive it with `flo-audit derive`"))
        status = doc.get("status")
        if not isinstance(status, str):
            raise SpecError(path, "status", "a string", repr(status))
        notebook = doc.get("notebook")
        data = doc.get("data")
        failed = doc.get("failed_cell")
        verify = doc.get("verify")
        roles = doc.get("roles", {})
        if not isinstance(roles, dict) or not all(isinstance(r, dict) for r in roles.values()):
            raise SpecError(path, "roles", "an object of role -> object", repr(roles)[:60])
        cells = doc.get("cells")
        if cells is not None and not isinstance(cells, list):
            raise SpecError(path, "cells", "a list of cells", type(cells).__name__)
        return cls(notebook=notebook if isinstance(notebook, str) and notebook else None,
                   status=status, complete=bool(doc.get("complete", status == Status.COMPLETE)),
                   failed_cell=failed if isinstance(failed, dict) else None,
                   data=data if isinstance(data, dict) else {},
                   verify=verify if isinstance(verify, dict) else None, roles=roles,
                   cells=None if cells is None else [
                       CellUse.from_json(c, path, f"cells[{i}]") for i, c in enumerate(cells)],
                   doc=doc)


def summary_text(doc: Mapping[str, Any]) -> str:
    """summary.json's text: the one serialisation its writers use (derive, --minimize,
    --verify). Sets and tuples become sorted lists; anything else unknown, its text."""
    return json.dumps(doc, indent=2, default=_jsonable) + "\n"


def _jsonable(value: object) -> object:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=str)
    return str(value)


def updated_summary(root: str | os.PathLike[str], **parts: Any) -> str:
    """The text of the backpack's summary.json with `parts` set (a step that adds its part
    after derive: --minimize, --verify); the file read through the model, so a summary of
    another schema is refused before anything is changed."""
    summary = read_summary(root)
    if summary is None:
        raise SpecError(Path(root) / SUMMARY, "", "a summary.json written by flo-audit")
    return summary_text({**summary.doc, **parts})


def read_summary(root: str | os.PathLike[str]) -> Summary | None:
    """The summary of the backpack at `root`; None when it has none (a hand-made backpack)."""
    path = Path(root) / SUMMARY
    if not path.exists():
        return None
    return load_summary(path)


def load_summary(path: str | os.PathLike[str]) -> Summary:
    """The summary in the file `path` (an audit folder's summary.json, wherever it lies);
    SpecError naming the file when it is unreadable, not JSON or not a summary."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecError(path, "", f"valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise SpecError(path, "", f"a readable file ({exc.strerror})") from None
    return Summary.from_json(doc, path)
