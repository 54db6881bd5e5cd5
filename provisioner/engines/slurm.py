"""`--engine slurm`: worker jobs through dask-jobqueue's SLURMCluster.

`memory` -> `--mem` (M is MiB in SLURM), `disk` -> `--tmp`, the notebook's folder -> `--chdir`;
queue -> `-p`, account -> `-A`, walltime -> `-t` (none given: the partition's default time
limit applies). Jobs are listed by their name (`squeue --name`), so a job the manager submitted
but had not yet recorded is cancelled too (`scancel --name`).
"""

from __future__ import annotations

from collections.abc import Sequence

from auditor.common.process import run

from .base import EngineSpec, register
from .jobqueue import BatchCluster, BatchEngine, user, workdir

#: squeue states of jobs that are over (squeue still lists them for a moment).
FINISHED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE")


@register
class SlurmEngine(BatchEngine):
    name = "slurm"
    label = "SLURM"
    jobqueue_class = "SLURMCluster"
    submit_command = "sbatch"
    cancel_command = "scancel"

    def system_options(self, spec: EngineSpec, options: dict) -> list[str]:
        site = spec.site
        options["job_extra_directives"].append(f"--chdir={workdir(spec)}")
        if spec.disk_mb:
            options["job_extra_directives"].append(f"--tmp={spec.disk_mb}M")
        if not spec.memory_mb:
            # job_mem given: dask-jobqueue 0.9 fails formatting a memory of 0 for --mem.
            options["job_mem"] = "0"
            options["job_directives_skip"].append("#SBATCH --mem=")
        if site.walltime:
            options["walltime"] = site.walltime
        else:
            options["job_directives_skip"].append("#SBATCH -t ")
        if site.queue:
            options["queue"] = site.queue
        if site.account:
            options["account"] = site.account
        return []

    def list_command(self) -> list[str]:
        return ["squeue", "-h", f"--user={user()}", "-o", "%i %T %r"]

    def parse_listing(self, text: str) -> dict[str, str]:
        jobs = {}
        for line in text.splitlines():
            job, state, reason = (line.split(maxsplit=2) + ["", ""])[:3]
            if job and state not in FINISHED:
                jobs[job] = state if reason in ("", "None") else f"{state} ({reason})"
        return jobs

    def queued(self, cluster: BatchCluster, ids: Sequence[str]) -> dict[str, str]:
        """This run's jobs by name: also those not yet in jobs.json."""
        if not cluster.job_name:
            return {}
        out = run(["squeue", "-h", f"--name={cluster.job_name}", f"--user={user()}",
                   "-o", "%i %T %r"], timeout=30, what="asking squeue for the worker jobs")
        return self.parse_listing(out.stdout)

    def cancel_argv(self, cluster: BatchCluster, ids: Sequence[str]) -> list[str]:
        return ["scancel", f"--name={cluster.job_name}", f"--user={user()}"]
