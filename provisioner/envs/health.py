"""Is a cached environment still whole? One cheap subprocess in the environment's interpreter.

A cached environment is trusted by its stamp, but its files can go later: a tmp cleaner removes
`lib/` or files it has not seen used, a user deletes a folder by hand. Before reuse, the
environment's own `bin/python` (isolated: `-I`, so no PYTHONPATH or user site helps it) must
start, find every bootstrap package of its roles on its path, and still hold every file its
installed distributions' RECORDs list.

The RECORD check (a `stat` per file) stands in for importing the bootstrap packages: importing
`distributed` costs seconds per reuse, while the stats take a fraction of that and see more (a
file removed anywhere in any installed distribution, not only on the import path of the
bootstrap packages). Only existence is checked, never sizes: conda rewrites the prefix into text
files on install, so their sizes differ from what a RECORD says without any damage.
"""

from __future__ import annotations

import json
from pathlib import Path

from auditor.common.errors import CommandError
from auditor.common.process import run

#: Seconds the check may take; one that times out (a loaded machine) is not taken as damage.
CHECK_TIMEOUT = 120

# Runs inside the environment: stdlib only, prints one JSON line. It reads each dist-info's
# RECORD itself (importlib.metadata's objects made the check cost 0.25 s a reuse for 9,000
# files; this costs a fifth of that): RECORD paths are relative to the folder that holds the
# dist-info, as `Distribution.locate_file` joins them. Egg-info folders name source-tree files
# (SOURCES.txt), not installed ones, so only dist-info folders are looked at.
_PROBE = r"""
import csv, importlib.util, json, os, sys
missing = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is None]
lost, seen = [], set()
for folder in sys.path:
    try:
        names = sorted(os.listdir(folder or "."))
    except OSError:
        continue
    for name in names:
        info = os.path.join(folder, name)
        if not name.endswith(".dist-info") or info in seen:
            continue
        seen.add(info)
        try:
            with open(os.path.join(info, "RECORD"), encoding="utf-8", newline="") as record:
                rows = list(csv.reader(record))
        except OSError:
            continue
        for row in rows:
            if row and row[0] and not row[0].endswith(".pyc"):  # recompiled when absent
                path = os.path.join(folder, row[0])
                if not os.path.lexists(path):
                    lost.append(path)
print(json.dumps({"missing": missing, "lost": lost[:3], "lost_count": len(lost)}))
"""

def damage(env: Path, bootstrap: tuple[str, ...]) -> str | None:
    """What is wrong with the environment at `env` (one phrase), or None when it is whole or
    the check could not finish in time (not a proof of damage, so the stamp is trusted)."""
    python = env / "bin" / "python"
    if not python.exists():  # also a dangling link: its base interpreter is gone
        return f"{python} is missing or its base interpreter is gone"
    try:
        done = run([python, "-I", "-c", _PROBE, *bootstrap], check=False,
                   timeout=CHECK_TIMEOUT, what="checking a cached environment")
    except CommandError:  # with check=False and the program there, only a timeout
        return None
    except OSError as exc:  # there, but not executable
        return f"its python cannot be started ({exc.strerror})"
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"its python does not start (exit {done.returncode}: {tail[0]})"
    if found["missing"]:
        return f"its bootstrap package(s) {', '.join(found['missing'])} cannot be found"
    if found["lost_count"]:
        return (f"{found['lost_count']} installed file(s) are gone, e.g. "
                f"{', '.join(found['lost'])}")
    return None
