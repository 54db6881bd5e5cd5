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

from auditor.errors import CommandError
from auditor.process import run

#: Seconds the check may take; one that times out (a loaded machine) is not taken as damage.
CHECK_TIMEOUT = 120

# Runs inside the environment: stdlib only, prints one JSON line.
_PROBE = r"""
import importlib.metadata as metadata, importlib.util, json, os, sys
missing = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is None]
lost = []
for dist in metadata.distributions():
    if dist.read_text("RECORD") is None:  # egg-info SOURCES.txt names source-tree files
        continue
    for entry in dist.files or ():
        if entry.suffix == ".pyc":  # recompiled on import when absent
            continue
        path = dist.locate_file(entry)
        if not os.path.lexists(path):
            lost.append(str(path))
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
