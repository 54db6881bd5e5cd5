"""The model of data/data.yml as read back: profiles, policies and `DataEntry` items.

Both schemas are read: the Floability one (`schema_version`, `default_profile`,
`profiles: {name: {policy: {...}, data: [...]}}`) and the legacy flat `data:` list (one profile
named "default"). Entries are the same `DataEntry` the drafter writes (auditor/emit/data/).
Keys the drafter adds for people (`read_by`, `first_cell`) are read; other unknown keys are
reported as warnings, never errors. Errors name the file, the entry and what was expected.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ..common.errors import SpecError
from .checksums import parse_checksum
from .environment import load_yaml

MANAGER = "manager"  # read_by: the role that read an input

#: A target_location may climb this many folders above the notebook ('../data/x.csv'): flo-run
#: then runs the notebook that many folders down inside the run folder, so nothing leaves it.
MAX_CLIMB = 8


def climb(path: str) -> int:
    """How many folders a relative path climbs above where it starts ('../../x' -> 2)."""
    parts = posixpath.normpath(path.replace("\\", "/")).split("/")
    return next((i for i, part in enumerate(parts) if part != ".."), len(parts))


#: How far above the notebook's folder an absolutely named input still counts as the
#: project's ('/p/notebooks' -> '/p/data': 1), and is copied rather than used in place.
NEAR_CLIMB = 2


def beside(path: str, folder: str, most: int = NEAR_CLIMB) -> bool:
    """Whether absolute `path` lies in the project of `folder`: at most `most` folders above
    it, under a common folder two or more levels below the root (not /tmp or /home)."""
    if climb(os.path.relpath(path, folder)) > most:
        return False
    return len(Path(os.path.commonpath([path, folder])).parts) >= 3


@dataclass
class DataEntry:
    """One input of the run, as a data.yml entry."""

    name: str
    source_type: str  # fs | backpack | http | https
    source: str
    target_location: str
    expected_size: int | None = None
    checksum: str | None = None
    read_by: str = MANAGER
    first_cell: int | None = None
    files: int | None = None  # directory entries: how many files
    post_fetch: dict[str, str] | None = None
    absolute: bool = False  # outside the notebook's folder: not portable as it is
    credentials: list[str] | None = None  # URL parameters removed: credentials, signing
    storage_options: dict[str, object] | None = None  # s3: passed to fsspec (endpoint_url, anon)

    def to_yaml_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "source_type": self.source_type,
                                  "source": self.source, "target_location": self.target_location}
        for key in ("expected_size", "checksum", "files", "post_fetch", "storage_options"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["read_by"] = self.read_by
        if self.first_cell is not None:
            out["first_cell"] = self.first_cell
        return out


SOURCE_TYPES = ("backpack", "fs", "file", "http", "https", "s3")
POST_FETCH = ("untar", "unzip")
LEGACY_PROFILE = "default"
_ENTRY_KEYS = {"name", "source_type", "source", "target_location", "expected_size", "checksum",
               "files", "post_fetch", "storage_options", "read_by", "first_cell"}
# s3 credentials come from the environment (AWS_*, a profile, an instance role), never data.yml.
_SECRET_OPTIONS = {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key",
                   "aws_session_token", "password"}
_POLICY_KEYS = {"retry_attempts", "timeout", "backoff"}


class DataSpecError(SpecError):
    """data/data.yml does not follow the schema (fields as `SpecError`)."""


@dataclass(frozen=True)
class DataPolicy:
    """How hard to try: `retry_attempts` is the number of attempts in all (at least one),
    `timeout` the seconds a connection may stay silent, `backoff` the first pause between
    attempts (doubled each time)."""

    retry_attempts: int = 3
    timeout: float = 60.0
    backoff: float = 1.0

    @property
    def attempts(self) -> int:
        return max(1, self.retry_attempts)


@dataclass
class DataProfile:
    name: str
    policy: DataPolicy
    entries: list[DataEntry]


@dataclass
class DataSpec:
    path: Path
    profiles: dict[str, DataProfile]
    default_profile: str | None = None
    schema_version: str | None = None
    legacy: bool = False
    warnings: list[str] = field(default_factory=list)

    def profile(self, name: str | None = None) -> DataProfile:
        """The profile to use: `name`, else `default_profile`, else the only one."""
        if name is None:
            name = self.default_profile
            if name is None and len(self.profiles) == 1:
                name = next(iter(self.profiles))
        if name is None:
            raise DataSpecError(self.path, "", "no default_profile and several profiles "
                                f"({', '.join(self.profiles)}); choose one with --profile")
        if name not in self.profiles:
            if self.legacy:
                raise DataSpecError(self.path, "", "has a flat 'data' list, no profiles; "
                                    f"drop --profile {name}")
            raise DataSpecError(self.path, "", f"no profile {name!r}; expected one of "
                                f"{', '.join(self.profiles) or '(none)'}")
        return self.profiles[name]


def load_data_spec(path: Path, doc: object) -> DataSpec:
    """Validate a parsed data.yml document `doc` read from `path`."""
    if not isinstance(doc, dict):
        raise DataSpecError(path, "", "expected a mapping with 'profiles' (or a legacy 'data' "
                            "list)", type(doc).__name__)
    warnings: list[str] = []
    if "profiles" in doc:
        profiles_doc = doc["profiles"]
        if not isinstance(profiles_doc, dict) or not profiles_doc:
            raise DataSpecError(path, "profiles", "expected a mapping of profile name "
                                "-> {policy, data}")
        profiles = {str(name): _profile(path, str(name), body, f"profiles.{name}", warnings)
                    for name, body in profiles_doc.items()}
        for key in sorted(set(doc) - {"schema_version", "default_profile", "profiles"}):
            warnings.append(f"{path}: unknown key {key!r} ignored")
        default = doc.get("default_profile")
        if default is not None and str(default) not in profiles:
            raise DataSpecError(path, "default_profile", f"expected one of "
                                f"{', '.join(profiles)}", repr(default))
        version = doc.get("schema_version")
        return DataSpec(path, profiles, None if default is None else str(default),
                        None if version is None else str(version), False, warnings)
    if "data" in doc:
        profile = _profile(path, LEGACY_PROFILE, doc, "", warnings)
        return DataSpec(path, {LEGACY_PROFILE: profile}, LEGACY_PROFILE, None, True, warnings)
    raise DataSpecError(path, "profiles", "missing; expected a mapping of profiles "
                        "(or a legacy top-level 'data' list)")


def _profile(path: Path, name: str, body: object, where: str,
             warnings: list[str]) -> DataProfile:
    prefix = f"{where}." if where else ""
    if not isinstance(body, dict):
        raise DataSpecError(path, where, "expected a mapping with 'data'")
    policy = _policy(path, body.get("policy") or {}, f"{prefix}policy", warnings)
    items = body.get("data")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise DataSpecError(path, f"{prefix}data", "expected a list of data entries")
    entries = [_entry(path, item, f"{prefix}data[{i}]", warnings) for i, item in enumerate(items)]
    seen_names: set[str] = set()
    seen_targets: dict[str, str] = {}
    for entry in entries:
        if entry.name in seen_names:
            raise DataSpecError(path, "", f"profile {name!r}: entry name {entry.name!r} "
                                "appears twice; expected unique names")
        seen_names.add(entry.name)
        target = str(PurePosixPath(entry.target_location))
        if target in seen_targets:
            raise DataSpecError(path, "", f"profile {name!r}: entries "
                                f"{seen_targets[target]!r} and {entry.name!r} share "
                                f"target_location {target!r}")
        seen_targets[target] = entry.name
    return DataProfile(name, policy, entries)


def _policy(path: Path, doc: object, where: str, warnings: list[str]) -> DataPolicy:
    if not isinstance(doc, dict):
        raise DataSpecError(path, where, "expected a mapping with retry_attempts and timeout")
    for key in sorted(set(doc) - _POLICY_KEYS):
        warnings.append(f"{path}: unknown key '{where}.{key}' ignored")
    values: dict[str, Any] = {}  # DataPolicy's keyword arguments, each checked below
    for key, kind in (("retry_attempts", int), ("timeout", float), ("backoff", float)):
        if key not in doc:
            continue
        value = doc[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (kind is int and not isinstance(value, int)):
            raise DataSpecError(path, f"{where}.{key}", "expected a non-negative "
                                f"{'integer' if kind is int else 'number'}", repr(value))
        values[key] = kind(value)
    return DataPolicy(**values)


def _entry(path: Path, item: object, where: str, warnings: list[str]) -> DataEntry:
    if not isinstance(item, dict):
        raise DataSpecError(path, where, "expected a mapping with name, source_type, source, "
                            f"target_location; got {item!r}")
    label = f"{where} ({item['name']!r})" if "name" in item else where

    def fail(key: str, expected: str) -> DataSpecError:
        return DataSpecError(path, key, expected, entry=label)

    source = item.get("source")
    if not isinstance(source, str) or not source:
        raise fail("source", f"expected a path or URL string, got {source!r}")
    name = item.get("name")
    if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name) == "":
        raise fail("name", f"expected a non-empty string, got {name!r}")
    source_type = item.get("source_type") or _infer_source_type(source)
    if source_type not in SOURCE_TYPES:
        raise fail("source_type", f"expected one of {', '.join(SOURCE_TYPES)}, "
                                  f"got {source_type!r}")
    target = item.get("target_location")
    if target is None:
        target = PurePosixPath(urlparse(source).path if "://" in source else source).name
    if not isinstance(target, str) or not target:
        raise fail("target_location", f"expected a path relative to the run folder, "
                                      f"got {target!r}")
    size = _count(item.get("expected_size"), "expected_size", " (bytes)", fail)
    files = _count(item.get("files"), "files", "", fail)
    checksum = _checksum(item.get("checksum"), fail)
    post_fetch = _post_fetch(item.get("post_fetch"), fail)
    options = item.get("storage_options")
    if options is not None:
        _check_storage_options(options, source_type, fail)
    for key in sorted(set(item) - _ENTRY_KEYS):
        warnings.append(f"{path}: entry {label}: unknown key {key!r} ignored")
    first_cell = item.get("first_cell")
    return DataEntry(name=str(name), source_type=source_type, source=source,
                     target_location=target, expected_size=size, checksum=checksum,
                     read_by=str(item.get("read_by", "manager")),
                     first_cell=first_cell if isinstance(first_cell, int) else None,
                     files=files, post_fetch=post_fetch, storage_options=options)


def _count(value: object, key: str, unit: str,
           fail: Callable[[str, str], DataSpecError]) -> int | None:
    """An optional non-negative integer field (`expected_size`, `files`)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise fail(key, f"expected a non-negative integer{unit}, got {value!r}")
    return value


def _checksum(value: object, fail: Callable[[str, str], DataSpecError]) -> str | None:
    """An optional 'algo:hex' checksum, as a string."""
    if value is None:
        return None
    try:
        parse_checksum(str(value))
    except ValueError as exc:
        raise fail("checksum", f"expected 'algo:hex': {exc}") from None
    return str(value)


def _post_fetch(value: object, fail: Callable[[str, str], DataSpecError]) -> dict | None:
    """An optional `post_fetch` step: `{operation: untar|unzip}`, or the operation alone."""
    if value is None:
        return None
    if isinstance(value, str):
        value = {"operation": value}
    if not isinstance(value, dict) or value.get("operation") not in POST_FETCH:
        raise fail("post_fetch", f"expected {{operation: untar|unzip}}, got {value!r}")
    return value


def _check_storage_options(options: object, source_type: str,
                           fail: Callable[[str, str], DataSpecError]) -> None:
    """`storage_options` (s3 only) is a mapping passed to fsspec; it may not hold credentials."""
    key = "storage_options"
    if source_type != "s3":
        raise fail(key, f"applies to s3 entries only (this one is {source_type})")
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise fail(key, "expected a mapping of s3fs options, like {endpoint_url: "
                        f"https://..., anon: true}}, got {options!r}")
    stack = [options]
    while stack:
        level = stack.pop()
        for name, value in level.items():
            if str(name).lower() in _SECRET_OPTIONS:
                raise fail(key, f"holds credentials ({name!r}); expected them in the "
                                "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                "AWS_PROFILE), not in the backpack")
            if isinstance(value, dict):
                stack.append(value)


def _infer_source_type(source: str) -> str:
    """Legacy entries may omit source_type: a URL says it, an absolute path is fs."""
    scheme = urlparse(source).scheme.lower() if "://" in source else ""
    if scheme:
        return scheme
    return "fs" if source.startswith("/") else "backpack"


@dataclass(frozen=True)
class DataItem:
    name: str
    target: str
    checksum: str | None
    size: int | None


def parse_data(path: Path) -> dict[tuple[str, str], DataItem]:
    """Data entries of a data.yml, every profile's, by (name, target_location); the schema is
    checked by `auditor.backpack.data` (Floability profiles, or the legacy flat `data:` list)."""
    spec = load_data_spec(path, load_yaml(path))
    return {(e.name, e.target_location): DataItem(e.name, e.target_location, e.checksum,
                                                  e.expected_size)
            for profile in spec.profiles.values() for e in profile.entries}
