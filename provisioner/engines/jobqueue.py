"""Batch-system engines: Dask workers as batch jobs through dask-jobqueue (the base of
`--engine slurm | pbs | sge | htcondor | lsf`).

One mapping from compute.yml for every system: `cores` -> job cores and worker threads,
`memory` (MB, taken as MiB like SLURM's M) -> the system's memory directive and the worker's
memory limit, `disk` (MB) -> the system's scratch request where it has one, `min-workers` /
`max-workers` -> `cluster.adapt(minimum, maximum)`. Jobs run the worker environment's python,
in the run folder (the notebook's folder), with their logs in logs/ there; the site profile
adds queue, account, walltime, directives, prologue lines, interface and worker arguments.
A backend (slurm.py, pbs.py, ...) writes `system_options` (its directives) and
`parse_listing` (its queue listing); this module does the rest.

The dask-jobqueue cluster (and so the scheduler) lives in a separate process run by the worker
environment's python (jobqueue_manager.py), for the same reason the dask-local scheduler does:
its dask and distributed must be the workers'. flo-run lends it its own copy of dask-jobqueue
(pure Python) when the worker environment has none. The manager records every job it submits
in jobs.json. Teardown: the manager closes the cluster on SIGTERM (and when flo-run dies), which
cancels its jobs; then flo-run cancels with the system's own command every recorded job the
queue still lists (a backstop for a manager that died) and waits until the queue lets go.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

from auditor.common.errors import CommandError
from auditor.common.process import run
from auditor.common.tree import TOKEN_VARIABLE

from .base import Cluster, Engine, EngineError, EngineSpec, wait_for

MANAGER_SCRIPT = Path(__file__).with_name("jobqueue_manager.py")
INSTALL_HINT = "pip install 'flo-backpack[slurm]'"
#: Upper bounds at teardown: the manager closing its cluster, then the queue letting go.
CLOSE_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 30.0
#: Seconds a worker waits for a scheduler that went away before it exits by itself: a job
#: whose flo-run and manager were both killed ends on its own.
DEATH_TIMEOUT_S = 60
MIB = 1024 * 1024


def jobqueue_path() -> Path:
    """The folder holding flo-run's dask_jobqueue package (found without importing it)."""
    found = importlib.util.find_spec("dask_jobqueue")
    if found is None or not found.submodule_search_locations:
        raise EngineError(f"the batch engines need dask-jobqueue: {INSTALL_HINT}")
    return Path(next(iter(found.submodule_search_locations))).parent


class BatchCluster(Cluster):
    """A cluster whose workers are batch jobs named `job_name`; stop() cancels them all."""

    job_name = ""
    engine: BatchEngine

    @property
    def jobs_file(self) -> Path:
        return self.spec.run_dir / "jobs.json"

    def record(self) -> dict:
        """The manager's jobs.json: `submitted` (every job id), `current` (those the cluster
        holds now), `lost` (jobs whose worker left while the run went on)."""
        try:
            return json.loads(self.jobs_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def jobs(self) -> dict[str, str]:
        """Job id -> state of this run's jobs the batch system still lists."""
        return self.engine.queued(self, [str(j) for j in self.record().get("submitted", [])])

    @property
    def worker_pids(self) -> list[int]:
        """Worker processes on this host (they carry the run's token); on a real cluster the
        workers run on other nodes and this is empty: `jobs()` is the authority there."""
        pids = []
        for proc in psutil.process_iter():
            try:
                if (proc.environ().get(TOKEN_VARIABLE) == self.spec.token
                        and "distributed.cli.dask_worker" in proc.cmdline()):
                    pids.append(proc.pid)
            except psutil.Error:
                continue
        return pids

    def lost_workers(self) -> list[str]:
        """Worker jobs whose worker left the scheduler while the run went on (the job was
        cancelled, killed or hit its limit), as the manager saw it; retired ones are not."""
        return [f"worker {lost.get('worker')} (job {lost.get('job')}) left the scheduler; "
                "a replacement job was submitted"
                for lost in self.record().get("lost", [])]

    def stop(self) -> list[psutil.Process]:
        self.stopping.set()
        manager = self.scheduler_process
        label = self.engine.label
        if manager is not None and manager.poll() is None:
            manager.terminate()  # its cluster.close() cancels the jobs it submitted
            try:
                manager.wait(timeout=CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.notes.append(f"the {label} cluster manager did not close in time; killed")
        if self.job_name and shutil.which(self.engine.cancel_command):
            try:
                if left := self.jobs():
                    run(self.engine.cancel_argv(self, sorted(left)), timeout=30, check=False,
                        what="cancelling the worker jobs")
                wait_for(lambda: not self.jobs(), DRAIN_TIMEOUT_S,
                         f"waiting for {label} to end the jobs named {self.job_name}")
            except (EngineError, CommandError) as exc:
                self.notes.append(str(exc))
        return super().stop()

    def to_dict(self) -> dict:
        info = super().to_dict()
        jobs = [str(j) for j in self.record().get("submitted", [])]
        info.update(engine=self.engine.name, job_name=self.job_name, workers=len(jobs),
                    jobs=jobs)
        return info

    def _scheduler_info(self) -> dict:
        try:
            return json.loads(self.scheduler_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


class BatchEngine(Engine):
    """The bookkeeping every batch system shares; a backend sets the class attributes and
    writes `system_options` and `parse_listing`."""

    cluster_class = BatchCluster
    label = ""  # how people write the system's name: "SLURM"
    jobqueue_class = ""  # dask_jobqueue's cluster class: "SLURMCluster"
    submit_command = ""
    cancel_command = ""

    # -- what a backend writes

    def system_options(self, spec: EngineSpec, options: dict) -> list[str]:
        """Put the system's own directives into `options` (dask-jobqueue's arguments): memory
        and disk requests, the working directory, queue, account, walltime. Returns notes
        for the closing summary (a request the system cannot make)."""
        raise NotImplementedError

    def list_command(self) -> list[str]:
        """The command listing this user's jobs, parsed by `parse_listing`."""
        raise NotImplementedError

    def parse_listing(self, text: str) -> dict[str, str]:
        """Job id (as dask-jobqueue reads it from the submit command) -> state, from the
        output of `list_command`; jobs in a finished state are left out."""
        raise NotImplementedError

    # -- shared

    def queued(self, cluster: BatchCluster, ids: Sequence[str]) -> dict[str, str]:
        """The jobs of `ids` the system still lists (finished states left out)."""
        argv = self.list_command()
        if not ids or shutil.which(argv[0]) is None:
            return {}
        out = run(argv, timeout=30, check=False,
                  what=f"asking {self.label} for the worker jobs")
        listed = self.parse_listing(out.stdout)
        return {job: listed[job] for job in ids if job in listed}

    def cancel_argv(self, cluster: BatchCluster, ids: Sequence[str]) -> list[str]:
        """The system's own command that cancels `ids` (qdel, condor_rm, bkill, ...)."""
        return [self.cancel_command, *ids]

    def cluster_options(self, spec: EngineSpec, job_name: str) -> tuple[dict, list[str]]:
        """dask-jobqueue's cluster arguments for `spec` (and the notes), the same mapping for
        every system; the backend adds its directives."""
        site = spec.site
        logs = spec.run_dir / "logs"
        options: dict = {
            "python": str(spec.worker_python), "cores": spec.threads, "processes": 1,
            "memory": f"{spec.memory_mb}MiB" if spec.memory_mb else "0",
            "job_name": job_name, "log_directory": str(logs),
            "local_directory": str(spec.run_dir / "dask-worker-space"),
            "death_timeout": DEATH_TIMEOUT_S,
            "job_extra_directives": [], "job_directives_skip": [],
            "job_script_prologue": list(site.job_prologue),
            "worker_extra_args": list(site.worker_extra_args),
            "scheduler_options": {"host": spec.host, "port": spec.port,
                                  "dashboard_address": f"{spec.host}:0"},
        }
        if site.interface:  # workers listen there too (`dask worker --interface`)
            options["interface"] = site.interface
        notes = self.system_options(spec, options)
        if isinstance(options["job_extra_directives"], dict):  # HTCondor: key = value
            options["job_extra_directives"].update(_submit_lines(spec, site.directives))
        else:
            options["job_extra_directives"] += list(site.directives)
        return options, notes

    def _start(self, spec: EngineSpec, cluster: Cluster) -> None:
        assert isinstance(cluster, BatchCluster)
        cluster.engine = self
        if spec.workers < 1:
            raise EngineError("the engine needs at least one worker; set min-workers in "
                              "compute/compute.yml or pass --workers N")
        if not shutil.which(self.submit_command):
            raise EngineError(f"the {self.name} engine submits workers with "
                              f"{self.submit_command}, which is not on PATH: run flo-run on a "
                              f"{self.label} submit host")
        config_path = spec.run_dir / f"{self.name}-manager.json"
        log_name = f"{self.name}-manager.log"
        cluster.job_name = "flo-" + hashlib.sha1(spec.token.encode()).hexdigest()[:10]
        cluster.scheduler_file.unlink(missing_ok=True)
        config = manager_config(self, spec, cluster)
        cluster.notes += config.pop("notes")
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        cluster.scheduler_process = cluster.launch(
            [spec.worker_python, MANAGER_SCRIPT, config_path], log_name)
        manager = cluster.scheduler_process

        def manager_died() -> str | None:
            if manager.poll() is None:
                return None
            return (f"the {self.label} cluster manager exited with status "
                    f"{manager.returncode}: {cluster.log_tail(log_name)}")

        what = (f"waiting for {spec.workers} {self.label} worker job(s) named "
                f"{cluster.job_name} to start and register")
        try:
            info = wait_for(cluster._scheduler_info, spec.start_timeout, what, manager_died)
        except EngineError as exc:
            states = ", ".join(f"{job} {state}" for job, state in cluster.jobs().items())
            raise EngineError(f"{exc}; {self.list_command()[0]}: {states or 'no jobs'}; "
                              f"manager: {cluster.log_tail(log_name)}") from None
        cluster.scheduler_address = info["address"]
        if port := info.get("services", {}).get("dashboard"):
            cluster.dashboard_address = f"http://{spec.host}:{port}"
        cluster.notes.append(f"{self.name}: jobs named {cluster.job_name}, adaptive between "
                             f"{spec.workers} and {max(spec.max_workers, spec.workers)} workers")


def manager_config(engine: BatchEngine, spec: EngineSpec, cluster: BatchCluster) -> dict:
    """What jobqueue_manager.py needs: the cluster class and its arguments, the adaptive
    bounds, paths; `notes` is for the caller."""
    (spec.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    options, notes = engine.cluster_options(spec, cluster.job_name)
    return {"class": engine.jobqueue_class, "cluster": options, "minimum": spec.workers,
            "maximum": max(spec.max_workers, spec.workers),
            "scheduler_file": str(cluster.scheduler_file), "jobs_file": str(cluster.jobs_file),
            "jobqueue_path": str(jobqueue_path()), "parent_pid": os.getpid(),
            "close_timeout": CLOSE_TIMEOUT_S - 5, "notes": notes}


def workdir(spec: EngineSpec) -> str:
    """Where the job runs: the notebook's folder in the run folder."""
    return str(spec.workdir or spec.run_dir)


def user() -> str:
    return getpass.getuser()


def _submit_lines(spec: EngineSpec, lines: Sequence[str]) -> dict[str, str]:
    """HTCondor submit-file lines `key = value` of the site's directives."""
    parsed = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise spec.site.error("directives", f"{line!r}: HTCondor directives are "
                                  "submit-file lines 'key = value'")
        parsed[key.strip()] = value.strip()
    return parsed


def refuse(spec: EngineSpec, engine: BatchEngine, key: str, why: str) -> None:
    """A site setting this batch system has no directive for: say so, naming the key."""
    if getattr(spec.site, key, None):
        raise spec.site.error(key, f"the {engine.name} engine cannot use it: {why}")
