"""Site profiles (--site FILE, $FLO_SITE): the model, its one-line errors naming file and key,
and flags over it, through `flo-run check` as a user runs it."""

from __future__ import annotations

import json

import pytest
from test_preflight import dir_args, flo_run, make_backpack

from provisioner.site import SiteError, load_site, scheduler_host, with_flags

SLURM_SITE = """\
batch: slurm
partition: debug
account: abc123
walltime: "00:30:00"
job_prologue: [module load python/3.11]
directives: ["--constraint=skx"]
scratch_dir: $SITE_ROOT/scratch
cache_dir: $SITE_ROOT/envs
worker_extra_args: [--lifetime, 25m]
"""


def test_a_site_file_is_read_with_variables_expanded(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SITE_ROOT", str(tmp_path))
    (tmp_path / "site.yml").write_text(SLURM_SITE + "colour: blue\n")
    site = load_site(tmp_path / "site.yml")
    assert (site.batch, site.queue, site.account, site.walltime) == \
        ("slurm", "debug", "abc123", "00:30:00")
    assert site.scratch_dir == tmp_path / "scratch" and site.cache_dir == tmp_path / "envs"
    assert site.job_prologue == ("module load python/3.11",)
    assert site.worker_extra_args == ("--lifetime", "25m") and site.walltime_seconds == 1800
    assert site.unknown == ("colour",)
    monkeypatch.setenv("FLO_SITE", str(tmp_path / "site.yml"))
    assert load_site(None).queue == "debug"  # $FLO_SITE when --site is not given
    monkeypatch.delenv("FLO_SITE")
    assert load_site(None).path is None


def test_flags_override_the_site(tmp_path) -> None:
    (tmp_path / "site.yml").write_text(SLURM_SITE + "host: 127.0.0.2\n")
    site = with_flags(load_site(tmp_path / "site.yml"), queue="long", walltime="90")
    assert site.queue == "long" and site.walltime == "01:30:00" and site.account == "abc123"
    assert scheduler_host(site, None) == "127.0.0.2"
    assert scheduler_host(site, "127.0.0.3") == "127.0.0.3"
    with pytest.raises(SiteError, match=r"^--walltime: '5h' is not HH:MM:SS"):
        with_flags(site, walltime="5h")


@pytest.mark.parametrize("text,message", [
    ("batch: torque\n", r"site\.yml: batch: 'torque' is not a batch system .* slurm, pbs"),
    ("walltime: 2 hours\n", r"site\.yml: walltime: '2 hours' is not HH:MM:SS"),
    ("queue: a\npartition: b\n", r"site\.yml: partition: give queue or partition"),
    ("job_prologue: {a: 1}\n", r"site\.yml: job_prologue: expected a list of strings"),
    ("interface: lo\nhost: 1.2.3.4\n", r"site\.yml: host: give interface or host"),
    ("- slurm\n", r"site\.yml: must be a mapping"),
    ("batch: [slurm\n", r"site\.yml: is not valid YAML at line"),
])
def test_bad_site_files_name_the_file_and_key(tmp_path, text: str, message: str) -> None:
    (tmp_path / "site.yml").write_text(text)
    with pytest.raises(SiteError, match=message):
        load_site(tmp_path / "site.yml")


def test_an_interface_that_does_not_exist_is_named(tmp_path) -> None:
    (tmp_path / "site.yml").write_text("interface: nosuch0\n")
    with pytest.raises(SiteError, match=r"interface: 'nosuch0' is not a network interface"):
        scheduler_host(load_site(tmp_path / "site.yml"), None)
    (tmp_path / "site.yml").write_text("interface: lo\n")
    assert scheduler_host(load_site(tmp_path / "site.yml"), None) == "127.0.0.1"


def test_flo_run_check_reads_the_site_and_its_folders(tmp_path) -> None:
    bp = make_backpack(tmp_path / "bp")
    (tmp_path / "site.yml").write_text(
        f"batch: slurm\nscratch_dir: {tmp_path / 'site-scratch'}\n"
        f"cache_dir: {tmp_path / 'site-cache'}\n")
    done = flo_run("check", str(bp), "--site", str(tmp_path / "site.yml"), "--json",
                   "--engine", "dask-local")
    report = json.loads(done.stdout)
    disk = " ".join(c["reason"] for c in report["checks"] if c["name"] == "disk")
    assert str(tmp_path) in disk  # the site's folders (their nearest existing parent)
    missing = flo_run("check", str(bp), "--site", str(tmp_path / "nope.yml"),
                      *dir_args({"cache": tmp_path / "c", "scratch": tmp_path / "s"}))
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith(f"flo-run: site file {tmp_path / 'nope.yml'}: "
                                             "cannot be read")
