"""What a data draft is made of: data.yml entries, the draft itself, one use of a path or URL,
and how entries are named (collect.py collects, classify.py classifies, inputs.py hashes and
names the inputs; urls.py drafts the URLs)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...backpack.data import DataEntry

MANAGER, WORKER, TOOL, TRACER = "manager", "worker", "tool", "tracer"

@dataclass
class DataDraft:
    """The inputs (data.yml) and everything the summary reports about the run's files."""

    inputs: list[DataEntry] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    intermediates: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)  # connections without a URL
    unread_urls: list[tuple[str, str]] = field(default_factory=list)  # (url, why not read)
    #: URLs a process of the run served itself (it accepted on that port): never fetched.
    served_urls: list[str] = field(default_factory=list)
    scratch: int = 0  # files the run wrote under the temp dir (or made and removed): not listed
    warnings: list[str] = field(default_factory=list)

    @property
    def absolute(self) -> list[str]:
        return [e.source for e in self.inputs if e.absolute and e.source_type == "fs"]

    @property
    def signed_urls(self) -> list[DataEntry]:
        """URL inputs listed without the credentials they were read with."""
        return [e for e in self.inputs if e.credentials]


@dataclass(slots=True)
class PathUse:
    """One process's first use of a path or URL: when, in which cell, as the code named it."""

    t: float
    pid: int
    cell: int | None
    used_as: str


def entry_name(stem: str, names: set[str]) -> str:
    """A data.yml name made from `stem` (a file or URL basename), unique among `names`."""
    return _unique(_slug(stem), names)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")
    return slug or "input"


def _unique(name: str, names: set[str]) -> str:
    candidate, n = name, 2
    while candidate in names:
        candidate, n = f"{name}_{n}", n + 1
    names.add(candidate)
    return candidate
