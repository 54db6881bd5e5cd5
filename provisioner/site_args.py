"""The command line's side of site profiles: --site and the flags over its keys, shared by
`flo-run BP` and `flo-run check` (kept apart so `flo-run check -h` imports no engine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .site import BATCH_SYSTEMS, load_site, scheduler_host, with_flags

#: --engine's choices, for flo-run BP and flo-run check.
ENGINES = ("auto", "dask-local", *BATCH_SYSTEMS, "notebook")


def site_arguments(p: argparse.ArgumentParser) -> None:
    """--site and the flags that override its keys (flo-run BP and flo-run check)."""
    p.add_argument("--site", help="site profile (YAML: batch, queue, account, walltime, "
                   "directives, job_prologue, scratch_dir, cache_dir, interface/host, "
                   "worker_extra_args; default $FLO_SITE); flags override it")
    p.add_argument("--queue", "--partition", dest="queue", help="batch queue / partition")
    p.add_argument("--account", help="batch account / project")
    p.add_argument("--walltime", help="time limit per worker job, HH:MM:SS")


def site_options(args: argparse.Namespace) -> dict:
    """RunOptions' fields decided by the site file and the flags over it."""
    site = with_flags(load_site(args.site), queue=args.queue, account=args.account,
                      walltime=args.walltime)
    engine = args.engine
    return {"site": site, "engine": engine, "host": scheduler_host(site, args.host),
            "scratch_dir": Path(args.scratch_dir) if args.scratch_dir else site.scratch_dir,
            "cache_dir": Path(args.cache_dir) if args.cache_dir else site.cache_dir}
