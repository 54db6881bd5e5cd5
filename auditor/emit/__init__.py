"""Emit: turn the resolved run into the backpack's spec files and the audit summary."""

from __future__ import annotations

from .compute import ComputeSpec, draft_compute, render_compute_yml
from .environment import (
    EnvironmentSpec,
    Pin,
    draft_environment,
    render_environment_yml,
    render_requirements_txt,
)

__all__ = ["ComputeSpec", "EnvironmentSpec", "Pin", "draft_compute", "draft_environment",
           "render_compute_yml", "render_environment_yml", "render_requirements_txt"]
