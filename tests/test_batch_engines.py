"""The batch engines (slurm, pbs, sge, htcondor, lsf) share one mapping from compute.yml and
the site profile: checked on the job scripts dask-jobqueue's own cluster classes write from
our arguments, and, for PBS and LSF, end to end against a stand-in batch system at the CLI
edge (tests/standin/batch.py installed as qsub/qstat/qdel, bsub/bjobs/bkill)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from provisioner.engines import EngineSpec, get_engine
from provisioner.site import SiteError, SiteProfile

dask_jobqueue = pytest.importorskip("dask_jobqueue")
STANDIN = Path(__file__).with_name("standin") / "batch.py"
PY = Path(sys.executable)


def spec_for(tmp_path: Path, site: SiteProfile | None = None, **kw) -> EngineSpec:
    values = {"threads": 2, "memory_mb": 2048, "disk_mb": 3000, "workers": 1,
              "max_workers": 3, **kw}
    return EngineSpec(run_dir=tmp_path / "run", workdir=tmp_path / "run" / "nb",
                      worker_python=PY, site=site or SiteProfile(), **values)


def job_script(engine: str, spec: EngineSpec) -> str:
    """The job script dask-jobqueue writes from the arguments our engine gives it."""
    backend = get_engine(engine)
    options, _ = backend.cluster_options(spec, "flo-test")
    cluster = getattr(dask_jobqueue, backend.jobqueue_class)(**options)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


SITE = SiteProfile(path=Path("site.yml"), queue="short", account="proj7", walltime="01:30:00",
                   job_prologue=("module load python/3.11",), directives=("--flag-x",),
                   worker_extra_args=("--lifetime", "50m"))

#: What each system's job script must hold for SITE and spec_for(): directives, resources.
EXPECTED = {
    "slurm": ["#SBATCH -J flo-test", "#SBATCH -p short", "#SBATCH -A proj7", "#SBATCH -n 1",
              "#SBATCH --cpus-per-task=2", "#SBATCH --mem=2G", "#SBATCH -t 01:30:00",
              "#SBATCH --chdir={workdir}", "#SBATCH --tmp=3000M", "#SBATCH --flag-x"],
    "pbs": ["#PBS -N flo-test", "#PBS -q short", "#PBS -A proj7",
            "#PBS -l select=1:ncpus=2:mem=2048mb", "#PBS -l walltime=01:30:00",
            "#PBS --flag-x", "cd {workdir}"],
    "sge": ["#$ -N flo-test", "#$ -q short", "#$ -P proj7", "#$ -l mem_free=2048M",
            "#$ -l h_rt=01:30:00", "#$ -pe smp 2", "#$ -wd {workdir}", "#$ --flag-x"],
    "lsf": ["#BSUB -J flo-test", "#BSUB -q short", '#BSUB -P "proj7"', "#BSUB -n 2",
            '#BSUB -R "span[hosts=1]"', "#BSUB -W 01:30", "#BSUB -cwd {workdir}",
            '#BSUB -R "rusage[tmp=3000]"', "#BSUB --flag-x"],
}


@pytest.mark.parametrize("engine", sorted(EXPECTED))
def test_job_script_has_the_systems_directives_resources_python_and_prologue(
        engine: str, tmp_path: Path) -> None:
    from dataclasses import replace

    site = replace(SITE, parallel_environment="smp")
    spec = spec_for(tmp_path, site)
    script = job_script(engine, spec)
    lines = script.splitlines()
    for want in EXPECTED[engine]:
        assert want.format(workdir=spec.workdir) in lines, (want, script)
    worker = next(ln for ln in lines if "distributed.cli.dask_worker" in ln)
    assert worker.startswith(f"{PY} -m distributed.cli.dask_worker")
    assert "--nthreads 2" in worker and "--memory-limit 2.00GiB" in worker
    assert "--lifetime 50m" in worker and f"--local-directory {spec.run_dir}" in worker
    assert lines.index("module load python/3.11") < lines.index(worker)
    assert "#$ -cwd" not in lines  # SGE: -wd names the folder instead


def test_lsf_memory_directive_from_compute_memory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LSF_ENVDIR", str(tmp_path))  # lsf.conf here: limits in MB
    (tmp_path / "lsf.conf").write_text("LSF_UNIT_FOR_LIMITS=MB\n")
    script = job_script("lsf", spec_for(tmp_path))
    assert f"#BSUB -M {2048 * 1024 * 1024 // 10**6 + 1}" in script.splitlines()


def test_htcondor_submit_file(tmp_path: Path) -> None:
    site = SiteProfile(path=Path("pool.yml"), account="group_physics",
                       job_prologue=("source /cvmfs/setup.sh",),
                       directives=("requirements = (OpSysMajorVer == 9)",))
    spec = spec_for(tmp_path, site)
    script = job_script("htcondor", spec)
    lines = script.splitlines()
    for want in ("RequestCpus = MY.DaskWorkerCores", "MY.DaskWorkerCores = 2",
                 f"MY.DaskWorkerMemory = {2048 * 1024 * 1024}",
                 f"MY.DaskWorkerDisk = {3000 * 1024 * 1024}",
                 f"initialdir = {spec.workdir}", "accounting_group = group_physics",
                 "requirements = (OpSysMajorVer == 9)", "Executable = /bin/sh"):
        assert want in lines, (want, script)
    arguments = next(ln for ln in lines if ln.startswith("Arguments"))
    # cd into the notebook's folder first, then the site's prologue, then the worker.
    assert arguments.index(f"cd {spec.workdir}") < arguments.index("source /cvmfs/setup.sh") \
        < arguments.index(f"{PY} -m distributed.cli.dask_worker")


def test_no_memory_or_disk_asked_leaves_those_directives_out(tmp_path: Path) -> None:
    spec = spec_for(tmp_path, memory_mb=0, disk_mb=0, threads=1)
    slurm = job_script("slurm", spec)
    assert "#SBATCH --mem" not in slurm and "#SBATCH -t" not in slurm
    assert "#PBS -l select=1:ncpus=1\n" in job_script("pbs", spec)
    assert "mem_free" not in job_script("sge", spec)
    condor = job_script("htcondor", spec)
    assert "RequestMemory" not in condor and "RequestDisk" not in condor
    assert "#BSUB -M" not in job_script("lsf", spec)


def test_what_a_system_cannot_do_is_refused_naming_the_site_file_and_key(tmp_path) -> None:
    with pytest.raises(SiteError, match=r"site\.yml: walltime: .*HTCondor has no walltime"):
        get_engine("htcondor").cluster_options(spec_for(tmp_path, SITE), "x")
    with pytest.raises(SiteError, match=r"site file site\.yml: parallel_environment: .*2 cores"):
        get_engine("sge").cluster_options(spec_for(tmp_path, SITE), "x")
    with pytest.raises(SiteError, match=r"directives: 'junk': HTCondor directives"):
        get_engine("htcondor").cluster_options(
            spec_for(tmp_path, SiteProfile(path=Path("p.yml"), directives=("junk",))), "x")


def test_disk_without_a_standard_request_is_noted(tmp_path: Path) -> None:
    _, notes = get_engine("pbs").cluster_options(spec_for(tmp_path), "x")
    assert notes and "disk (3000 MB) is not requested" in notes[0]


# ---------------------------------------------------------------- a stand-in at the CLI edge


@pytest.fixture
def standin(tmp_path: Path, monkeypatch) -> Path:
    """qsub/qstat/qdel and bsub/bjobs/bkill on PATH, all the stand-in; returns its state."""
    bin_dir, state = tmp_path / "standin-bin", tmp_path / "standin-state"
    bin_dir.mkdir()
    state.mkdir()
    for name in ("qsub", "qstat", "qdel", "bsub", "bjobs", "bkill"):
        (bin_dir / name).symlink_to(STANDIN)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FLO_STANDIN_STATE", str(state))
    return state


@pytest.mark.parametrize("engine,submit,cancel", [("pbs", "qsub", "qdel"),
                                                  ("lsf", "bsub", "bkill")])
def test_engine_submits_runs_tasks_and_cancels_with_the_systems_command(
        engine: str, submit: str, cancel: str, standin: Path, tmp_path: Path) -> None:
    from distributed import Client

    spec = spec_for(tmp_path, threads=1, memory_mb=512, disk_mb=0, max_workers=1,
                    start_timeout=90)
    spec.workdir.mkdir(parents=True)
    cluster = get_engine(engine).start(spec)
    try:
        with Client(cluster.scheduler_address, timeout=30) as client:
            where = client.submit(os.getcwd, pure=False).result(timeout=60)
        jobs = cluster.jobs()
        assert list(jobs) == cluster.to_dict()["jobs"] and len(jobs) == 1
    finally:
        survivors = cluster.stop()
    assert where == str(spec.workdir)  # the job ran in the notebook's folder
    calls = (standin / "calls.log").read_text().splitlines()
    [job] = jobs
    assert any(c.split()[0] == submit for c in calls)
    assert any(c.split()[0] == cancel and job in c.split()[1:] for c in calls), calls
    assert survivors == [] and cluster.jobs() == {}
    assert cluster.lost_workers() == []
