"""The batch-system engine: Dask workers as SLURM jobs through dask-jobqueue (`--engine slurm`).

compute.yml maps onto each worker job: `cores` -> job CPUs and worker threads, `memory` (MB) ->
`--mem` and the worker's memory limit, `disk` (MB) -> `--tmp`, `min-workers`/`max-workers` ->
`cluster.adapt(minimum, maximum)`. Jobs run the worker environment's python, in the run folder,
with their logs in logs/ there. No `-t`: the partition's default time limit applies.

The SLURMCluster (and so the scheduler) lives in a separate process run by the worker
environment's python (jobqueue_manager.py), for the same reason the dask-local scheduler does:
its dask and distributed must be the workers', not flo-run's. flo-run lends it its own copy of
dask-jobqueue (pure Python) when the worker environment has none. Teardown: the manager closes
the cluster on SIGTERM, then flo-run `scancel`s every job carrying the run's job name (a
backstop for a manager that died) and waits until squeue no longer lists them.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil

from auditor.errors import CommandError
from auditor.process import run
from auditor.record.cleanup import TOKEN_VARIABLE

from .base import Cluster, Engine, EngineError, EngineSpec, register, wait_for

MANAGER_SCRIPT = Path(__file__).with_name("jobqueue_manager.py")
INSTALL_HINT = "pip install 'flo-backpack[slurm]'"
#: Upper bounds at teardown: the manager closing its cluster, then squeue letting go of the jobs.
CLOSE_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 30.0


def jobqueue_path() -> Path:
    """The folder holding flo-run's dask_jobqueue package (found without importing it)."""
    found = importlib.util.find_spec("dask_jobqueue")
    if found is None or not found.submodule_search_locations:
        raise EngineError(f"the slurm engine needs dask-jobqueue: {INSTALL_HINT}")
    return Path(next(iter(found.submodule_search_locations))).parent


class SlurmCluster(Cluster):
    """A cluster whose workers are SLURM jobs named `job_name`; stop() cancels them all."""

    job_name = ""

    def jobs(self) -> dict[str, str]:
        """Job id -> state (PENDING, RUNNING, COMPLETING...) of this run's jobs in squeue."""
        if not self.job_name:
            return {}
        out = run(["squeue", "-h", f"--name={self.job_name}", f"--user={getpass.getuser()}",
                   "-o", "%i %T %r"], timeout=30, what="asking squeue for the worker jobs")
        jobs = {}
        for line in out.stdout.splitlines():
            job, state, reason = (line.split(maxsplit=2) + [""])[:3]
            jobs[job] = state if reason in ("", "None") else f"{state} ({reason})"
        return jobs

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

    def stop(self) -> list[psutil.Process]:
        self.stopping.set()
        manager = self.scheduler_process
        if manager is not None and manager.poll() is None:
            manager.terminate()  # its SLURMCluster.close() scancels the jobs it submitted
            try:
                manager.wait(timeout=CLOSE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.notes.append("the SLURM cluster manager did not close in time; killed")
        if self.job_name and shutil.which("scancel"):
            run(["scancel", f"--name={self.job_name}", f"--user={getpass.getuser()}"],
                timeout=30, check=False, what="cancelling the worker jobs")
            try:
                wait_for(lambda: not self.jobs(), DRAIN_TIMEOUT_S,
                         f"waiting for SLURM to end the jobs named {self.job_name}")
            except (EngineError, CommandError) as exc:
                self.notes.append(str(exc))
        return super().stop()

    def to_dict(self) -> dict:
        info = super().to_dict()
        info.update(engine="slurm", job_name=self.job_name,
                    workers=len(self._scheduler_info().get("jobs", [])))
        info["jobs"] = self._scheduler_info().get("jobs", [])
        return info

    def _scheduler_info(self) -> dict:
        try:
            return json.loads(self.scheduler_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


@register
class SlurmEngine(Engine):
    name = "slurm"
    cluster_class = SlurmCluster

    def _start(self, spec: EngineSpec, cluster: Cluster) -> None:
        assert isinstance(cluster, SlurmCluster)
        if spec.workers < 1:
            raise EngineError("the engine needs at least one worker; set min-workers in "
                              "compute/compute.yml or pass --workers N")
        if not shutil.which("sbatch"):
            raise EngineError("the slurm engine submits workers with sbatch, which is not on "
                              "PATH: run flo-run on a SLURM submit host")
        config_path = spec.run_dir / "slurm-manager.json"
        cluster.job_name = "flo-" + hashlib.sha1(spec.token.encode()).hexdigest()[:10]
        cluster.scheduler_file.unlink(missing_ok=True)
        config_path.write_text(json.dumps(manager_config(spec, cluster), indent=2),
                               encoding="utf-8")
        cluster.scheduler_process = cluster.launch(
            [spec.worker_python, MANAGER_SCRIPT, config_path], "slurm-manager.log")
        manager = cluster.scheduler_process

        def manager_died() -> str | None:
            if manager.poll() is None:
                return None
            return (f"the SLURM cluster manager exited with status {manager.returncode}: "
                    f"{cluster.log_tail('slurm-manager.log')}")

        what = (f"waiting for {spec.workers} SLURM worker job(s) named {cluster.job_name} to "
                "start and register")
        try:
            info = wait_for(cluster._scheduler_info, spec.start_timeout, what, manager_died)
        except EngineError as exc:
            states = ", ".join(f"{job} {state}" for job, state in cluster.jobs().items())
            raise EngineError(f"{exc}; squeue: {states or 'no jobs'}") from None
        cluster.scheduler_address = info["address"]
        if port := info.get("services", {}).get("dashboard"):
            cluster.dashboard_address = f"http://{spec.host}:{port}"
        cluster.notes.append(f"slurm: jobs named {cluster.job_name}, adaptive between "
                             f"{spec.workers} and {max(spec.max_workers, spec.workers)} workers")


def manager_config(spec: EngineSpec, cluster: SlurmCluster) -> dict:
    """What jobqueue_manager.py needs: SLURMCluster's arguments, the adaptive bounds, paths."""
    logs = spec.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    directives = [f"--chdir={spec.workdir or spec.run_dir}"]
    if spec.disk_mb:
        directives.append(f"--tmp={spec.disk_mb}M")
    options: dict = {
        "python": str(spec.worker_python), "cores": spec.threads, "processes": 1,
        # SLURM's M is MiB: `memory: 4096` becomes --mem=4096M and a 4096 MiB worker limit.
        "memory": f"{spec.memory_mb}MiB" if spec.memory_mb else "0",
        "job_name": cluster.job_name, "log_directory": str(logs),
        "local_directory": str(spec.run_dir / "dask-worker-space"),
        "job_extra_directives": directives, "job_directives_skip": ["#SBATCH -t "],
        "scheduler_options": {"host": spec.host, "port": spec.port,
                              "dashboard_address": f"{spec.host}:0"},
    }
    if not spec.memory_mb:
        options["job_directives_skip"].append("#SBATCH --mem=")
    return {"cluster": options, "minimum": spec.workers,
            "maximum": max(spec.max_workers, spec.workers),
            "scheduler_file": str(cluster.scheduler_file), "jobqueue_path": str(jobqueue_path()),
            "parent_pid": os.getpid(), "close_timeout": CLOSE_TIMEOUT_S - 5}
