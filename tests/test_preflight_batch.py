"""Preflight for the batch systems: commands present, the largest node from each system's own
listing (parsers on recorded output), a queue's limits (on the real SLURM), and what the site
asks that a system cannot do, each a one-line reason, exit 2, nothing built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest_slurm import Slurm
from test_preflight import checks, dir_args, failed, flo_run, make_backpack, nothing_made

from provisioner import batch_query as bq

QHOST = """\
HOSTNAME                ARCH         NCPU NSOC NCOR NTHR  LOAD  MEMTOT  MEMUSE  SWAPTO  SWAPUS
----------------------------------------------------------------------------------------------
global                  -               -    -    -    -     -       -       -       -       -
node01                  lx-amd64        2    1    2    2  0.25   23.5G    2.1G    1.0G     0.0
node02                  lx-amd64       16    2    8   16  0.01   62.8G    1.0G     0.0     0.0
"""
PBSNODES = """\
node01
     Mom = node01.cluster
     state = free
     resources_available.mem = 16gb
     resources_available.ncpus = 8

node02
     state = free
     resources_available.mem = 196608mb
     resources_available.ncpus = 48
"""
LSHOSTS = """\
HOST_NAME  type  model  cpuf  ncpus  maxmem  maxswp  server  RESOURCES
hostA      X86_64 Intel 60.0  16     62.8G   4G      Yes     (mg)
hostB      X86_64 Intel 60.0  4      15.6G   -       Yes     ()
"""
SCONTROL = ("PartitionName=short AllowGroups=ALL Default=NO MaxNodes=4 MaxTime=01:00:00 "
            "MinNodes=0 State=UP TotalCPUs=2")


def test_node_listings_of_each_system() -> None:
    assert bq.sge_nodes(QHOST) == [(2, 24064), (16, 64307)]
    assert bq.pbs_nodes(PBSNODES) == [(8, 16384), (48, 196608)]
    assert bq.condor_nodes("8 16000\n1 2048\n") == [(8, 16000), (1, 2048)]
    assert bq.lsf_nodes(LSHOSTS) == [(16, 64307), (4, 15974)]
    assert bq.slurm_nodes("2 24105\n64 256000+\n") == [(2, 24105), (64, 256000)]


def test_slurm_partition_limits() -> None:
    limits = bq.slurm_partition(SCONTROL, "short")
    assert (limits.name, limits.state, limits.max_seconds, limits.max_nodes) == \
        ("short", "UP", 3600, 4)
    assert bq.slurm_duration("2-00:30:00") == 2 * 86400 + 1800
    assert bq.slurm_duration("90") == 5400 and bq.slurm_duration("UNLIMITED") is None
    assert bq.slurm_default_partition("long\ndebug*\n") == "debug"


def test_missing_batch_commands_fail_naming_them(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp")
    dirs = {"cache": tmp_path / "cache", "scratch": tmp_path / "scratch"}
    python_only = tmp_path / "bin"
    python_only.mkdir()
    done = flo_run("check", str(bp), "--engine", "sge", "--json", *dir_args(dirs),
                   env={"PATH": f"{python_only}{os.pathsep}/usr/bin/nonexistent"})
    assert done.returncode == 2, done.stderr
    [batch] = checks(done)["batch system"]
    assert batch["status"] == "failed"
    assert batch["reason"].startswith("qsub, qstat, qdel, qhost not found on PATH")
    assert nothing_made(dirs)


def test_what_the_system_cannot_do_fails_naming_the_site_key(tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp")
    site = tmp_path / "pool.yml"
    site.write_text("batch: htcondor\nwalltime: '01:00:00'\nretries: 3\n")
    dirs = {"cache": tmp_path / "cache", "scratch": tmp_path / "scratch"}
    done = flo_run("check", str(bp), "--site", str(site), "--json", *dir_args(dirs))
    assert done.returncode == 2
    by_name = checks(done)
    assert by_name["site"][0]["status"] == "warning" and "retries" in by_name["site"][0]["reason"]
    [job] = by_name["job script"]
    assert job["status"] == "failed"
    assert job["reason"].startswith(f"site file {site}: walltime: the htcondor engine cannot")
    # flo-run BP stops there too: one line, nothing built.
    run = flo_run(str(bp), "--execute", "--site", str(site), *dir_args(dirs))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("flo-run: preflight:")
    assert not (dirs["cache"]).exists() or not any(dirs["cache"].iterdir())


def test_slurm_queue_that_does_not_exist(slurm: Slurm, tmp_path: Path) -> None:
    bp = make_backpack(tmp_path / "bp")
    dirs = {"cache": tmp_path / "cache", "scratch": tmp_path / "scratch"}
    done = flo_run("check", str(bp), "--engine", "slurm", "--partition", "nosuch", "--json",
                   *dir_args(dirs))
    assert done.returncode == 2
    [queue] = [c for c in failed(done) if c["name"] == "queue"]
    assert queue["reason"].startswith("slurm queue nosuch does not exist")
    ok = flo_run("check", str(bp), "--engine", "slurm", "--walltime", "00:10:00", "--json",
                 *dir_args(dirs))
    [queue] = checks(ok)["queue"]
    assert queue["status"] == "passed" and "walltime 00:10:00" in queue["reason"]


def test_walltime_longer_than_the_partition_allows(slurm: Slurm, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The partition's answer is recorded (our test partition has no time limit); the rest
    of the check is real."""
    from provisioner import preflight
    from provisioner.site import SiteProfile

    monkeypatch.setattr(preflight, "queue_limits",
                        lambda engine, queue: bq.slurm_partition(SCONTROL, "short"))
    plan = preflight.PreflightPlan(compute=None, data_spec=None, engine="slurm", workers=1,
                                   scratch=tmp_path, cache=None,
                                   site=SiteProfile(walltime="02:00:00", queue="short"))
    [check] = preflight.check_queue(plan)
    assert check.status == "failed"
    assert check.reason.startswith("walltime 02:00:00 is longer than the 01:00:00 slurm queue "
                                   "short allows")
