"""The command line's deploy flags, declared once for `flo-run BP` and `flo-run check` (a check
takes every flag the run it checks would): the engine, --site and the flags over its keys, the
workers, the folders, the scheduler's address, the interpreter, the builder, the data profile.
Kept apart from cli.py's run machinery so that `flo-run check -h` imports no engine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .site import BATCH_SYSTEMS, load_site, scheduler_host, with_flags

#: --engine's choices.
ENGINES = ("auto", "dask-local", *BATCH_SYSTEMS, "notebook")
BUILDERS = ("auto", "uv", "pip", "conda")


def deploy_arguments(p: argparse.ArgumentParser) -> None:
    """Add the deploy flags (flo-run BP and flo-run check) to `p`."""
    p.add_argument("--workers", type=int, help="workers to start (default: min-workers)")
    p.add_argument("--scratch-dir", help="where run folders live (default $FLO_SCRATCH_DIR or "
                   "TMPDIR/flo-run; environments go under it too unless --cache-dir)")
    p.add_argument("--cache-dir", help="environment cache (default: $FLO_CACHE_DIR, else "
                   "SCRATCH/envs when --scratch-dir is given, else "
                   "$XDG_CACHE_HOME/flo-backpack/envs, else ~/.cache/flo-backpack/envs)")
    p.add_argument("--host", help="address the scheduler, workers and JupyterLab listen on "
                   "(default: the site file's host or interface, else loopback)")
    p.add_argument("--scheduler-port", type=int, default=0, metavar="PORT",
                   help="port the Dask scheduler listens on (default: any free one)")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="where workers run: processes here (dask-local), batch jobs (slurm, "
                   "pbs, sge, htcondor, lsf; need flo-backpack[slurm]), or none provisioned "
                   "because the notebook starts its own (notebook); auto (default): notebook "
                   "when the audit saw the notebook start its own workers, else the site "
                   "file's batch system, else dask-local")
    p.add_argument("--site", help="site profile (YAML: batch, queue, account, walltime, "
                   "directives, job_prologue, scratch_dir, cache_dir, interface/host, "
                   "worker_extra_args; default $FLO_SITE); flags override it")
    p.add_argument("--queue", "--partition", dest="queue", help="batch queue / partition")
    p.add_argument("--account", help="batch account / project")
    p.add_argument("--walltime", help="time limit per worker job, HH:MM:SS")
    p.add_argument("--profile", help="data.yml profile")
    p.add_argument("--python", help="interpreter to build environments on")
    p.add_argument("--builder", default="auto", choices=BUILDERS,
                   help="environment builder: auto (default) uses micromamba/mamba/conda when "
                   "a spec has conda pins and one is installed, else uv")


def deploy_options(args: argparse.Namespace) -> dict[str, Any]:
    """RunOptions' fields set by the deploy flags, the site file under them."""
    site = with_flags(load_site(args.site), queue=args.queue, account=args.account,
                      walltime=args.walltime)
    return {"workers": args.workers, "port": args.scheduler_port, "python": args.python,
            "builder": args.builder, "profile": args.profile,
            "site": site, "engine": args.engine, "host": scheduler_host(site, args.host),
            "scratch_dir": Path(args.scratch_dir) if args.scratch_dir else site.scratch_dir,
            "cache_dir": Path(args.cache_dir) if args.cache_dir else site.cache_dir}
