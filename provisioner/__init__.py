"""flo-run: deploy a backpack: validation -> data -> environments -> engine -> run (run.py)."""

from __future__ import annotations

from .api import (
    EnvReport,
    InvalidBackpack,
    ValidationResult,
    build_environments,
    clean_environments,
    list_environments,
    validate,
)

__all__ = ["EnvReport", "InvalidBackpack", "ValidationResult", "build_environments",
           "clean_environments", "list_environments", "validate"]
