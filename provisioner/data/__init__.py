"""flo-run's data step: data/data.yml -> verified files in the run folder.

`fetch` is what the runner calls before any environment or engine work; `verify` checks what
is in place. Sources live in sources.py (one class per source_type), downloads in download.py,
post_fetch unpacking in extract.py.
"""

from __future__ import annotations

from .fetch import (
    Layout,
    audit_layout,
    check_content,
    default_run_dir,
    default_scratch_dir,
    fetch,
    notebook_dir,
    profile_notebook_dir,
    resolve_target,
    verify,
)
from .results import DataError, EntryResult, FetchReport, Mismatch, VerifyReport
from .sources import SOURCES, Source, get_source

__all__ = ["SOURCES", "DataError", "EntryResult", "FetchReport", "Layout", "Mismatch", "Source",
           "VerifyReport", "audit_layout", "check_content", "default_run_dir",
           "default_scratch_dir", "fetch", "get_source", "notebook_dir", "profile_notebook_dir",
           "resolve_target", "verify"]
