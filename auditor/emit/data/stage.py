"""The data step of `derive` and `audit`: build the collector for one record, bundle inputs.

The collector rides the one observer pass of auditor.api.derive; its rules come from the
record itself (the kernel's HOME, its working directory), so a re-derive on another machine
or under another user judges the same paths the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ...backpack.session import Session
from .collect import DataCollector, DataRules, environment_owner
from .urls import read_responses

if TYPE_CHECKING:
    from ...resolve import EnvIndex


def collector_for_record(session: Session, index: EnvIndex, notebook_dir: str | Path,
                         ignore: Iterable[str] = (),
                         record_dir: str | Path | None = None) -> DataCollector:
    """A DataCollector judging paths for the kernel of `session` (session.json).

    HOME and the tool folders set in the environment (MPLCONFIGDIR, XDG_CACHE_HOME...) are
    the kernel's (recorded by the kernel side; a record made before that falls back to our
    HOME); `ignore` holds flo-backpack's own code folders. With `record_dir`, the URL
    responses it logged decide which requested URLs were read.
    """
    kernel = session.kernel
    home = kernel.get("home") or os.path.expanduser("~")
    notebook_dir = str(notebook_dir)
    cwd = str(session.cwd or kernel.get("cwd") or notebook_dir)
    tool_dirs = kernel.get("tool_dirs")
    rules = DataRules(home=home, ignore=ignore,
                      environ=dict(tool_dirs) if isinstance(tool_dirs, Mapping) else {})
    responses = read_responses(record_dir, kernel) if record_dir is not None else None
    return DataCollector(rules, environment_owner(index, notebook_dir), notebook_dir, cwd,
                         responses)
