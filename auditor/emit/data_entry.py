"""What a data draft is made of: data.yml entries, the draft itself, one use of a path or URL,
and how entries are named (data.py collects and classifies; data_urls.py drafts the URLs)."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

MANAGER, WORKER, TOOL, TRACER = "manager", "worker", "tool", "tracer"

#: A target_location may climb this many folders above the notebook ('../data/x.csv'): flo-run
#: then runs the notebook that many folders down inside the run folder, so nothing leaves it.
MAX_CLIMB = 8


def climb(path: str) -> int:
    """How many folders a relative path climbs above where it starts ('../../x' -> 2)."""
    parts = posixpath.normpath(path.replace("\\", "/")).split("/")
    return next((i for i, part in enumerate(parts) if part != ".."), len(parts))


#: How far above the notebook's folder an absolutely named input still counts as the
#: project's ('/p/notebooks' -> '/p/data': 1), and is copied rather than used in place.
NEAR_CLIMB = 2


def beside(path: str, folder: str, most: int = NEAR_CLIMB) -> bool:
    """Whether absolute `path` lies in the project of `folder`: at most `most` folders above
    it, under a common folder two or more levels below the root (not /tmp or /home)."""
    if climb(os.path.relpath(path, folder)) > most:
        return False
    return len(Path(os.path.commonpath([path, folder])).parts) >= 3


@dataclass
class DataEntry:
    """One input of the run, as a data.yml entry."""

    name: str
    source_type: str  # fs | backpack | http | https
    source: str
    target_location: str
    expected_size: int | None = None
    checksum: str | None = None
    read_by: str = MANAGER
    first_cell: int | None = None
    files: int | None = None  # directory entries: how many files
    post_fetch: dict[str, str] | None = None
    absolute: bool = False  # outside the notebook's folder: not portable as it is
    credentials: list[str] | None = None  # URL parameters removed: credentials, signing
    storage_options: dict[str, object] | None = None  # s3: passed to fsspec (endpoint_url, anon)

    def to_yaml_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "source_type": self.source_type,
                                  "source": self.source, "target_location": self.target_location}
        for key in ("expected_size", "checksum", "files", "post_fetch", "storage_options"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["read_by"] = self.read_by
        if self.first_cell is not None:
            out["first_cell"] = self.first_cell
        return out


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
class Use:
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
