"""compute/compute.yml: the per-worker resources (DESIGN.md format, under vine_factory_config).

Written by flo-audit (`render_compute_yml`, from what auditor/emit/compute.py measured), read
by flo-run (`compute_from_doc`, through auditor/backpack/layout.py) for its engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import SpecError


@dataclass
class ComputeSpec:
    """Per-worker resources; memory and disk in MB. `notes`: key -> how the value was derived."""

    min_workers: int = 1
    max_workers: int = 1
    cores: int = 1
    memory: int = 4096
    disk: int = 10000
    measured: bool = False
    notes: dict[str, str] = field(default_factory=dict)
    #: The figures measured (peak_rss_mb, peak_cores, mean_cores, disk_mb, workers_seen, ...).
    measurements: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def draft_compute() -> ComputeSpec:
    """The defaults: one single-core worker with 4 GB of memory and 10 GB of disk."""
    return ComputeSpec()


_COMPUTE_KEYS = {"min-workers": "min_workers", "max-workers": "max_workers", "cores": "cores",
                 "memory": "memory", "disk": "disk"}


def compute_from_doc(path: Path, doc: Mapping[str, Any], warnings: list[str]) -> ComputeSpec:
    """compute.yml's mapping as a ComputeSpec; SpecError naming the key when it breaks the
    format, a warning for each unknown key."""
    for key in sorted(set(doc) - {"vine_factory_config"}):
        warnings.append(f"{path}: unknown key {key!r} ignored")
    config = doc.get("vine_factory_config")
    if not isinstance(config, dict):
        raise SpecError(path, "vine_factory_config", "expected a mapping of "
                                + ", ".join(_COMPUTE_KEYS))
    values: dict[str, Any] = {}  # ComputeSpec's keyword arguments, each checked below
    for key, value in config.items():
        if key not in _COMPUTE_KEYS:
            warnings.append(f"{path}: unknown key 'vine_factory_config.{key}' ignored")
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SpecError(path, f"vine_factory_config.{key}",
                                    "expected a non-negative integer", repr(value))
        values[_COMPUTE_KEYS[key]] = value
    spec = ComputeSpec(**values)
    if spec.min_workers > spec.max_workers:
        raise SpecError(path, "vine_factory_config.min-workers", "expected at most "
                                f"max-workers ({spec.max_workers})", str(spec.min_workers))
    return spec


def render_compute_yml(spec: ComputeSpec, notebook: str, date: str) -> str:
    """`compute/compute.yml` with a comment on each value saying where it came from."""
    default = spec.notes.get("all", "default, not measured: edit to fit the workload")
    lines = [f"# Drafted by flo-audit from a traced run of {notebook} on {date}.",
             "# Per-worker resources; memory and disk in MB."]
    if spec.measured:
        lines.append("# Measured: psutil samples of each worker process and its children "
                     "(audit/samples.jsonl).")
    lines.append("vine_factory_config:")
    for key, value in (("min-workers", spec.min_workers), ("max-workers", spec.max_workers),
                       ("cores", spec.cores), ("memory", spec.memory), ("disk", spec.disk)):
        note = spec.notes.get(key, default)
        lines.append(f"  {key}: {value}  # {note}")
    return "\n".join(lines) + "\n"
