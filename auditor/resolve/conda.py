"""conda packages: the `conda-meta/*.json` records of the kernel's prefix.

Each record lists the files the package installed ("files", or "paths_data" in newer conda),
relative to the prefix. A conda-built Python package also ships a dist-info (INSTALLER "conda");
the conda record owns it, so the package is pinned as conda, not pip.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from .base import Distribution, Environment, Listing, Scanner, register

_ANACONDA_HOSTS = ("conda.anaconda.org", "repo.anaconda.com", "repo.continuum.io")
_SUBDIRS = ("noarch", "linux-", "osx-", "win-", "freebsd-", "zos-", "emscripten-", "wasi-")


def channel_name(record: dict) -> str | None:
    """The channel as `conda install channel::name` spells it ("conda-forge", "pkgs/main")."""
    if record.get("schannel"):
        return str(record["schannel"])
    source = record.get("channel") or record.get("url")
    if not source:
        return None
    if "://" not in source:
        return source.strip("/") or None
    parts = urlsplit(source)
    segments = [s for s in parts.path.split("/") if s]
    if segments and segments[-1].endswith((".conda", ".tar.bz2")):
        segments.pop()
    if segments and segments[-1].startswith(_SUBDIRS):
        segments.pop()
    if parts.netloc in _ANACONDA_HOSTS and segments:
        return "/".join(segments)
    return f"{parts.scheme}://{parts.netloc}/" + "/".join(segments)


def conda_listing(prefix: str, path: str) -> Listing | None:
    """One conda-meta json file; None when it is not a package record."""
    try:
        with open(path, encoding="utf-8") as src:
            record = json.load(src)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("name") or not record.get("version"):
        return None
    files = record.get("files")
    if not files:
        files = [p.get("_path") for p in (record.get("paths_data") or {}).get("paths", ())]
    files = [f for f in files if isinstance(f, str) and f]
    dist = Distribution(
        name=record["name"], version=str(record["version"]), kind="conda", installer="conda",
        location=path, requires=tuple(record.get("depends") or ()), direct_url=None,
        channel=channel_name(record), build=record.get("build"),
    )
    dist_infos = sorted({os.path.join(prefix, f.split(".dist-info/", 1)[0] + ".dist-info")
                         for f in files if ".dist-info/" in f})
    return Listing(dist, base=prefix, files=files, owns_metadata_of=dist_infos)


@register
class CondaScanner(Scanner):
    """Packages conda (or mamba, micromamba, pixi) installed into the kernel's prefix."""

    name = "conda"

    def scan(self, env: Environment) -> list[Listing]:
        meta = os.path.join(env.prefix, "conda-meta")
        try:
            names = sorted(n for n in os.listdir(meta) if n.endswith(".json"))
        except OSError:
            return []
        listings = (conda_listing(env.prefix, os.path.join(meta, n)) for n in names)
        return [listing for listing in listings if listing]
