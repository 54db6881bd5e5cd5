"""The notebook brings its own workers: no scheduler is provisioned.

A notebook that starts its own cluster (`Client(n_workers=2)`, `LocalCluster()`, a
multiprocessing or joblib pool) runs those workers with the kernel's interpreter, that is in
the manager environment. Pointing it at a provisioned scheduler would break it: with
DASK_SCHEDULER_ADDRESS set, `Client(n_workers=2)` refuses its cluster keywords. `flo-run`
chooses this engine (with `--engine auto`, the default) when the audit saw the notebook start
its own workers, so a backpack re-runs as it was audited.
"""

from __future__ import annotations

from auditor.common.tree import TOKEN_VARIABLE

from .base import Cluster, Engine, EngineSpec, register


class OwnWorkers(Cluster):
    """No scheduler and no workers of ours; processes started for the run are still ours."""

    def environment(self) -> dict[str, str]:
        return {TOKEN_VARIABLE: self.spec.token}


@register
class NotebookWorkers(Engine):
    name = "notebook"
    cluster_class = OwnWorkers
    checks_versions = False  # the worker environment is not used: the kernel starts workers
    uses_worker_environment = False

    def _start(self, spec: EngineSpec, cluster: Cluster) -> None:
        cluster.notes.append("engine notebook: no scheduler provisioned; the audit saw the "
                             "notebook start its own workers (in the manager environment) or "
                             "use none")
