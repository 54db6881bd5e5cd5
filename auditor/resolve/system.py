"""System files -> Debian packages, through `dpkg -S` in batches (for software/apt.txt).

dpkg records each file under the path its package shipped, which on merged-/usr systems may be
`/lib/...` while the file is opened as `/usr/lib/...` (or the reverse), so every path is asked
about under each of its spellings and answers are mapped back to the path as given.

dpkg's answers are kept between audits (`Answers`, a `common.kept.Kept`: dpkg.json in
flo-backpack's cache folder) for as long as its database is unchanged: an audit asks dpkg
only about paths no earlier audit on this machine asked about, since dpkg -S reads every
package's file list to answer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..common.kept import Kept, cache_folder
from ..common.process import run

_BATCH = 200
_MERGED = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")
ADMIN_DIR = "/var/lib/dpkg"
# What dpkg rewrites on every change to what is installed (packages, their files, diversions).
_DATABASE_FILES = ("status", "diversions")


def _spellings(path: str) -> set[str]:
    names = {path, os.path.realpath(path)}
    for name in list(names):
        if name.startswith("/usr/") and name[4:].startswith(_MERGED):
            names.add(name[4:])
        elif name.startswith(_MERGED):
            names.add("/usr" + name)
    return names


def default_answers_file() -> Path:
    return cache_folder() / "dpkg.json"


class Answers(Kept):
    """dpkg's answers (`owners`: path -> owning package or None; `essential`: package ->
    Essential) kept in `file`, valid while the database under `admin_dir` is unchanged."""

    def __init__(self, file: Path | None, admin_dir: str = ADMIN_DIR) -> None:
        super().__init__(file, _database_state(admin_dir))
        self.owners: dict[str, str | None] = self.data.setdefault("owners", {})
        self.essential: dict[str, bool] = self.data.setdefault("essential", {})


def _database_state(admin_dir: str) -> str | None:
    parts = []
    for name in _DATABASE_FILES:
        try:
            info = os.stat(os.path.join(admin_dir, name))
        except FileNotFoundError:
            parts.append(f"{name}:-")
            continue
        except OSError:
            return None
        parts.append(f"{name}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}")
    return " ".join(parts)


def dpkg_owners(paths: Iterable[str], answers: Answers | None = None) -> dict[str, str]:
    """Map each path some Debian package owns to that package ("libc6:amd64" -> "libc6").

    Paths no package owns are left out. Returns {} where dpkg is not installed. `answers`:
    what dpkg said before, asked again only about the rest (and told what it says now).
    """
    if shutil.which("dpkg") is None:
        return {}
    answers = answers or Answers(None)
    wanted = [path for path in dict.fromkeys(paths)
              if not any(c in path for c in "*?[\\")]  # dpkg -S would read these as patterns
    new = [path for path in wanted if path not in answers.owners]
    asked: dict[str, set[str]] = {}  # spelling -> paths as given
    for path in new:
        for name in _spellings(path):
            asked.setdefault(name, set()).add(path)
    found: dict[str, str] = {}
    unanswered: set[str] = set()  # in a batch dpkg failed on: not known to be unowned
    names = sorted(asked)
    for start in range(0, len(names), _BATCH):
        batch = names[start:start + _BATCH]
        # Exit 1 means some paths are not owned; the owned ones are still printed.
        done = run(["dpkg", "-S", *batch], check=False, timeout=120, what="dpkg -S")
        if done.returncode not in (0, 1):
            unanswered.update(path for name in batch for path in asked[name])
            continue
        for line in done.stdout.splitlines():
            if line.startswith("diversion "):
                continue
            packages, sep, name = line.rpartition(": ")
            if not sep or name not in asked:
                continue
            package = packages.split(",")[0].strip().split(":")[0]
            for path in asked[name]:
                found.setdefault(path, package)
    for path in new:
        if path in found or path not in unanswered:
            answers.owners[path] = found.get(path)
            answers.changed = True
    return {path: owner for path in wanted
            if (owner := found.get(path) or answers.owners.get(path))}


def essential_packages(packages: Iterable[str], answers: Answers | None = None) -> set[str]:
    """The packages among `packages` that Debian marks Essential (on every Debian system)."""
    answers = answers or Answers(None)
    names = sorted(set(packages))
    if not names or shutil.which("dpkg-query") is None:
        return set()
    asked = [name for name in names if name not in answers.essential]
    if asked:
        done = run(["dpkg-query", "-W", "-f", "${Package} ${Essential}\\n", *asked],
                   check=False, timeout=120, what="dpkg-query")
        said = {line.split()[0]: line.endswith(" yes") for line in done.stdout.splitlines()
                if line.split()}
        if done.returncode in (0, 1):  # 1: some are not installed (not Essential, then)
            answers.essential.update({name: said.get(name, False) for name in asked})
            answers.changed = True
        else:
            return {name for name in names if said.get(name) or answers.essential.get(name)}
    return {name for name in names if answers.essential.get(name)}
