"""flo-audit: run a notebook under a tracer and draft its backpack from what the run used."""

from __future__ import annotations

__version__ = "0.1.0"
