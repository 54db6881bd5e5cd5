"""Optional imports: the pins `--minimize` may try to drop, and the evidence for each.

Rule 4 pins every distribution a file of which the run used, which includes packages another
distribution imports only because they are installed (`try: import pandas except
ImportError`). A pinned distribution is a *candidate* when all of these hold (docs/internals.md):

1. no cell names it: no `import` record with `static` for a module it owns, and no import
   statement of a cell's source resolves to it;
2. its first module was imported by another distribution: the `importer` record's innermost
   frame (or, when that frame is the standard library or the import machinery's caller, the
   next one) is a file that distribution owns; a frame in a cell or in the workflow's own
   modules makes it the workflow's import, never a candidate;
3. that import is guarded, read with `ast` at the recorded line of either frame: inside a
   `try` whose handler catches ImportError (ModuleNotFoundError, Exception, a bare except),
   a `with contextlib.suppress(ImportError)`, or an `if` whose test calls `find_spec` /
   `find_loader`; *or* none of its functions ran (Python >= 3.12 `calls` records: no file it
   owns started a function other than a module body).

Candidates are only a proposal: `auditor.minimize` drops one only when a re-run proves it.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from .common.kept import Kept, cache_folder
from .record.hooks import read_hook_log

#: Exception names whose handler swallows a failed import.
_CATCHES_IMPORT = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_PROBES = ("find_spec", "find_loader")
#: The format of the kept guards (`KeptGuards`); another one is read as empty.
_GUARDS_STATE = "guards 1"
_KEPT_FILES = 5000  # more files than this kept: start afresh


@dataclass(frozen=True)
class Candidate:
    """One pin the notebook may not need, and why the audit thinks so."""

    name: str  # the distribution
    module: str  # its first module the run imported
    importer: str  # the distribution whose code imported it
    at: str  # "path:line" of the import
    guard: str | None  # how the import is guarded, or None
    ran: bool | None  # whether a function of it ran (None: no `calls` records, Python < 3.12)

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    @property
    def why(self) -> str:
        parts = [f"imported by {self.importer} ({self.module})"]
        if self.guard:
            parts.append(f"which {self.guard}")
        if self.ran is False:
            parts.append("none of its functions ran")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "importer": self.importer,
                "at": self.at, "guard": self.guard, "ran": self.ran, "why": self.why}


@dataclass
class _Evidence:
    import_paths: dict[str, str]  # module -> its file (import records)
    static: set[str]  # modules a cell named
    importers: list[dict[str, Any]]  # importer records, in file order
    called: set[str] | None  # files whose functions started; None without calls records


def _evidence(record_dir: Path, kernel_pid: int | None) -> _Evidence:
    paths: dict[str, str] = {}
    static: set[str] = set()
    importers: list[dict[str, Any]] = []
    called: set[str] | None = None
    for entry in read_hook_log(record_dir, ("import", "importer", "calls")):
        if kernel_pid is not None and entry.get("pid") != kernel_pid:
            continue  # a forked child: its own imports come after the kernel's
        kind = entry.get("ev")
        if kind == "import":
            module, path = str(entry.get("module") or ""), entry.get("path")
            if path:
                paths.setdefault(module, str(path))
            if entry.get("static"):
                static.add(module)
        elif kind == "importer":
            importers.append(entry)
        elif kind == "calls":
            called = (called or set()) | {str(f) for f in entry.get("files") or ()}
    return _Evidence(paths, static, importers, called)


def find_candidates(record_dir: Path, *, pins: Iterable[Any], index: Any,
                    module_owner: Any, notebook_dir: str, kernel_pid: int | None,
                    python: str, cell_sources: Mapping[int, str],
                    kept_guards: Path | None = None) -> list[Candidate]:
    """The pins (`emit.environment.Pin`, reason "used") that the run imported only through
    another distribution's optional import; see the module docstring for the rule.
    `kept_guards`: where the guards read from library sources are kept between audits
    (default: guards.json in flo-backpack's cache folder)."""
    guards = KeptGuards(kept_guards or cache_folder() / "guards.json")
    try:
        return _candidates(record_dir, pins, index, module_owner, notebook_dir, kernel_pid,
                           python, cell_sources, guards)
    finally:
        guards.save()


def _candidates(record_dir: Path, pins: Iterable[Any], index: Any, module_owner: Any,
                notebook_dir: str, kernel_pid: int | None, python: str,
                cell_sources: Mapping[int, str], guards: KeptGuards) -> list[Candidate]:
    from .emit.environment import USED, top_level_imports

    evidence = _evidence(record_dir, kernel_pid)
    monitored = _version(python) >= (3, 12)
    called = evidence.called if monitored else None
    if monitored and called is None:
        called = set()
    folder = os.path.normpath(notebook_dir) + os.sep

    def owner_of_file(path: str) -> str | None:
        found = index.owner(path)
        if found is None or found.dist is None or found.excluded:
            return None
        return canonicalize_name(found.dist.name)

    def owner_of_module(module: str) -> str | None:
        path = evidence.import_paths.get(module)
        if path:
            return owner_of_file(path)
        found = module_owner(module)
        return canonicalize_name(found) if found and found != "not installed" else None

    named = {owner_of_module(m) for m in evidence.static}
    for source in cell_sources.values():
        named |= {owner_of_module(m) for m in top_level_imports(source)}
    ran_in = {owner_of_file(f) for f in called} if called is not None else set()

    first_import: dict[str, dict[str, Any]] = {}
    for entry in evidence.importers:
        key = owner_of_module(str(entry.get("module") or ""))
        if key:
            first_import.setdefault(key, entry)

    found: list[Candidate] = []
    for pin in pins:
        if pin.reason != USED or pin.key in named or pin.key not in first_import:
            continue
        entry = first_import[pin.key]
        importer, at, guard = _importer(entry, pin.key, folder, owner_of_file, guards.at)
        if importer is None:
            continue
        ran = (pin.key in ran_in) if called is not None else None
        if guard or ran is False:
            name = index.get(importer)
            found.append(Candidate(pin.name, str(entry.get("module")),
                                   name.name if name is not None else importer, at, guard, ran))
    return found


def _importer(entry: Mapping[str, Any], key: str, folder: str,
              owner_of_file: Callable[[str], str | None],
              guarded: Callable[[str, int], str | None]) -> tuple[str | None, str, str | None]:
    """Walk the stack of the first import of distribution `key` (innermost first): the
    distribution whose code imported it, where ("file:line"), and the guard around the import
    (`guard_at`); (None, "", ...) when the workflow itself, or `key`'s own code, imported it."""
    frames = [f for f in entry.get("frames") or () if isinstance(f, list) and len(f) >= 2]
    importer, at, guard = None, "", None
    for filename, line, *_ in frames:
        filename, line = str(filename), int(line)
        if filename.startswith(folder) or not os.path.isabs(filename) \
                or _is_cell(filename):
            break  # the workflow's own import (or call): never guarded by a library
        owner = owner_of_file(filename)
        if owner == key:
            break  # imported by its own code (an entry point it loaded): unknown
        guard = guard or guarded(filename, line)  # an `_optional(name)` helper's caller
        if importer is None and owner is not None:
            importer, at = owner, f"{filename}:{line}"
    return importer, at, guard


def _is_cell(filename: str) -> bool:
    """ipykernel compiles each cell to a file named after its hash in a temp folder."""
    return "/ipykernel_" in filename or filename.startswith("<ipython-input")


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(".")[:2])
    except ValueError:
        return (0,)


# ----------------------------------------------------------------- the guard, by ast

class KeptGuards(Kept):
    """`guard_at`'s answers kept between audits, per file while its size and mtime are those
    it was read with: a library's source is parsed once per machine, not once per audit."""

    def __init__(self, file: Path | None) -> None:
        super().__init__(file, _GUARDS_STATE)
        if len(self.data) > _KEPT_FILES:
            self.data.clear()

    def at(self, path: str, line: int) -> str | None:
        found = _stamp(path)
        if found is None:
            return guard_at(path, line)
        stamp = list(found)
        kept = self.data.get(path)
        if not isinstance(kept, dict) or kept.get("stamp") != stamp \
                or not isinstance(kept.get("lines"), dict):
            kept = self.data[path] = {"stamp": stamp, "lines": {}}
        lines = kept["lines"]
        if str(line) not in lines:
            lines[str(line)] = _guard(path, line, found)
            self.changed = True
        return lines[str(line)]


def guard_at(path: str, line: int) -> str | None:
    """How the statement at `line` of the module at `path` is guarded against a failed
    import, as a phrase ("guards it with try/except ImportError (line 148)"), or None."""
    return _guard(path, line, _stamp(path))


def _guard(path: str, line: int, stamp: tuple[int, int] | None) -> str | None:
    tree = _parse(path, stamp)
    if tree is None:
        return None
    for node in _enclosing(tree, line):
        if isinstance(node, ast.Try) and _in_body(node.body, line) and any(
                _catches_import(handler.type) for handler in node.handlers):
            return f"guards it with try/except ImportError (line {node.lineno})"
        if isinstance(node, ast.With) and _in_body(node.body, line) and any(
                _is_suppress(item.context_expr) for item in node.items):
            return f"guards it with contextlib.suppress(ImportError) (line {node.lineno})"
        if isinstance(node, ast.If) and _probes(node.test) and (
                _in_body(node.body, line) or _in_body(node.orelse, line)):
            return f"imports it only after a find_spec check (line {node.lineno})"
    return None


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


@lru_cache(maxsize=256)
def _parse(path: str, _stamp: tuple[int, int] | None) -> ast.Module | None:
    """The module at `path`, parsed once per version of it (`_stamp`: its size and mtime)."""
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return None


def _enclosing(tree: ast.AST, line: int) -> list[ast.AST]:
    """The nodes whose lines hold `line`, innermost first."""
    chain: list[ast.AST] = []
    node: ast.AST | None = tree
    while node is not None:
        inner = None
        for child in ast.iter_child_nodes(node):
            start = getattr(child, "lineno", None)
            if start is not None and start <= line <= (getattr(child, "end_lineno", None)
                                                       or start):
                inner = child
                break
        if inner is not None:
            chain.append(inner)
        node = inner
    return chain[::-1]


def _in_body(body: list[ast.stmt], line: int) -> bool:
    return any(s.lineno <= line <= (s.end_lineno or s.lineno) for s in body)


def _name(node: ast.AST | None) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _catches_import(kind: ast.expr | None) -> bool:
    if kind is None:
        return True
    if isinstance(kind, ast.Tuple):
        return any(_catches_import(element) for element in kind.elts)
    return _name(kind) in _CATCHES_IMPORT


def _is_suppress(expr: ast.expr) -> bool:
    return (isinstance(expr, ast.Call) and _name(expr.func) == "suppress"
            and any(_catches_import(arg) for arg in expr.args))


def _probes(test: ast.expr) -> bool:
    return any(isinstance(n, ast.Call) and _name(n.func) in _PROBES for n in ast.walk(test))
