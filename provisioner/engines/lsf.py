"""`--engine lsf`: worker jobs through dask-jobqueue's LSFCluster (IBM Spectrum LSF).

`cores` -> `-n` (one host), `memory` -> `-M` (in the unit of the site's LSF_UNIT_FOR_LIMITS,
which dask-jobqueue reads from lsf.conf), `disk` -> `-R "rusage[tmp=N]"` (LSF's tmp is in MB),
the notebook's folder -> `-cwd`. queue -> `-q`, account -> `-P` (project), walltime -> `-W`
(LSF takes HH:MM: seconds are rounded up to a minute). Cancelled with `bkill`.
"""

from __future__ import annotations

from .base import EngineSpec, register
from .jobqueue import MIB, BatchEngine, workdir

#: bjobs states of jobs that are over.
FINISHED = ("DONE", "EXIT")


@register
class LSFEngine(BatchEngine):
    name = "lsf"
    label = "LSF"
    jobqueue_class = "LSFCluster"
    submit_command = "bsub"
    cancel_command = "bkill"

    def system_options(self, spec: EngineSpec, options: dict) -> list[str]:
        site = spec.site
        if spec.memory_mb:
            options["mem"] = spec.memory_mb * MIB
        else:
            options["job_directives_skip"].append("#BSUB -M")
        options["job_extra_directives"].append(f"-cwd {workdir(spec)}")
        if spec.disk_mb:
            options["job_extra_directives"].append(f'-R "rusage[tmp={spec.disk_mb}]"')
        if site.queue:
            options["queue"] = site.queue
        if site.account:
            options["project"] = site.account
        if (seconds := site.walltime_seconds) is not None:
            minutes = -(-seconds // 60)
            options["walltime"] = f"{minutes // 60:02d}:{minutes % 60:02d}"
        return []

    def list_command(self) -> list[str]:
        return ["bjobs", "-noheader", "-o", "jobid stat"]

    def parse_listing(self, text: str) -> dict[str, str]:
        jobs = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit() and fields[1] not in FINISHED:
                jobs[fields[0]] = fields[1]
        return jobs
