"""software/environment.yml and requirements.txt as both sides read them: `Pin`, `EnvSpec`.

`parse_environment` reads a conda-format environment.yml (conda specs and the `pip:` list) into
exact pins; `parse_requirements` a requirements.txt. Errors name the file, the key and what was
expected. The audit's diff, its --verify and the provisioner's environment builders all read
specs through here; the audit writes them (auditor/emit/environment.py renders the draft).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..common.errors import SpecError
from .yaml_text import load_yaml_text


@dataclass(frozen=True)
class Pin:
    """One package of an environment spec, as pinned."""

    name: str
    version: str | None  # None when unpinned; the URL for direct references
    source: str  # "conda" | "pip"
    channel: str | None = None

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)


@dataclass
class EnvSpec:
    python: str | None
    pins: dict[str, Pin]
    channels: tuple[str, ...] = ()  # environment.yml's `channels:`, in order


def load_yaml(path: Path) -> object:
    try:
        return load_yaml_text(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(path, "", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(path, "", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"
                        ) from None


def parse_conda_spec(spec: str) -> tuple[str, str | None, str | None]:
    """`channel::name==1.2`, `name=1.2=build`, `name>=1` -> (name, version or None, channel)."""
    channel = None
    if "::" in spec:
        channel, spec = spec.split("::", 1)
    spec = spec.strip()
    for i, ch in enumerate(spec):
        if ch in "=<>!~ ":
            name, rest = spec[:i], spec[i:].strip()
            break
    else:
        return spec, None, channel
    if rest.startswith("=="):
        version: str | None = rest[2:].split("=")[0].strip()
    elif rest.startswith("=") and not rest.startswith("=>"):
        version = rest[1:].split("=")[0].strip().rstrip("*").rstrip(".")
    else:
        version = None  # a range: not a pin
    return name, version or None, channel


ENVIRONMENT_KEYS = {"name", "channels", "dependencies", "prefix", "variables"}


def parse_environment(path: Path, warnings: list[str] | None = None) -> EnvSpec:
    """Read a conda-format environment.yml into pins by canonical name."""
    return environment_from_doc(path, load_yaml(path), warnings)


def environment_from_doc(path: Path, doc: object, warnings: list[str] | None = None) -> EnvSpec:
    """Check a parsed environment.yml (what `conda env create -f` accepts) and read its pins.
    Unknown top-level keys are appended to `warnings` when given."""
    if not isinstance(doc, dict):
        raise SpecError(path, "dependencies", "expected a list of packages "
                        "(is this a conda environment.yml?)")
    if warnings is not None:
        warnings.extend(f"{path}: unknown key {key!r} ignored"
                        for key in sorted(set(doc) - ENVIRONMENT_KEYS))
    if "name" in doc and not isinstance(doc["name"], str):
        raise SpecError(path, "name", "expected a string")
    channels = doc.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise SpecError(path, "channels", "expected a list of channel names")
    deps = doc.get("dependencies")
    if not isinstance(deps, list):
        raise SpecError(path, "dependencies", "expected a list of packages "
                        "(is this a conda environment.yml?)")
    python: str | None = None
    pins: dict[str, Pin] = {}
    for i, item in enumerate(deps):
        if isinstance(item, dict) and set(item) == {"pip"} and isinstance(item["pip"], list) \
                and all(isinstance(p, str) for p in item["pip"]):
            for line in item["pip"]:
                pin = _parse_pip_line(line, path)
                if pin:
                    pins[pin.key] = pin
            continue
        if not isinstance(item, str):
            raise SpecError(path, f"dependencies[{i}]", "expected a package spec string or a "
                            "'pip:' list of requirement strings", repr(item))
        name, version, channel = parse_conda_spec(item)
        if canonicalize_name(name) == "python":
            python = version
        elif canonicalize_name(name) != "pip" or version:
            pin = Pin(name, version, "conda", channel)
            pins[pin.key] = pin
    return EnvSpec(python, pins, tuple(channels))


def requirement_lines(text: str) -> list[str]:
    """A requirements.txt's lines as pip reads them: comments and blank lines dropped."""
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def parse_requirements(path: Path, lines: list[str] | None = None) -> EnvSpec:
    """A requirements.txt's pins by canonical name (pip options are skipped); `lines` as
    `requirement_lines` gives them, when the caller has read the file already."""
    pins = {}
    if lines is None:
        lines = requirement_lines(path.read_text(encoding="utf-8"))
    for line in lines:
        pin = _parse_pip_line(line, path)
        if pin:
            pins[pin.key] = pin
    return EnvSpec(None, pins)


def _parse_pip_line(line: str, path: Path) -> Pin | None:
    line = line.split(" #", 1)[0].strip()
    if not line or line.startswith("#"):
        return None
    if line.startswith("-e "):
        url = line[3:].strip()
        return Pin(Path(url.rstrip("/")).name, url, "pip")
    if line.startswith("-"):
        return None  # pip options (--index-url, ...) are not packages
    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        raise SpecError(path, "", f"not a pip requirement: {line!r} ({exc})") from None
    if req.url:
        return Pin(req.name, req.url, "pip")
    exact = [s.version for s in req.specifier if s.operator in ("==", "===")]
    return Pin(req.name, exact[0] if exact else None, "pip")
