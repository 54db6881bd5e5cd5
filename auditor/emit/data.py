"""Draft data/data.yml from what the run read (DESIGN.md rule 8).

An input is a file the run read that no environment or system package owns, that is not
pseudo-filesystem, cache or tool configuration, not the workflow's own code, and that the run
did not write before reading it. Written files are outputs; written-then-read are
intermediates. Secrets are flagged, never listed, copied or hashed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..events import Access, Connect, Event

# Path prefixes that are never data: pseudo filesystems and the system itself (system files are
# software, resolved to Debian packages elsewhere).
SYSTEM_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/", "/etc/", "/usr/", "/lib/", "/lib32/",
                   "/lib64/", "/libx32/", "/bin/", "/sbin/", "/var/lib/", "/var/cache/",
                   "/var/run/", "/snap/")

# Caches and tool configuration, relative to HOME (and their usual environment overrides).
HOME_TOOL_DIRS = (".cache", ".config", ".ipython", ".jupyter", ".local/share/jupyter",
                  ".matplotlib", ".keras", ".dask", ".conda", ".condarc", ".npm", ".pyenv",
                  ".local/lib", ".local/bin", ".python_history", ".bash_history")
TOOL_ENV_DIRS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "IPYTHONDIR",
                 "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                 "NUMBA_CACHE_DIR", "PYTHONPYCACHEPREFIX")

# Secrets: never listed, copied or hashed; flagged so the user provides them at run time.
SECRET_HOME_PATHS = (".ssh/", ".aws/credentials", ".aws/config", ".netrc", ".git-credentials",
                     ".kube/config", ".pgpass", ".docker/config.json", ".pypirc",
                     ".config/gcloud/", ".azure/", ".gnupg/")
SECRET_NAME_PATTERNS = ("*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_ed25519*",
                        "id_ecdsa*", ".env", ".env.*", "*.env", "*token*", "*passwd*",
                        "*password*", "*secret*", "credentials", "credentials.json")

ARCHIVE_SUFFIXES = {".tar.gz": "untar", ".tgz": "untar", ".tar.bz2": "untar", ".tar.xz": "untar",
                    ".tar": "untar", ".zip": "unzip"}
CODE_SUFFIXES = (".py", ".pyc", ".pyx", ".so", ".ipynb")
HASH_CHUNK = 1 << 20


@dataclass
class DataEntry:
    """One input of the run, as a data.yml entry."""

    name: str
    source_type: str  # fs | backpack | http | https
    source: str
    target_location: str
    expected_size: int | None = None
    checksum: str | None = None
    read_by: str = "manager"
    first_cell: int | None = None
    files: int | None = None  # directory entries: how many files
    post_fetch: dict[str, str] | None = None
    absolute: bool = False  # lies outside the notebook's folder: not portable as it is

    def to_yaml_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "source_type": self.source_type,
                                  "source": self.source, "target_location": self.target_location}
        for key in ("expected_size", "checksum", "files", "post_fetch"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["read_by"] = self.read_by
        if self.first_cell is not None:
            out["first_cell"] = self.first_cell
        return out


@dataclass
class DataDraft:
    inputs: list[DataEntry] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    intermediates: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)  # connections without a URL (host:port)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Seen:
    first_read: float | None = None
    first_write: float | None = None
    role: str = "manager"
    cell: int | None = None
    used_as: str = ""  # the path as the process named it


class DataRules:
    """Which paths can be data at all: the static part of rule 8."""

    def __init__(self, home: str | None = None, ignore: Iterable[str] = (),
                 environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        self.home = (home or environ.get("HOME") or os.path.expanduser("~")).rstrip("/")
        tool_dirs = [os.path.join(self.home, d) for d in HOME_TOOL_DIRS]
        tool_dirs += [environ[v] for v in TOOL_ENV_DIRS if environ.get(v)]
        self.never = tuple(p.rstrip("/") + "/" for p in [*tool_dirs, *ignore]) + SYSTEM_PREFIXES
        self.never_exact = frozenset(p.rstrip("/") for p in tool_dirs)

    def is_secret(self, path: str) -> bool:
        rel = path[len(self.home) + 1:] if path.startswith(self.home + "/") else None
        if rel is not None and any(rel == s.rstrip("/") or rel.startswith(s)
                                   for s in SECRET_HOME_PATHS):
            return True
        name = os.path.basename(path).lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_NAME_PATTERNS)

    def never_data(self, path: str) -> bool:
        if path.startswith(self.never) or path in self.never_exact:
            return True
        return "/__pycache__/" in path or path.endswith(".pyc")


def draft_data(events: Iterable[Event], roles: dict[int, str], *,
               owned: Callable[[str, str | None], bool], notebook_dir: str, cwd: str,
               rules: DataRules, workflow: Iterable[str] = (),
               progress: Callable[[str, int, int], None] | None = None) -> DataDraft:
    """Turn the run's accesses into a data draft.

    `owned(path, real)` says whether an environment owns the path (or it lies inside one);
    `roles` maps pid -> "manager" | "worker" | "tool" (tools count for data like their
    caller: a `gzip -d input.gz` reads an input). Manager reads outside cells are kernel
    machinery and ignored.
    """
    seen: dict[str, _Seen] = {}
    listed: dict[str, _Seen] = {}
    urls: dict[str, _Seen] = {}
    draft = DataDraft()
    skip = frozenset(os.path.normpath(p) for p in workflow)
    for event in events:
        if isinstance(event, Connect):
            role = roles.get(event.pid, "worker")
            if event.url:
                urls.setdefault(event.url, _Seen(event.t, None, role, event.cell, event.url))
            elif event.address not in draft.remote:
                draft.remote.append(event.address)
            continue
        if not isinstance(event, Access):
            continue
        role = roles.get(event.pid, "worker")
        if role == "manager" and event.cell is None:
            continue
        path = event.real or event.path
        if rules.never_data(path) or path in skip or rules.never_data(event.path):
            continue
        if event.mode == "d":
            listed.setdefault(path, _Seen(event.t, None, role, event.cell, event.path))
            continue
        state = seen.get(path)
        if state is None:
            state = seen[path] = _Seen(role=role, cell=event.cell, used_as=event.path)
        if event.mode == "w":
            if state.first_write is None:
                state.first_write = event.t
        elif state.first_read is None:
            state.first_read = event.t
            state.role, state.cell, state.used_as = role, event.cell, event.path

    candidates: dict[str, _Seen] = {}
    for path, state in seen.items():
        if state.first_read is None:
            if not owned(path, None):
                draft.outputs.append(path)
            continue
        if state.first_write is not None and state.first_write <= state.first_read:
            draft.intermediates.append(path)
            continue
        if owned(path, None) or path.endswith(CODE_SUFFIXES) and path.startswith(notebook_dir):
            continue
        if rules.is_secret(path):
            draft.secrets.append(path)
            continue
        if os.path.isdir(path):
            continue
        candidates[path] = state

    names: set[str] = set()
    for directory, state in sorted(listed.items()):
        members = _all_files_read(directory, candidates)
        if not members:
            continue
        entry = _entry(directory, state, notebook_dir, cwd, names, is_dir=True)
        entry.files = len(members)
        entry.expected_size = sum(_size(m) or 0 for m in members)
        first = min(members, key=lambda m: candidates[m].first_read or 0.0)
        entry.read_by, entry.first_cell = candidates[first].role, candidates[first].cell
        for member in members:
            del candidates[member]
        draft.inputs.append(entry)

    intermediates_after = sorted(draft.intermediates)
    for path, state in sorted(candidates.items()):
        entry = _entry(path, state, notebook_dir, cwd, names)
        entry.expected_size = _size(path)
        if entry.expected_size is None:
            draft.warnings.append(f"{path}: read by the run but gone before it could be hashed; "
                                  "listed without size or checksum")
        else:
            entry.checksum = sha256_file(path, progress)
        suffix = next((s for s in ARCHIVE_SUFFIXES if path.endswith(s)), None)
        if suffix and _extracted_and_read(path, state, seen, intermediates_after):
            entry.post_fetch = {"operation": ARCHIVE_SUFFIXES[suffix]}
        draft.inputs.append(entry)

    for url, state in sorted(urls.items()):
        scheme = url.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            continue
        base = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "download"
        draft.inputs.append(DataEntry(
            name=_unique(_slug(base), names), source_type=scheme, source=url,
            target_location=base, read_by=state.role, first_cell=state.cell))
    for group in (draft.outputs, draft.intermediates, draft.secrets, draft.remote):
        group.sort()
    return draft


def _entry(path: str, state: _Seen, notebook_dir: str, cwd: str, names: set[str],
           is_dir: bool = False) -> DataEntry:
    used = state.used_as if os.path.isabs(state.used_as) else os.path.join(cwd, state.used_as)
    used = os.path.normpath(used) if not is_dir else path
    inside = used.startswith(cwd.rstrip("/") + "/")
    target = os.path.relpath(used, cwd) if inside else used
    stem = os.path.basename(path.rstrip("/"))
    for suffix in (*ARCHIVE_SUFFIXES, ".gz", ".bz2", ".xz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = os.path.splitext(stem)[0] if not is_dir else stem
    return DataEntry(name=_unique(_slug(stem), names), source_type="fs", source=path,
                     target_location=target, read_by=state.role, first_cell=state.cell,
                     absolute=not used.startswith(notebook_dir.rstrip("/") + "/"))


def _all_files_read(directory: str, candidates: dict[str, _Seen]) -> list[str]:
    try:
        files = [os.path.join(directory, n) for n in os.listdir(directory)]
    except OSError:
        return []
    files = [f for f in files if os.path.isfile(f)]
    if not files or any(f not in candidates for f in files):
        return []
    return sorted(files)


def _extracted_and_read(archive: str, state: _Seen, seen: dict[str, _Seen],
                        intermediates: list[str]) -> bool:
    """An archive earns a post_fetch step when the run wrote files after reading it and
    read them back (it extracted the archive and used the contents)."""
    t = state.first_read or 0.0
    return any((seen[p].first_write or 0.0) >= t for p in intermediates if p in seen)


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def sha256_file(path: str, progress: Callable[[str, int, int], None] | None = None) -> str | None:
    """Stream a file through sha256 (never loaded whole); None if it vanished."""
    digest = hashlib.sha256()
    try:
        total = os.stat(path).st_size
        done = 0
        with open(path, "rb") as src:
            while chunk := src.read(HASH_CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(path, done, total)
    except OSError:
        return None
    return "sha256:" + digest.hexdigest()


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-")
    return slug or "input"


def _unique(name: str, names: set[str]) -> str:
    candidate, n = name, 2
    while candidate in names:
        candidate, n = f"{name}_{n}", n + 1
    names.add(candidate)
    return candidate


def render_data_yml(draft: DataDraft, notebook: str) -> str:
    """The data.yml text (Floability schema), with a header saying how it was drafted."""
    import yaml

    header = (f"# Drafted by flo-audit from a traced run of {notebook}.\n"
              "# Inputs only: files the run read and did not write first, plus URLs it fetched.\n"
              "# Outputs, intermediates and secrets are listed in audit/summary.json.\n")
    doc = {"schema_version": 1.0, "default_profile": "local_data",
           "profiles": {"local_data": {"policy": {"retry_attempts": 3, "timeout": 60},
                                       "data": [e.to_yaml_dict() for e in draft.inputs]}}}
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def bundle(draft: DataDraft, notebook_dir: str, dest: Path, max_bytes: int) -> list[str]:
    """Copy inputs under the notebook's folder into `dest` (the backpack's data/) as
    `backpack` sources, up to `max_bytes` in all; returns warnings for what was left out."""
    import shutil

    warnings: list[str] = []
    total = 0
    root = notebook_dir.rstrip("/") + "/"
    for entry in draft.inputs:
        if entry.source_type != "fs" or not entry.source.startswith(root):
            continue
        size = entry.expected_size or 0
        if total + size > max_bytes:
            warnings.append(f"{entry.name}: not bundled ({size} bytes would pass the "
                            f"--max-bundle-size of {max_bytes} bytes)")
            continue
        rel = os.path.relpath(entry.source, notebook_dir)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(entry.source):
            shutil.copytree(entry.source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry.source, target)
        total += size
        entry.source_type, entry.source = "backpack", f"data/{rel}"
    return warnings
