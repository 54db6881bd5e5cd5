"""`--engine sge`: worker jobs through dask-jobqueue's SGECluster (Son of Grid Engine, Debian's
gridengine, UGE/AGE).

`memory` -> `-l mem_free=NM` (the request every Grid Engine knows; a site that enforces
`h_vmem` adds it under directives), `cores` > 1 -> `-pe PE N` with the site's
`parallel_environment` (Grid Engine has no other way to reserve cores), the notebook's folder
-> `-wd`. No standard scratch request, so `disk` is only noted. queue -> `-q`, account ->
`-P` (project), walltime -> `-l h_rt=`. Cancelled with `qdel`.
"""

from __future__ import annotations

from .base import EngineSpec, register
from .jobqueue import BatchEngine, user, workdir


@register
class SGEEngine(BatchEngine):
    name = "sge"
    label = "SGE"
    jobqueue_class = "SGECluster"
    submit_command = "qsub"
    cancel_command = "qdel"

    def system_options(self, spec: EngineSpec, options: dict) -> list[str]:
        site = spec.site
        if spec.memory_mb:
            options["resource_spec"] = f"mem_free={spec.memory_mb}M"
        if spec.threads > 1:
            if not site.parallel_environment:
                raise site.error("parallel_environment", f"compute.yml asks {spec.threads} "
                                 "cores per worker and Grid Engine reserves more than one "
                                 "slot only through a parallel environment: name one (qconf "
                                 "-spl lists them), or lower 'cores'")
            options["job_extra_directives"].append(
                f"-pe {site.parallel_environment} {spec.threads}")
        # -cwd (the submit folder) would do too; -wd says which folder.
        options["job_directives_skip"].append("-cwd")
        options["job_extra_directives"].append(f"-wd {workdir(spec)}")
        if site.queue:
            options["queue"] = site.queue
        if site.account:
            options["project"] = site.account
        if site.walltime:
            options["walltime"] = site.walltime
        if spec.disk_mb:
            return [f"sge: compute.yml disk ({spec.disk_mb} MB) is not requested: Grid Engine "
                    "has no standard scratch resource (add your site's under directives)"]
        return []

    def list_command(self) -> list[str]:
        return ["qstat", "-u", user()]

    def parse_listing(self, text: str) -> dict[str, str]:
        """`qstat -u USER`: `job-ID prior name user state submit/start-at queue slots`."""
        jobs = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0].isdigit():
                jobs[fields[0]] = fields[4]
        return jobs
