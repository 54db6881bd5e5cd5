"""The workers' software spec, `software/worker-environment.yml`: what task runners used.

Only distributions a worker-side process used (a task runner, or a tool a task ran) are
seeds, plus the engine runtime every worker needs to receive tasks (Dask distributed and
cloudpickle), closed under `Requires-Dist`. Versions are the kernel environment's installed
ones, the same the manager's spec pins: Dask refuses version skew between client, scheduler
and workers. Packages only the manager used (plotting, say) stay out; no kernel machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from ..roles import WORKER, Roles
from .environment import (
    _CONDA_IMPLICIT,
    OWN_DISTRIBUTIONS,
    USED,
    DraftPin,
    EnvironmentSpec,
    _explain_requirements,
    _installed,
    env_name,
)

if TYPE_CHECKING:
    from ..resolve import EnvIndex, Resolution

#: What a worker needs to run tasks at all, whatever the tasks import.
WORKER_RUNTIME = ("distributed", "cloudpickle")
RUNTIME = "worker runtime"


def draft_worker_environment(resolution: Resolution, index: EnvIndex, roles: Roles, *, python: str,
                             notebook_stem: str) -> EnvironmentSpec | None:
    """Pins for the workers, or None when no worker-side process ran."""
    if not any(roles.side(pid) == WORKER for pid in roles.role if pid not in roles.threads):
        return None
    excluded = {canonicalize_name(n) for n in OWN_DISTRIBUTIONS}
    seeds: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for use in resolution.used.values():
        ckey = canonicalize_name(use.dist.name)
        if ckey in excluded or not any(roles.side(pid) == WORKER for pid in use.pids):
            continue
        seeds[ckey] = _installed(index, use.dist)
        reasons[ckey] = USED
    warnings = []
    for name in WORKER_RUNTIME:
        ckey = canonicalize_name(name)
        dist = index.get(name)
        if dist is None:
            warnings.append(f"{name} is not installed in the kernel's environment: "
                            "worker-environment.yml lacks the worker runtime; add it by hand")
        elif ckey not in seeds:
            seeds[ckey], reasons[ckey] = dist, RUNTIME
    closure, closure_warnings = index.closure(list(seeds.values()))
    warnings.extend(closure_warnings)
    members: dict[str, Any] = {canonicalize_name(d.name): d for d in closure}
    members.update(seeds)
    _explain_requirements(seeds, members, reasons)
    # No cells: a cell number says when a task ran, not that the worker needs it for that cell.
    pins = [DraftPin(dist, reasons.get(ckey, "required"), [], [WORKER])
            for ckey, dist in members.items()
            if ckey not in excluded and not (dist.kind == "conda" and ckey in _CONDA_IMPLICIT)]
    pins.sort(key=lambda p: p.key)
    return EnvironmentSpec(env_name(notebook_stem) + "-worker", python, pins, warnings)
