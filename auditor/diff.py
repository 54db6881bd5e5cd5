"""flo-audit diff: what changed between two audits, or between a backpack and an interpreter.

Each of the two is a backpack folder, an audit folder, or a single environment.yml / data.yml,
read into `Compared` models (environments per role, data entries, per-cell use) and compared
into a flat list of `Change` rows; rendering (table, markdown, JSON) is separate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .backpack.data import DataItem, parse_data
from .backpack.environment import EnvSpec, Pin, load_yaml, parse_environment, parse_requirements
from .backpack.summary import CellUse, load_summary
from .common.errors import UsageError

ROLES = ("manager", "worker")
ENV_FILES = {"manager": "environment.yml", "worker": "worker-environment.yml"}


@dataclass
class Compared:
    label: str
    envs: dict[str, EnvSpec] = field(default_factory=dict)
    data: dict[tuple[str, str], DataItem] | None = None
    cells: list[CellUse] | None = None  # summary.json's per-cell use


@dataclass(frozen=True)
class Change:
    section: str  # "python" | "package" | "data" | "cell"
    role: str  # "manager" | "worker" | "" for data
    name: str
    change: str  # added, removed, upgraded, downgraded, moved, changed
    before: str = ""
    after: str = ""


@dataclass
class DiffResult:
    a: str
    b: str
    changes: list[Change]

    @property
    def same(self) -> bool:
        return not self.changes

    @property
    def exit_code(self) -> int:
        return 0 if self.same else 1

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "same": self.same,
                "changes": [asdict(c) for c in self.changes]}


# ---------------------------------------------------------------- reading what is compared

def load_compared(path: str | Path) -> Compared:
    """Read one of the two things a diff compares: a backpack, an audit folder, or one spec file."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"no such file or folder: {p}")
    compared = Compared(str(p))
    if p.is_file():
        if p.suffix == ".txt":
            compared.envs["manager"] = parse_requirements(p)
        elif p.name.startswith("data") or _looks_like_data(p):
            compared.data = parse_data(p)
        elif p.name == ENV_FILES["worker"]:
            compared.envs["worker"] = parse_environment(p)
        else:
            compared.envs["manager"] = parse_environment(p)
        return compared
    root = p.parent if (p / "summary.json").exists() and not (p / "software").exists() else p
    software = root / "software"
    if not software.is_dir() and not (p / "summary.json").exists():
        raise UsageError(f"{p}: not a backpack (no software/) nor an audit folder "
                         "(no summary.json)")
    if (software / ENV_FILES["manager"]).exists():
        compared.envs["manager"] = parse_environment(software / ENV_FILES["manager"])
        worker = software / ENV_FILES["worker"]
        if worker.exists():  # absent = the same as the manager's (DESIGN.md layout)
            compared.envs["worker"] = parse_environment(worker)
    data = root / "data" / "data.yml"
    if data.exists():
        compared.data = parse_data(data)
    summary = root / "audit" / "summary.json" if (root / "audit").is_dir() else p / "summary.json"
    if summary.exists():
        compared.cells = load_summary(summary).cells
    return compared


def _looks_like_data(path: Path) -> bool:
    doc = load_yaml(path)
    return isinstance(doc, dict) and ("profiles" in doc or "data" in doc) \
        and "dependencies" not in doc


# ---------------------------------------------------------------- comparing

def _version(text: str | None) -> Version | None:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


def _is_patch_change(a: Version, b: Version) -> bool:
    return a.release[:2] == b.release[:2]


def compare_envs(role: str, a: EnvSpec, b: EnvSpec, ignore_patch: bool) -> list[Change]:
    changes: list[Change] = []
    if a.python != b.python and a.python and b.python:
        va, vb = _version(a.python), _version(b.python)
        if not (ignore_patch and va and vb and _is_patch_change(va, vb)):
            changes.append(Change("python", role, "python", "changed", a.python, b.python))
    for key in sorted(a.pins.keys() | b.pins.keys()):
        pa, pb = a.pins.get(key), b.pins.get(key)
        if pa is None and pb is not None:
            changes.append(Change("package", role, pb.name, "added", "", _show(pb)))
        elif pb is None and pa is not None:
            changes.append(Change("package", role, pa.name, "removed", _show(pa), ""))
        elif pa is not None and pb is not None:
            changes.extend(_compare_pin(role, pa, pb, ignore_patch))
    return changes


def _compare_pin(role: str, pa: Pin, pb: Pin, ignore_patch: bool) -> list[Change]:
    out = []
    if pa.source != pb.source or (pa.channel or "") != (pb.channel or ""):
        out.append(Change("package", role, pb.name, "moved", _where(pa), _where(pb)))
    if pa.version != pb.version:
        va, vb = _version(pa.version), _version(pb.version)
        if va is not None and vb is not None:
            if va == vb:
                return out
            if ignore_patch and _is_patch_change(va, vb):
                return out
            kind = "upgraded" if vb > va else "downgraded"
        else:
            kind = "changed"
        out.append(Change("package", role, pb.name, kind, pa.version or "", pb.version or ""))
    return out


def _show(pin: Pin) -> str:
    return f"{pin.version or '(unpinned)'} ({_where(pin)})"


def _where(pin: Pin) -> str:
    return f"conda:{pin.channel}" if pin.source == "conda" and pin.channel else pin.source


def compare_data(a: dict[tuple[str, str], DataItem],
                 b: dict[tuple[str, str], DataItem]) -> list[Change]:
    changes = []
    for key in sorted(a.keys() | b.keys()):
        da, db = a.get(key), b.get(key)
        label = f"{key[0]} -> {key[1]}"
        if da is None:
            changes.append(Change("data", "", label, "added", "", _data_desc(db)))
        elif db is None:
            changes.append(Change("data", "", label, "removed", _data_desc(da), ""))
        elif (da.checksum, da.size) != (db.checksum, db.size):
            changes.append(Change("data", "", label, "changed", _data_desc(da), _data_desc(db)))
    return changes


def _data_desc(item: DataItem | None) -> str:
    if item is None:
        return ""
    parts = [f"{item.size} B" if item.size is not None else "", item.checksum or ""]
    return " ".join(p for p in parts if p)


def compare_cells(a: list[CellUse], b: list[CellUse]) -> list[Change]:
    """Per cell (matched by position and source): packages and files that came or went."""
    changes = []
    for ca, cb in zip(a, b, strict=False):  # cells added at the end are not compared
        if ca.source != cb.source:
            continue  # the cell itself changed: not the same cell to compare
        label = f"cell {cb.index}"
        for what, was, now in (("package", ca.packages, cb.packages),
                               ("file", ca.files, cb.files)):
            before, after = set(was), set(now)
            for item in sorted(after - before):
                changes.append(Change("cell", "manager", label, f"{what} appeared", "", item))
            for item in sorted(before - after):
                changes.append(Change("cell", "manager", label, f"{what} disappeared",
                                      item, ""))
    return changes


def _role_env(compared: Compared, role: str) -> EnvSpec | None:
    """A role's environment; a missing worker environment is the manager's."""
    return compared.envs.get(role) or (compared.envs.get("manager") if role == "worker" else None)


def diff(a: str | Path, b: str | Path, ignore_patch: bool = False) -> DiffResult:
    """Compare two backpacks or audits; the result lists every change, per role."""
    sa, sb = load_compared(a), load_compared(b)
    if not (sa.envs or sa.data is not None) or not (sb.envs or sb.data is not None):
        raise UsageError(f"nothing to compare: {sa.label if not sa.envs else sb.label} "
                         "has no environment or data spec")
    changes: list[Change] = []
    for role in ROLES:
        ea, eb = _role_env(sa, role), _role_env(sb, role)
        if role == "worker" and "worker" not in sa.envs and "worker" not in sb.envs:
            continue  # neither run had workers: the manager rows say it all
        if ea is not None and eb is not None:
            changes.extend(compare_envs(role, ea, eb, ignore_patch))
    if sa.data is not None or sb.data is not None:
        changes.extend(compare_data(sa.data or {}, sb.data or {}))
    if sa.cells is not None and sb.cells is not None:
        changes.extend(compare_cells(sa.cells, sb.cells))
    return DiffResult(sa.label, sb.label, changes)


def diff_here(backpack: str | Path, python: str | None = None) -> DiffResult:
    """Will this backpack run here? Compare its environments with an installed interpreter."""
    import sys

    from .resolve import Environment, index_environment

    compared = load_compared(backpack)
    if not compared.envs:
        raise UsageError(f"{backpack}: has no environment spec to compare")
    interpreter = python or sys.executable
    env = Environment.of_interpreter(interpreter)
    index = index_environment(env)
    here = EnvSpec(env.version, {d.key: Pin(d.name, d.version, d.kind, d.channel)
                                 for d in index.distributions()})
    changes: list[Change] = []
    for role in ROLES:
        spec = compared.envs.get(role)
        if spec is None:
            continue
        for change in compare_envs(role, spec, here, ignore_patch=False):
            if change.change == "added":
                continue  # installed here but not needed by the backpack: irrelevant
            if change.change == "removed":
                change = Change(change.section, role, change.name, "missing", change.before, "")
            if change.change == "moved":
                continue  # conda vs pip origin does not matter for running
            changes.append(change)
    return DiffResult(compared.label, f"{interpreter} (Python {env.version})", changes)


# ---------------------------------------------------------------- rendering

def render_markdown(result: DiffResult) -> str:
    if result.same:
        return f"No differences between `{result.a}` and `{result.b}`.\n"
    lines = [f"Differences between `{result.a}` (before) and `{result.b}` (after):", "",
             "| section | role | name | change | before | after |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in result.changes:
        cells = [c.section, c.role, c.name, c.change, c.before, c.after]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def render_table(result: DiffResult, console: object) -> None:
    """Print a rich table; colour only when the console is a terminal."""
    from rich.table import Table

    if result.same:
        console.print(f"same: {result.a} and {result.b} have no differences")  # type: ignore[attr-defined]
        return
    style = {"added": "green", "removed": "red", "missing": "red", "upgraded": "cyan",
             "downgraded": "yellow", "moved": "magenta", "changed": "yellow"}
    table = Table(title=f"{result.a} -> {result.b}")
    for col in ("section", "role", "name", "change", "before", "after"):
        table.add_column(col)
    for c in result.changes:
        table.add_row(c.section, c.role, c.name, c.change, c.before, c.after,
                      style=style.get(c.change.split()[-1], None))
    console.print(table)  # type: ignore[attr-defined]


def summarise(changes: Iterable[Change]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.change] = counts.get(c.change, 0) + 1
    return counts
