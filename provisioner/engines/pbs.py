"""`--engine pbs`: worker jobs through dask-jobqueue's PBSCluster (PBS Pro, OpenPBS, Torque).

`cores` and `memory` -> `-l select=1:ncpus=N:mem=Mmb` (PBS's mb is MiB); PBS has no standard
scratch request, so `disk` is only noted; no working-directory directive either, so the job
script starts with `cd` into the notebook's folder. queue -> `-q`, account -> `-A`, walltime ->
`-l walltime=`. Cancelled with `qdel`.
"""

from __future__ import annotations

import shlex

from .base import EngineSpec, register
from .jobqueue import BatchEngine, user, workdir

#: qstat's one-letter states of jobs that are over (C: Torque's completed, F: PBS Pro's).
FINISHED = ("C", "F", "X")


@register
class PBSEngine(BatchEngine):
    name = "pbs"
    label = "PBS"
    jobqueue_class = "PBSCluster"
    submit_command = "qsub"
    cancel_command = "qdel"

    def system_options(self, spec: EngineSpec, options: dict) -> list[str]:
        site = spec.site
        select = f"select=1:ncpus={spec.threads}"
        if spec.memory_mb:
            select += f":mem={spec.memory_mb}mb"
        options["resource_spec"] = select
        options["job_script_prologue"].insert(0, f"cd {shlex.quote(workdir(spec))}")
        for key in ("queue", "account", "walltime"):
            if getattr(site, key):
                options[key] = getattr(site, key)
        if spec.disk_mb:
            return [f"pbs: compute.yml disk ({spec.disk_mb} MB) is not requested: PBS has no "
                    "standard scratch resource (add your site's under directives)"]
        return []

    def list_command(self) -> list[str]:
        return ["qstat", "-u", user()]

    def parse_listing(self, text: str) -> dict[str, str]:
        """`qstat -u USER`: `123.server  user  queue  name  sessid nds tsk mem time S elap`;
        the id as qsub printed it is read by dask-jobqueue as its number (123)."""
        jobs = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 10 and fields[0].split(".")[0].isdigit():
                state = fields[-2]
                if state not in FINISHED:
                    jobs[fields[0].split(".")[0]] = state
        return jobs
