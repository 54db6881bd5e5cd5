"""Engines: a Dask scheduler and workers for the notebook's kernel to connect to."""

from __future__ import annotations

from . import (
    dask_local,  # noqa: F401  (registers the dask-local engine)
    htcondor,  # noqa: F401  (the batch engines: dask-jobqueue is imported by their manager)
    lsf,  # noqa: F401
    notebook,  # noqa: F401  (registers the notebook engine: it starts its own workers)
    pbs,  # noqa: F401
    sge,  # noqa: F401
    slurm,  # noqa: F401
)
from .base import (
    ADDRESS_VARIABLE,
    FILE_VARIABLE,
    Cluster,
    Engine,
    EngineError,
    EngineSpec,
    VersionMismatch,
    check_versions,
    get_engine,
    installed_versions,
    register,
)

__all__ = ["ADDRESS_VARIABLE", "FILE_VARIABLE", "Cluster", "Engine", "EngineError", "EngineSpec",
           "VersionMismatch", "check_versions", "get_engine", "installed_versions", "register"]
