"""The model of the kernel's environment: the interpreter, its distributions, who owns a file.

`Environment` says which interpreter ran the kernel (DESIGN.md rule 5: index *its* environment,
not ours). Scanners (pip.py, conda.py) each turn one kind of installation record into
`Listing`s: a `Distribution` plus the files it owns. The index (index.py) does the bookkeeping.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from packaging.utils import canonicalize_name

from ..common.errors import FloError
from ..common.process import run

# Runs inside the probed interpreter, which may be any Python >= 3.8: stdlib only.
_PROBE = r"""
import json, os, platform, sys, sysconfig
def fmt(v):
    s = "%d.%d.%d" % (v.major, v.minor, v.micro)
    return s if v.releaselevel == "final" else s + v.releaselevel[0] + str(v.serial)
markers = {
    "implementation_name": sys.implementation.name,
    "implementation_version": fmt(sys.implementation.version),
    "os_name": os.name, "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(),
    "platform_release": platform.release(), "platform_system": platform.system(),
    "platform_version": platform.version(), "python_full_version": platform.python_version(),
    "python_version": ".".join(platform.python_version_tuple()[:2]), "sys_platform": sys.platform,
}
paths = sysconfig.get_paths()
print(json.dumps({
    "executable": sys.executable, "version": platform.python_version(),
    "prefix": sys.prefix, "base_prefix": sys.base_prefix, "path": sys.path[1:],
    "stdlib": [paths["stdlib"], paths["platstdlib"]], "purelib": paths["purelib"],
    "platlib": paths["platlib"], "markers": markers,
}))
"""


class EnvironmentProbeError(FloError):
    """The kernel's interpreter could not be asked about its environment."""


@dataclass(frozen=True)
class Environment:
    """The kernel interpreter's environment, as the kernel side reported it."""

    executable: str
    version: str
    prefix: str
    base_prefix: str
    paths: tuple[str, ...]
    stdlib: tuple[str, ...]
    markers: dict[str, str] = field(hash=False)

    @classmethod
    def from_kernel_record(cls, record: dict) -> Environment:
        """Build from the "kernel" record of hooks.jsonl (docs/internals.md)."""
        try:
            paths: list[str] = []
            for path in [*record["path"], record.get("purelib"), record.get("platlib")]:
                if path and os.path.isabs(path) and os.path.normpath(path) not in paths:
                    paths.append(os.path.normpath(path))
            return cls(
                executable=record["executable"], version=record["version"],
                prefix=record["prefix"], base_prefix=record.get("base_prefix") or record["prefix"],
                paths=tuple(paths),
                stdlib=tuple(os.path.normpath(p) for p in record.get("stdlib") or () if p),
                markers=dict(record.get("markers") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise EnvironmentProbeError(
                f"kernel record lacks {exc}: re-run the audit to record the kernel's environment"
            ) from exc

    @classmethod
    def of_interpreter(cls, python: str) -> Environment:
        """Ask `python` about its environment (runs it once with a stdlib-only probe)."""
        done = run([python, "-c", _PROBE], timeout=60,
                   what=f"asking {python} about its environment")
        try:
            record = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise EnvironmentProbeError(
                f"{python} printed no environment description; check it is a working Python"
            ) from exc
        return cls.from_kernel_record(record)


@dataclass(frozen=True)
class Distribution:
    """One installed distribution: a pip/uv dist-info (or egg-info) or a conda package."""

    name: str
    version: str
    kind: str  # "pip" or "conda"
    installer: str
    location: str  # the .dist-info dir, or the conda-meta json file
    requires: tuple[str, ...]
    direct_url: dict | None = field(default=None, hash=False)
    channel: str | None = None
    build: str | None = None

    @cached_property
    def key(self) -> str:
        """The canonical name (PEP 503): how requirements and other spellings find it."""
        return canonicalize_name(self.name)

    @property
    def editable(self) -> bool:
        return bool(((self.direct_url or {}).get("dir_info") or {}).get("editable"))

    @property
    def local(self) -> bool:
        """True when this pin will not install on another machine (a file:// url, editable)."""
        if self.kind == "conda":
            return (self.channel or "").startswith(("file:", "/"))
        url = (self.direct_url or {}).get("url", "")
        return self.editable or url.startswith("file:")

    def requirement(self) -> str:
        """The pin: "name==version", "name @ url" (direct reference), "channel::name==version"."""
        if self.kind == "conda":
            prefix = f"{self.channel}::" if self.channel else ""
            return f"{prefix}{self.name}=={self.version}"
        info = self.direct_url
        if not info or not info.get("url"):
            return f"{self.name}=={self.version}"
        url = info["url"]
        vcs = info.get("vcs_info")
        if vcs:
            url = f"{vcs.get('vcs', 'git')}+{url}"
            if vcs.get("commit_id"):
                url += f"@{vcs['commit_id']}"
        archive = info.get("archive_info")
        if archive and "#" not in url:
            digest = archive.get("hash") or next(
                (f"{k}={v}" for k, v in (archive.get("hashes") or {}).items()), None)
            if digest:
                url += f"#{digest}"
        if info.get("subdirectory"):
            url += ("&" if "#" in url else "#") + f"subdirectory={info['subdirectory']}"
        return f"{self.name} @ {url}"

    def source_dir(self) -> str | None:
        """The local directory a dir_info (editable or local) install was made from."""
        info = self.direct_url or {}
        if "dir_info" not in info or not str(info.get("url", "")).startswith("file:"):
            return None
        return os.path.normpath(unquote(urlsplit(info["url"]).path))


@dataclass(frozen=True)
class Ownership:
    """Who owns a file. `metadata`: the file is installation metadata, reading it is not use."""

    dist: Distribution | None
    stdlib: bool = False
    metadata: bool = False
    # Owned through an editable/local install's source dir rather than listed in its record.
    editable: bool = False
    # Owned by a distribution left out on purpose (flo-backpack's own): never report.
    excluded: bool = False


@dataclass
class Listing:
    """A distribution and the files it owns, relative to `base` (site dir or conda prefix)."""

    dist: Distribution
    base: str
    files: list[str]
    metadata_dir: str | None = None  # dist-info / egg-info dir: everything in it is metadata
    roots: list[str] = field(default_factory=list)  # dirs owned wholesale (editable sources)
    owns_metadata_of: list[str] = field(default_factory=list)  # conda: the dist-info dirs it ships


class Scanner(ABC):
    """Base class of the installation-record readers; a subclass writes `scan`."""

    name: ClassVar[str]

    @abstractmethod
    def scan(self, env: Environment) -> list[Listing]:
        """Every distribution of `env` this kind of record describes."""


SCANNERS: dict[str, type[Scanner]] = {}


def register(cls: type[Scanner]) -> type[Scanner]:
    SCANNERS[cls.name] = cls
    return cls


def is_metadata_path(path: str) -> bool:
    """Installation metadata by shape: inside a dist-info/egg-info dir or conda-meta.

    (`.pth` files are metadata only directly in a site dir: elsewhere `.pth` is often data,
    such as PyTorch weights; the index checks where they are.)
    """
    return (".dist-info/" in path or ".egg-info/" in path or path.endswith(".egg-info")
            or "/conda-meta/" in path)
