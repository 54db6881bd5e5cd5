"""The verify stage: the re-executed notebook against the audited one, and why a cell failed.

Pure functions over two executed notebooks, the audit record and the backpack's files; the run
that produced the re-executed notebook lives in `auditor.reproduce`. Cells are compared on
their status and on what a reader sees as text: stream output (consecutive chunks joined, the
split between messages is not deterministic), `text/plain` results, the error's name and
value. Before comparing, both notebooks are normalised (`Normaliser`) so that what differs
between any two runs (addresses, temp and run folders, environment prefixes, times, PIDs,
ports) does not count (DESIGN.md rule 10).
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .backpack.session import Session

#: Verdicts, in summary.json's `verify.verdict` and printed.
REPRODUCED = "reproduced"
WITH_DIFFERENCES = "reproduced with differences"
NOT_REPRODUCED = "not reproduced"

#: Per-cell outcomes.
SAME, DIFFERS, FAILED = "same", "differs", "failed"

#: At most this many lines of a cell's diff are kept (summary.json and the printout).
DIFF_LINES = 12

_NOT_RUN, _OK = "not run", "ok"

#: What differs between any two runs of the same code, in the order they are replaced. Paths
#: first (literal folders are replaced before these, see `Normaliser.for_runs`).
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b0x[0-9a-fA-F]{4,}\b"), "0x<addr>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uuid>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
                r"(?:Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    (re.compile(r"\b1[5-9]\d{8}(?:\.\d+)?\b"), "<epoch>"),  # Unix times, 2017 to 2033
    (re.compile(r"\b\d+(?:\.\d+)?(?:e[-+]?\d+)?\s?(?:ns|µs|μs|us|ms|s|sec|secs|seconds|min|"
                r"minutes|h)\b"), "<duration>"),
    (re.compile(r"(?i)\b(pid)[ =:]*\d+"), r"\1 <pid>"),
    (re.compile(r"\b((?:tcp|tls|ws|wss|http|https|inproc|ucx)://[^\s:/'\"]+):\d+"), r"\1:<port>"),
    (re.compile(r"\b(127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):\d+\b"), r"\1:<port>"),
)


@dataclass(frozen=True)
class Normaliser:
    """Rewrites one output text so that run-specific values read the same in both runs."""

    #: (literal, token), longest literal first: run folders, notebook folders, env prefixes.
    literals: tuple[tuple[str, str], ...] = ()
    temp_dirs: tuple[str, ...] = ()

    @classmethod
    def for_runs(cls, *, notebook_dirs: Iterable[str | os.PathLike[str]] = (),
                 env_prefixes: Iterable[str | os.PathLike[str]] = (),
                 temp_dirs: Iterable[str | os.PathLike[str]] = ()) -> Normaliser:
        """Both notebooks' folders become `<notebook>`, both runs' environments `<env>`, and
        anything under a temp folder `<tmp>` (the audited folder may itself be in /tmp)."""
        pairs: dict[str, str] = {}
        for token, paths in (("<notebook>", notebook_dirs), ("<env>", env_prefixes)):
            for path in paths:
                for form in {os.path.normpath(str(path)), os.path.realpath(str(path))}:
                    if form not in ("/", "."):
                        pairs.setdefault(form, token)
        temps = {os.path.normpath(str(t)) for t in (*temp_dirs, tempfile.gettempdir(), "/tmp")}
        return cls(tuple(sorted(pairs.items(), key=lambda p: -len(p[0]))),
                   tuple(sorted(temps, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for literal, token in self.literals:
            text = text.replace(literal, token)
        for temp in self.temp_dirs:
            text = re.sub(re.escape(temp) + r"/[^\s'\"\]\),;:]*", "<tmp>", text)
        for pattern, token in _PATTERNS:
            text = pattern.sub(token, text)
        return text


@dataclass
class CellResult:
    """One code cell of the notebook in both runs."""

    index: int  # the notebook's cell index
    audited: str  # "ok", "not run", or "error ENAME"
    rerun: str
    outcome: str  # SAME, DIFFERS, FAILED
    diff: list[str] = field(default_factory=list)
    error: tuple[str, str] | None = None  # the re-run's (ename, evalue)

    def to_json(self) -> dict:
        out: dict = {"cell": self.index, "outcome": self.outcome, "audited": self.audited,
                     "rerun": self.rerun}
        if self.diff:
            out["diff"] = self.diff
        if self.error:
            out["error"] = {"ename": self.error[0], "evalue": self.error[1]}
        return out


def code_cells(notebook: dict) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(notebook.get("cells") or [])
            if c.get("cell_type") == "code"]


def _joined(value: object) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def cell_status(cell: dict) -> str:
    outputs = cell.get("outputs") or []
    for output in outputs:
        if output.get("output_type") == "error":
            return f"error {output.get('ename', '')}".strip()
    if cell.get("execution_count") is None and not outputs:
        return _NOT_RUN if _joined(cell.get("source")).strip() else _OK
    return _OK


def cell_error(cell: dict) -> tuple[str, str] | None:
    for output in cell.get("outputs") or []:
        if output.get("output_type") == "error":
            return str(output.get("ename", "")), str(output.get("evalue", ""))
    return None


def cell_text(cell: dict) -> list[str]:
    """What the cell showed, as lines: streams joined per run of one stream, `text/plain`
    results, the error's name and value (its traceback holds paths and colours)."""
    blocks: list[tuple[str, str]] = []
    for output in cell.get("outputs") or []:
        kind = output.get("output_type")
        if kind == "stream":
            name = str(output.get("name", "stdout"))
            if blocks and blocks[-1][0] == name:
                blocks[-1] = (name, blocks[-1][1] + _joined(output.get("text")))
            else:
                blocks.append((name, _joined(output.get("text"))))
        elif kind in ("execute_result", "display_data"):
            plain = (output.get("data") or {}).get("text/plain")
            if plain is not None:
                blocks.append(("out", _joined(plain)))
        elif kind == "error":
            blocks.append(("error", f"{output.get('ename', '')}: {output.get('evalue', '')}"))
    return [f"[{name}] {line}" for name, text in blocks for line in text.splitlines()]


def compare_notebooks(audited: dict, rerun: dict | None, normalise: Normaliser
                      ) -> list[CellResult]:
    """Cell by cell (code cells in order; the re-run executes the same workflow)."""
    theirs = code_cells(rerun) if rerun is not None else []
    results = []
    for position, (index, cell) in enumerate(code_cells(audited)):
        other = theirs[position][1] if position < len(theirs) else {}
        before, after = cell_status(cell), cell_status(other) if other else _NOT_RUN
        if before != after:
            results.append(CellResult(index, before, after, FAILED, error=cell_error(other)))
            continue
        mine = [normalise(line) for line in cell_text(cell)]
        yours = [normalise(line) for line in cell_text(other)]
        if mine == yours:
            results.append(CellResult(index, before, after, SAME))
            continue
        diff = [line for line in difflib.unified_diff(mine, yours, "audited", "re-run", n=0,
                                                      lineterm="")
                if not line.startswith(("---", "+++", "@@"))]
        results.append(CellResult(index, before, after, DIFFERS, diff[:DIFF_LINES]))
    return results


def verdict(cells: list[CellResult], ran: bool = True) -> str:
    if not ran or any(c.outcome == FAILED for c in cells):
        return NOT_REPRODUCED
    return WITH_DIFFERENCES if any(c.outcome == DIFFERS for c in cells) else REPRODUCED


# ----------------------------------------------------------------- explaining a failure

_NO_MODULE = re.compile(r"No module named '([^']+)'")
_NO_FILE = re.compile(r"No such file or directory: '([^']+)'")
_NO_FILE_ERRORS = ("FileNotFoundError", "OSError", "IOError")


def explain(cell: CellResult, *, session: Session, backpack: Path) -> str:
    """The first failing cell, in terms of the backpack: which distribution or data entry is
    missing, and why the audit may not have seen it."""
    where = f"cell {cell.index}"
    if cell.audited.startswith("error") and cell.rerun == _OK:
        return (f"{where} ran in the re-run but failed in the audited run ({cell.audited}): "
                "the audit's outputs came from a failing run; fix the notebook and audit again")
    if cell.error is None:
        return f"{where}: audited {cell.audited}, re-run {cell.rerun}"
    ename, evalue = cell.error
    said = f"{where} raised {ename}: {evalue}"
    if ename == "ModuleNotFoundError" and (found := _NO_MODULE.search(evalue)):
        return f"{said}; {explain_module(found.group(1), session=session, backpack=backpack)}"
    if ename in _NO_FILE_ERRORS and (found := _NO_FILE.search(evalue)):
        return f"{said}; {explain_file(found.group(1), session=session, backpack=backpack)}"
    return f"{said} in the re-run; the audited run ran it as {cell.audited}"


def explain_module(module: str, *, session: Session, backpack: Path) -> str:
    """Who provides `module` in the audited environment (built from the session's kernel
    record, as derive builds it), and whether the backpack pins it."""
    from packaging.utils import canonicalize_name

    from .common.errors import FloError
    from .emit.environment import OWN_DISTRIBUTIONS
    from .resolve import Environment, index_environment
    from .resolve.modules import NOT_FOUND, ModuleOwners

    kernel = session.kernel
    try:
        index = index_environment(Environment.from_kernel_record(kernel),
                                  exclude_names=OWN_DISTRIBUTIONS)
    except FloError as exc:
        return f"the audited environment cannot be read here ({exc})"
    notebook_dir = session.folder
    owner = ModuleOwners(index, kernel.get("path") or (), notebook_dir).owner(module)
    prefix = kernel.get("prefix", "?")
    if owner == NOT_FOUND:
        return (f"no distribution of the audited environment ({prefix}) provides {module!r}: "
                "it was installed after the audit, or lives outside the environment "
                "(PYTHONPATH, a folder beside the notebook); install it there and audit again")
    if owner is None:
        return (f"{module!r} is the notebook's own module or the standard library in the "
                "audited environment; check that workflow/ holds it")
    dist = index.get(owner)
    pin = f"{owner}=={dist.version}" if dist is not None else owner
    pinned = [role for role, spec in _specs(backpack).items()
              if canonicalize_name(owner) in spec.pins]
    if pinned:
        return (f"{module!r} is provided by {pin} in the audited environment and pinned for "
                f"the {', '.join(pinned)}; the failing side's environment lacks it")
    return (f"{module!r} is provided by {pin} in the audited environment, but the audit never "
            f"saw it imported (no file of {owner} was opened while the notebook ran), so the "
            "backpack does not pin it: the import was on a path the audited run did not take "
            "(a condition on a file, a variable or the data) or names a module built at run "
            f"time; add {pin} to software/environment.yml, or audit again with that path taken")


def explain_file(name: str, *, session: Session, backpack: Path) -> str:
    """The data.yml entry that should have put `name` in place, or that the audit never saw
    the file read."""
    notebook_dir = Path(session.folder)
    wanted = _relative(name, notebook_dir)
    for entry in _data_entries(backpack):
        if os.path.normpath(entry.target_location) == wanted:
            return (f"data.yml entry {entry.name!r} ({entry.source_type} {entry.source}) should "
                    f"put it at {entry.target_location}: check that source")
    return (f"the audit never saw {wanted} read (no data/data.yml entry holds it): the audited "
            "run did not open it, or it was made by a step outside the notebook; add an entry "
            "for it to data/data.yml, or audit again in a folder where the notebook reads it")


def _relative(name: str, notebook_dir: Path) -> str:
    if not os.path.isabs(name):
        return os.path.normpath(name)
    return os.path.normpath(os.path.relpath(name, notebook_dir))


def _specs(backpack: Path) -> dict:
    from .backpack.layout import load_backpack
    from .common.errors import FloError

    try:
        return load_backpack(backpack).specs
    except FloError:
        return {}


def _data_entries(backpack: Path) -> list:
    from .backpack.layout import load_backpack
    from .common.errors import FloError

    try:
        spec = load_backpack(backpack).data_spec
    except FloError:
        return []
    if spec is None:
        return []
    return [entry for profile in spec.profiles.values() for entry in profile.entries]


# ----------------------------------------------------------------- the printed verdict

def verdict_lines(result: dict) -> list[str]:
    """summary.json's `verify` block as lines for people."""
    cache = (f"environments in {result.get('env_cache')}" if result.get("env_cache_kept")
             else "environments built in a throw-away cache, removed")
    lines = [f"verify: {result['verdict']} ({len(result.get('cells') or [])} code cells, "
             f"{result.get('seconds', 0):.1f} s; {cache})"]
    cells = result.get("cells") or ()
    if result.get("rerun_status") == "not started":
        cells = ()  # flo-run stopped before the kernel: every cell "not run" says nothing
        lines.append("  no cell ran")
    for cell in cells:
        if cell["outcome"] == DIFFERS:
            lines.append(f"  cell {cell['cell']} differs:")
            lines += [f"    {line}" for line in cell.get("diff") or ()]
        elif cell["outcome"] == FAILED:
            lines.append(f"  cell {cell['cell']}: audited {cell['audited']}, "
                         f"re-run {cell['rerun']}")
    if result.get("explanation"):
        lines.append(f"  {result['explanation']}")
    return lines
