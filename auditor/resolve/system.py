"""System files -> Debian packages, through `dpkg -S` in batches (for software/apt.txt).

dpkg records each file under the path its package shipped, which on merged-/usr systems may be
`/lib/...` while the file is opened as `/usr/lib/...` (or the reverse), so every path is asked
about under each of its spellings and answers are mapped back to the path as given.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from ..common.process import run

_BATCH = 200
_MERGED = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")


def _spellings(path: str) -> set[str]:
    names = {path, os.path.realpath(path)}
    for name in list(names):
        if name.startswith("/usr/") and name[4:].startswith(_MERGED):
            names.add(name[4:])
        elif name.startswith(_MERGED):
            names.add("/usr" + name)
    return names


def dpkg_owners(paths: Iterable[str]) -> dict[str, str]:
    """Map each path some Debian package owns to that package ("libc6:amd64" -> "libc6").

    Paths no package owns are left out. Returns {} where dpkg is not installed.
    """
    if shutil.which("dpkg") is None:
        return {}
    asked: dict[str, set[str]] = {}  # spelling -> paths as given
    for path in paths:
        if any(c in path for c in "*?[\\"):  # dpkg -S would read these as a pattern
            continue
        for name in _spellings(path):
            asked.setdefault(name, set()).add(path)
    owners: dict[str, str] = {}
    names = sorted(asked)
    for start in range(0, len(names), _BATCH):
        batch = names[start:start + _BATCH]
        # Exit 1 means some paths are not owned; the owned ones are still printed.
        done = run(["dpkg", "-S", *batch], check=False, timeout=120, what="dpkg -S")
        if done.returncode not in (0, 1):
            continue
        for line in done.stdout.splitlines():
            if line.startswith("diversion "):
                continue
            packages, sep, name = line.rpartition(": ")
            if not sep or name not in asked:
                continue
            package = packages.split(",")[0].strip().split(":")[0]
            for path in asked[name]:
                owners.setdefault(path, package)
    return owners


def essential_packages(packages: Iterable[str]) -> set[str]:
    """The packages among `packages` that Debian marks Essential (on every Debian system)."""
    names = sorted(set(packages))
    if not names or shutil.which("dpkg-query") is None:
        return set()
    done = run(["dpkg-query", "-W", "-f", "${Package} ${Essential}\\n", *names], check=False,
               timeout=120, what="dpkg-query")
    return {line.split()[0] for line in done.stdout.splitlines()
            if line.endswith(" yes") and line.split()}
