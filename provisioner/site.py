"""Site profiles: what a facility needs from every worker job, as data (`--site FILE`,
`$FLO_SITE`).

A site file is a small YAML mapping (schema 1; every key optional):

```yaml
batch: slurm              # slurm | pbs | sge | htcondor | lsf: the engine when --engine is auto
queue: normal             # the queue (SLURM: partition; `partition` is accepted as its name)
account: TG-ABC123        # SLURM/PBS -A, SGE/LSF project (-P)
walltime: "02:00:00"      # HH:MM:SS per worker job (none for HTCondor)
directives: []            # extra header lines, without the prefix (#SBATCH, #PBS, #$, #BSUB);
                          #   HTCondor: "key = value" submit-file lines
job_prologue: []          # shell lines run in the job before the worker (module load ...)
scratch_dir: /scratch/$USER/flo-run   # run folders, on a filesystem the nodes share
cache_dir: /work/$USER/flo-envs       # environments, on a filesystem the nodes share
interface: ib0            # the network interface scheduler and workers use; or
host: 10.1.2.3            #   the scheduler's address (give one of the two)
worker_extra_args: []     # extra arguments of `dask worker` (--lifetime 55m ...)
parallel_environment: smp # SGE only: the PE that reserves cores > 1 (-pe NAME CORES)
```

Command-line flags override the file. `$USER` and `~` are expanded in the two folders.
Errors name the file and the key (`SiteError`); what one batch system cannot do with a key
(a walltime on HTCondor) is said by that engine, through `SiteProfile.error`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from auditor.common.errors import FloError

#: The batch systems a site can name (each is an engine of the same name).
BATCH_SYSTEMS = ("slurm", "pbs", "sge", "htcondor", "lsf")
#: The variable naming a site file when --site is not given.
SITE_VARIABLE = "FLO_SITE"
_LIST_KEYS = ("directives", "job_prologue", "worker_extra_args")
_TEXT_KEYS = ("batch", "queue", "account", "walltime", "interface", "host",
              "parallel_environment")
_FOLDER_KEYS = ("scratch_dir", "cache_dir")
KNOWN_KEYS = ("schema", *_TEXT_KEYS, "partition", *_LIST_KEYS, *_FOLDER_KEYS)
_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")


class SiteError(FloError):
    """A site file that cannot be used; the message names the file, the key and the fix."""

    def __init__(self, path: Path, key: str | None, problem: str) -> None:
        if str(path).startswith("--"):  # a command-line flag standing in for the file
            super().__init__(f"{path}: {problem}")
        else:
            where = f"{path}: {key}" if key else str(path)
            super().__init__(f"site file {where}: {problem}")
        self.path = path
        self.key = key


@dataclass(frozen=True)
class SiteProfile:
    """A parsed site file; `path` is where it came from (None: no site file)."""

    path: Path | None = None
    batch: str | None = None
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None  # HH:MM:SS
    directives: tuple[str, ...] = ()
    job_prologue: tuple[str, ...] = ()
    scratch_dir: Path | None = None
    cache_dir: Path | None = None
    interface: str | None = None
    host: str | None = None
    worker_extra_args: tuple[str, ...] = ()
    parallel_environment: str | None = None
    unknown: tuple[str, ...] = field(default=())  # keys the file has that we do not read

    @property
    def walltime_seconds(self) -> int | None:
        if self.walltime is None:
            return None
        hours, minutes, seconds = map(int, _WALLTIME.match(self.walltime).groups())  # type: ignore[union-attr]
        return hours * 3600 + minutes * 60 + seconds

    def error(self, key: str | None, problem: str) -> SiteError:
        """A problem with this profile's `key`, naming the file (or saying there is none)."""
        if self.path is None:
            return SiteError(Path("--site"), key, f"no site file gives {key}: {problem} "
                             "(a site file: --site FILE or $FLO_SITE)")
        return SiteError(self.path, key, problem)


def site_path(given: str | os.PathLike[str] | None) -> Path | None:
    """The site file to read: `given` (--site), else `$FLO_SITE`, else None."""
    named = given if given is not None else os.environ.get(SITE_VARIABLE) or None
    return Path(named).expanduser() if named else None


def load_site(given: str | os.PathLike[str] | None) -> SiteProfile:
    """The site profile of --site (or `$FLO_SITE`); an empty profile when neither is set."""
    path = site_path(given)
    if path is None:
        return SiteProfile()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SiteError(path, None, f"cannot be read ({exc.strerror or exc}); check --site or "
                        f"${SITE_VARIABLE}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SiteError(path, None, f"is not valid YAML{at}: "
                        f"{getattr(exc, 'problem', None) or exc}") from None
    return parse_site(doc if doc is not None else {}, path)


def parse_site(doc: Any, path: Path) -> SiteProfile:
    """Validate a loaded site document; every problem names its key."""
    if not isinstance(doc, dict):
        raise SiteError(path, None, "must be a mapping of keys (batch, queue, walltime, ...)")
    if doc.get("schema", 1) != 1:
        raise SiteError(path, "schema", f"{doc['schema']!r} is not a schema this flo-run "
                        "reads (1)")
    if "queue" in doc and "partition" in doc:
        raise SiteError(path, "partition", "give queue or partition, not both (they are the "
                        "same setting)")
    values: dict[str, Any] = {}
    for key in _TEXT_KEYS:
        if doc.get(key) is not None:
            values[key] = _text(doc[key], path, key)
    if doc.get("partition") is not None:
        values["queue"] = _text(doc["partition"], path, "partition")
    for key in _LIST_KEYS:
        if doc.get(key) is not None:
            values[key] = _lines(doc[key], path, key)
    for key in _FOLDER_KEYS:
        if doc.get(key) is not None:
            folder = os.path.expandvars(_text(doc[key], path, key))
            values[key] = Path(folder).expanduser()
    batch = values.get("batch")
    if batch is not None and batch not in BATCH_SYSTEMS:
        raise SiteError(path, "batch", f"{batch!r} is not a batch system flo-run knows; use "
                        f"one of {', '.join(BATCH_SYSTEMS)}")
    if "walltime" in values:
        values["walltime"] = _walltime(values["walltime"], path)
    if "interface" in values and "host" in values:
        raise SiteError(path, "host", "give interface or host, not both (host is the "
                        "scheduler's address, interface the network device it is on)")
    unknown = tuple(sorted(str(k) for k in doc if k not in KNOWN_KEYS))
    return SiteProfile(path=path, unknown=unknown, **values)


def _text(value: Any, path: Path, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SiteError(path, key, f"expected a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise SiteError(path, key, "is empty; remove the key or give a value")
    return text


def _lines(value: Any, path: Path, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SiteError(path, key, f"expected a list of strings, got {type(value).__name__}")
    return tuple(_text(item, path, f"{key}[{i}]") for i, item in enumerate(value))


def _walltime(value: str, path: Path) -> str:
    """HH:MM:SS (hours may exceed 24); plain minutes ("90") are accepted and converted."""
    if value.isdigit():
        minutes = int(value)
        return f"{minutes // 60:02d}:{minutes % 60:02d}:00"
    if not _WALLTIME.match(value):
        raise SiteError(path, "walltime", f"{value!r} is not HH:MM:SS (or minutes); write e.g. "
                        "'02:00:00' in quotes")
    return value


def interface_address(site: SiteProfile) -> str | None:
    """The IPv4 address of the site's `interface` on this machine (the scheduler listens
    there); None when the site names no interface."""
    if site.interface is None:
        return None
    import socket

    import psutil

    addresses = psutil.net_if_addrs()
    if site.interface not in addresses:
        raise site.error("interface", f"{site.interface!r} is not a network interface of this "
                         f"machine (it has {', '.join(sorted(addresses))})")
    for address in addresses[site.interface]:
        if address.family == socket.AF_INET:
            return address.address
    raise site.error("interface", f"{site.interface} has no IPv4 address here")


def with_flags(site: SiteProfile, *, queue: str | None = None, account: str | None = None,
               walltime: str | None = None) -> SiteProfile:
    """The profile with the command line's --queue, --account, --walltime put over it."""
    changes: dict[str, Any] = {}
    if queue:
        changes["queue"] = queue
    if account:
        changes["account"] = account
    if walltime:
        changes["walltime"] = _walltime(walltime, Path("--walltime"))
    return replace(site, **changes) if changes else site


def scheduler_host(site: SiteProfile, flag: str | None) -> str:
    """Where the scheduler listens: --host, else the site's host or interface, else loopback."""
    return flag or site.host or interface_address(site) or "127.0.0.1"
