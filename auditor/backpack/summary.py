"""audit/summary.json: the machine-readable account of one audit.

Written by flo-audit's derive (auditor/emit/report.py builds it; auditor/emit/data/,
the minimize and verify steps add their parts) and printed by `flo-audit --json`; read back by
flo-run (which notebook the audit ran, whether the run completed, what the notebook wrote),
by `--verify` and by `flo-audit cells`. Schema 1 is the first and only one; a summary of a
newer schema is refused with a line saying to upgrade, one without a schema number (or of an
older, unknown one) with a line saying to re-derive.

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
        return cls(notebook=notebook if isinstance(notebook, str) and notebook else None,
                   status=status, complete=bool(doc.get("complete", status == Status.COMPLETE)),
                   failed_cell=failed if isinstance(failed, dict) else None,
                   data=data if isinstance(data, dict) else {},
                   verify=verify if isinstance(verify, dict) else None, roles=roles,
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
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SpecError(path, "", f"valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise SpecError(path, "", f"a readable file ({exc.strerror})") from None
    return Summary.from_json(doc, path)
