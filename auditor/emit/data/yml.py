"""Write the data draft as data/data.yml, and bundle inputs into the backpack's data/ folder.

data.yml follows the Floability schema (DESIGN.md). Entries carry two extra keys, `read_by`
and `first_cell`, that flo-run ignores. Conventions flo-run relies on:

- `target_location` is relative to the notebook's working directory when the notebook used a
  path under it; an input outside the notebook's folder has `source_type: fs` and
  `target_location` equal to its absolute `source` ("use in place, verify only").
- a folder entry has `source_type: fs` (or `backpack` when bundled), `files`, `expected_size`
  (total bytes) and the folder checksum of checksums.directory_checksum.
- `post_fetch: {operation: untar|unzip}` only when the run read the archive's extracted files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...backpack.checksums import directory_files
from ...backpack.yaml_text import dump_yaml
from ...common.errors import UsageError
from .collect import DataDraft

#: Where the bundled copies go, relative to the backpack (data.yml sits there too).
BUNDLE_DIR = "data"
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def render_data_yml(draft: DataDraft, notebook: str) -> str:
    """The data.yml text (Floability schema), with a header saying how it was drafted."""
    header = [f"# Drafted by flo-audit from a traced run of {notebook}.",
              "# Inputs only: files the run read and did not write first, plus URLs it fetched.",
              "# Outputs, intermediates and secrets are listed in audit/summary.json."]
    if not draft.inputs:
        header.append("# The run read no input files and fetched no URLs.")
    for entry in draft.signed_urls:
        header.append(f"# {entry.name}: read with credentials in its URL, removed here "
                      f"({', '.join(entry.credentials or ())}); supply them at run time.")
    if any(e.files is not None for e in draft.inputs):
        header.append("# A folder's checksum covers its files' relative paths, sizes and "
                      "contents (auditor/backpack/checksums.py).")
    doc = {"schema_version": 1.0, "default_profile": "local_data",
           "profiles": {"local_data": {"policy": {"retry_attempts": 3, "timeout": 60},
                                       "data": [e.to_yaml_dict() for e in draft.inputs]}}}
    body = dump_yaml(doc, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(header) + "\n" + body


def parse_size(text: str) -> int:
    """Bytes from a size such as 500k, 100MB or 1.5GB (k/M/G/T are powers of 1000,
    KiB/MiB/GiB/TiB of 1024); raises UsageError naming what is accepted."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UsageError(f"expected a size such as 500k, 100MB or 1.5GB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def bundle(draft: DataDraft, notebook_dir: str | Path,
           max_bytes: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Choose the inputs under the notebook's folder, or beside it with a relative target
    ('../data', copied to data/_up/data), to copy into the backpack's data/, up to
    `max_bytes` in all, and turn their entries into `backpack` sources.

    Returns (source file, path relative to the backpack) pairs for the backpack writer, and
    warnings for what was left out. Inputs are taken in data.yml order; one that would pass
    the limit is skipped (smaller ones after it may still fit).
    """
    root = os.path.normpath(notebook_dir)
    copies: list[tuple[str, str]] = []
    warnings: list[str] = []
    total = 0
    for entry in draft.inputs:
        if entry.source_type != "fs" or os.path.isabs(entry.target_location):
            continue  # used in place where it is
        if entry.checksum is None:
            warnings.append(f"{entry.name}: not bundled (it was gone when the audit hashed it)")
            continue
        size = entry.expected_size or 0
        if total + size > max_bytes:
            warnings.append(f"{entry.name}: not bundled ({_human(size)} would pass the "
                            f"--max-bundle-size of {_human(max_bytes)}); it stays an fs source")
            continue
        relative = "/".join("_up" if part == ".." else part for part in
                            os.path.relpath(entry.source, root).split(os.sep))
        if relative == "data.yml" or relative.startswith("data.yml/"):
            warnings.append(f"{entry.name}: not bundled (data/data.yml is the spec file)")
            continue
        if entry.files is not None:
            copies += [(str(full), f"{BUNDLE_DIR}/{relative}/{rel}")
                       for rel, full in directory_files(entry.source)]
        else:
            copies.append((entry.source, f"{BUNDLE_DIR}/{relative}"))
        total += size
        entry.source_type, entry.source = "backpack", f"{BUNDLE_DIR}/{relative}"
    return copies, warnings


def _human(size: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


def human_size(size: int | None) -> str:
    """A size for people (decimal units, like the --max-bundle-size values)."""
    return "?" if size is None else _human(size)
