"""What a batch system says about itself, for the preflight: its commands, the largest node,
and a queue's limits. One small function per system and question; each asks one command
through `auditor.common.process.run` and parses its plain output (the parsers take text, so they are
tested on recorded output too). None when the system does not say.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from auditor.common.errors import CommandError
from auditor.common.process import run

#: What each batch engine needs on PATH, and the command that says whether it answers.
BATCH_COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "slurm": (("sbatch", "squeue", "scancel", "sinfo"), ("sinfo", "--noheader", "-o", "%D")),
    "pbs": (("qsub", "qstat", "qdel", "pbsnodes"), ("qstat", "-B")),
    "sge": (("qsub", "qstat", "qdel", "qhost"), ("qhost",)),
    "htcondor": (("condor_submit", "condor_q", "condor_rm", "condor_status"),
                 ("condor_status", "-total")),
    "lsf": (("bsub", "bjobs", "bkill", "lshosts"), ("lshosts",)),
}

_UNITS = {"": 1 / 2**20, "b": 1 / 2**20, "k": 1 / 1024, "kb": 1 / 1024, "m": 1, "mb": 1,
          "g": 1024, "gb": 1024, "t": 2**20, "tb": 2**20}


def memory_mb(text: str) -> int | None:
    """`16gb`, `23.4G`, `15.6G`, `8192M`, `4096` (MB) -> MiB; None when it is not a size."""
    match = re.fullmatch(r"([\d.]+)\s*([kmgt]?b?)", text.strip().lower())
    if not match:
        return None
    unit = match.group(2) or "m"
    return int(float(match.group(1)) * _UNITS[unit])


# ---------------------------------------------------------------- the largest node


def slurm_nodes(text: str) -> list[tuple[int, int]]:
    """`sinfo --noheader -o "%c %m"`: CPUs and memory (MB) per node group."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].rstrip("+").isdigit():
            nodes.append((int(fields[0]), int(fields[1].rstrip("+"))))
    return nodes


def sge_nodes(text: str) -> list[tuple[int, int]]:
    """`qhost`: HOSTNAME ARCH NCPU NSOC NCOR NTHR LOAD MEMTOT MEMUSE ...; `global` has `-`."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[2].isdigit() and (mem := memory_mb(fields[7])):
            nodes.append((int(fields[2]), mem))
    return nodes


def pbs_nodes(text: str) -> list[tuple[int, int]]:
    """`pbsnodes -a`: blocks of `resources_available.ncpus = 8`, `resources_available.mem =
    16gb` (Torque: `np = 8`, `physmem=16gb` inside `status =`)."""
    nodes, cores, mem = [], None, None
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if not stripped:  # a blank line ends a node's block
            if cores and mem:
                nodes.append((cores, mem))
            cores, mem = None, None
            continue
        key, _, value = (part.strip() for part in stripped.partition("="))
        if key in ("resources_available.ncpus", "np", "pcpus") and value.isdigit():
            cores = int(value)
        elif key == "resources_available.mem":
            mem = memory_mb(value)
        elif key == "status" and (found := re.search(r"physmem=(\w+)", value)):
            mem = memory_mb(found.group(1))
    return nodes


def condor_nodes(text: str) -> list[tuple[int, int]]:
    """`condor_status -af Cpus Memory`: per slot (a partitionable slot holds the machine)."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            nodes.append((int(fields[0]), int(fields[1])))
    return nodes


def lsf_nodes(text: str) -> list[tuple[int, int]]:
    """`lshosts -w`: HOST_NAME type model cpuf ncpus maxmem maxswp server RESOURCES."""
    nodes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6 and fields[4].isdigit() and (mem := memory_mb(fields[5])):
            nodes.append((int(fields[4]), mem))
    return nodes


#: The command saying what each system's nodes offer, and its parser.
NODE_QUERIES: dict[str, tuple[tuple[str, ...], Callable[[str], list[tuple[int, int]]]]] = {
    "slurm": (("sinfo", "--noheader", "-o", "%c %m"), slurm_nodes),
    "sge": (("qhost",), sge_nodes),
    "pbs": (("pbsnodes", "-a"), pbs_nodes),
    "htcondor": (("condor_status", "-af", "Cpus", "Memory"), condor_nodes),
    "lsf": (("lshosts", "-w"), lsf_nodes),
}


def largest_node(engine: str) -> tuple[int, int] | None:
    """(cores, memory MB) of the largest node the batch system reports, or None."""
    if engine not in NODE_QUERIES:
        return None
    argv, parse = NODE_QUERIES[engine]
    if shutil.which(argv[0]) is None:
        return None
    try:
        nodes = parse(run(list(argv), timeout=20, what=f"asking {engine} for its nodes").stdout)
    except CommandError:
        return None
    return (max(c for c, _ in nodes), max(m for _, m in nodes)) if nodes else None


# ---------------------------------------------------------------- a queue's limits


@dataclass(frozen=True)
class QueueLimits:
    """What the system says about the queue the jobs go to; None: no limit said."""

    name: str
    exists: bool = True
    state: str | None = None  # SLURM: UP, DOWN, DRAIN, INACTIVE
    max_seconds: int | None = None  # the longest walltime a job may ask
    max_nodes: int | None = None  # per job


def slurm_duration(text: str) -> int | None:
    """SLURM's time format ([days-]hours:minutes:seconds, or minutes) -> seconds;
    None for UNLIMITED / INFINITE / NONE."""
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        seconds = parts[0] * 60
    else:
        parts = [0] * (3 - len(parts)) + parts
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return seconds + int(days or 0) * 86400


def slurm_partition(text: str, name: str) -> QueueLimits:
    """`scontrol show partition NAME` (`-o`: one line of KEY=VALUE)."""
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    if not fields.get("PartitionName"):
        return QueueLimits(name, exists=False)
    nodes = fields.get("MaxNodes", "UNLIMITED")
    return QueueLimits(fields["PartitionName"], state=fields.get("State"),
                       max_seconds=slurm_duration(fields.get("MaxTime", "UNLIMITED")),
                       max_nodes=int(nodes) if nodes.isdigit() else None)


def slurm_default_partition(text: str) -> str | None:
    """`sinfo -h -o "%P"`: the default partition carries a `*`."""
    for line in text.split():
        if line.endswith("*"):
            return line.rstrip("*")
    return None


def queue_limits(engine: str, queue: str | None) -> QueueLimits | None:
    """The limits of `queue` (None: the system's default queue), where the system says."""
    if engine != "slurm" or shutil.which("scontrol") is None:
        return None
    try:
        if queue is None:
            queue = slurm_default_partition(run(["sinfo", "-h", "-o", "%P"], timeout=20,
                                                what="asking SLURM for its partitions").stdout)
            if queue is None:
                return None
        done = run(["scontrol", "-o", "show", "partition", queue], timeout=20, check=False,
                   what=f"asking SLURM about partition {queue}")
    except CommandError:
        return None
    if done.returncode != 0 and "not found" in (done.stdout + done.stderr):
        return QueueLimits(queue, exists=False)
    return slurm_partition(done.stdout, queue)
