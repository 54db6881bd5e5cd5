"""Small hand-made environment prefixes for resolver tests: a site-packages with dist-info
dirs and RECORD files, conda-meta records, editable installs. Real files, no mocks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from packaging.markers import default_environment

from auditor.resolve import Environment

PY = "python3.11"


def site_of(prefix: Path) -> Path:
    return prefix / "lib" / PY / "site-packages"


def make_env(prefix: Path, extra_paths: tuple[str, ...] = ()) -> Environment:
    """An Environment for `prefix` with a stdlib dir, a site-packages dir and a bin/python."""
    stdlib = prefix / "lib" / PY
    site = site_of(prefix)
    site.mkdir(parents=True, exist_ok=True)
    (stdlib / "lib-dynload").mkdir(parents=True, exist_ok=True)
    (prefix / "bin").mkdir(exist_ok=True)
    python = prefix / "bin" / "python"
    python.touch()
    return Environment(
        executable=str(python), version="3.11.7", prefix=str(prefix), base_prefix=str(prefix),
        paths=(str(stdlib), str(stdlib / "lib-dynload"), str(site), *extra_paths),
        stdlib=(str(stdlib),), markers=dict(default_environment()),
    )


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def add_dist(site: Path, name: str, version: str, files: dict[str, str] | list[str] = (),
             requires: tuple[str, ...] = (), installer: str | None = "pip",
             direct_url: dict | None = None, write_files: bool = True) -> Path:
    """Install a fake wheel: its files under `site` and a dist-info whose RECORD lists them."""
    contents = files if isinstance(files, dict) else {f: "" for f in files}
    if write_files:
        for rel, text in contents.items():
            write(site / rel, text)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    write(info / "METADATA", "\n".join(meta) + "\n\nA description.\nName: not-a-header\n")
    listed = list(contents) + [f"{info.name}/METADATA", f"{info.name}/RECORD"]
    if installer is not None:
        write(info / "INSTALLER", installer + "\n")
        listed.append(f"{info.name}/INSTALLER")
    if direct_url is not None:
        write(info / "direct_url.json", json.dumps(direct_url))
        listed.append(f"{info.name}/direct_url.json")
    write(info / "RECORD", "".join(f"{rel},sha256=x,1\n" for rel in listed))
    return info


def add_conda_package(prefix: Path, name: str, version: str, files: dict[str, str] | list[str],
                      depends: tuple[str, ...] = (), build: str = "py311_0",
                      channel: str = "https://conda.anaconda.org/conda-forge/linux-64") -> Path:
    """Install a fake conda package: its files under `prefix` and a conda-meta record."""
    contents = files if isinstance(files, dict) else {f: "" for f in files}
    for rel, text in contents.items():
        if not (prefix / rel).exists():  # a dist-info written by add_dist stays as it is
            write(prefix / rel, text)
    record = {"name": name, "version": version, "build": build, "build_number": 0,
              "channel": channel, "depends": list(depends), "files": list(contents),
              "url": f"{channel}/{name}-{version}-{build}.conda"}
    return write(prefix / "conda-meta" / f"{name}-{version}-{build}.json", json.dumps(record))


def file_url(path: Path | str) -> str:
    return "file://" + os.path.abspath(path)
