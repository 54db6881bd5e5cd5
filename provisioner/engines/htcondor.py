"""`--engine htcondor`: worker jobs through dask-jobqueue's HTCondorCluster.

`cores` -> RequestCpus, `memory` -> RequestMemory (MiB), `disk` -> RequestDisk; the notebook's
folder -> `initialdir` and a `cd` before the worker (a pool that transfers files starts jobs
in a sandbox). HTCondor has no queues and no walltime request: a site file giving either is
refused, naming the key (the pool's own attribute goes under directives, `key = value`);
account -> `accounting_group`. Cancelled with `condor_rm`.
"""

from __future__ import annotations

import shlex

from .base import EngineSpec, register
from .jobqueue import BatchEngine, refuse, workdir

#: condor_q JobStatus codes: 1 idle, 2 running, 3 removed, 4 completed, 5 held,
#: 6 transferring output, 7 suspended.
STATES = {"1": "IDLE", "2": "RUNNING", "5": "HELD", "6": "TRANSFERRING", "7": "SUSPENDED"}


@register
class HTCondorEngine(BatchEngine):
    name = "htcondor"
    label = "HTCondor"
    jobqueue_class = "HTCondorCluster"
    submit_command = "condor_submit"
    cancel_command = "condor_rm"

    def system_options(self, spec: EngineSpec, options: dict) -> list[str]:
        site = spec.site
        refuse(spec, self, "walltime", "HTCondor has no walltime request; put the pool's own "
               "attribute under directives (e.g. '+MaxRuntime = 7200')")
        refuse(spec, self, "queue", "HTCondor pools have no queues; select machines with a "
               "'requirements = ...' line under directives")
        options["disk"] = f"{spec.disk_mb}MiB" if spec.disk_mb else "0"
        skip = options["job_directives_skip"]
        if not spec.disk_mb:
            skip.append("RequestDisk")
        if not spec.memory_mb:
            skip.append("RequestMemory")
        directives = {"initialdir": workdir(spec)}
        if site.account:
            directives["accounting_group"] = site.account
        options["job_extra_directives"] = directives
        options["job_script_prologue"].insert(0, f"cd {shlex.quote(workdir(spec))}")
        return []

    def list_command(self) -> list[str]:
        return ["condor_q", "-af:j", "JobStatus"]

    def parse_listing(self, text: str) -> dict[str, str]:
        """`condor_q -af:j JobStatus`: `123.0 2` per job."""
        jobs = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1] in STATES:
                jobs[fields[0]] = STATES[fields[1]]
        return jobs
