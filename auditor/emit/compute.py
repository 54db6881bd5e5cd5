"""The worker resources spec, `compute/compute.yml` (DESIGN.md format, under vine_factory_config).

For now every value is a default, said so in the file; a later issue measures them from the
run (peak memory, cores busy, scratch disk written).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ComputeSpec:
    """Per-worker resources; memory and disk in MB."""

    min_workers: int = 1
    max_workers: int = 1
    cores: int = 1
    memory: int = 4096
    disk: int = 10000
    measured: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def draft_compute() -> ComputeSpec:
    """The defaults: one single-core worker with 4 GB of memory and 10 GB of disk."""
    return ComputeSpec()


def render_compute_yml(spec: ComputeSpec, notebook: str, date: str) -> str:
    """`compute/compute.yml` with a comment on each value saying where it came from."""
    origin = "measured" if spec.measured else "default, not measured: edit to fit the workload"
    return "\n".join([
        f"# Drafted by flo-audit from a traced run of {notebook} on {date}.",
        "# Per-worker resources; memory and disk in MB.",
        "vine_factory_config:",
        f"  min-workers: {spec.min_workers}  # {origin}",
        f"  max-workers: {spec.max_workers}  # {origin}",
        f"  cores: {spec.cores}  # {origin}",
        f"  memory: {spec.memory}  # {origin}",
        f"  disk: {spec.disk}  # {origin}",
    ]) + "\n"
