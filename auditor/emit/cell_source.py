"""What a cell's source says, statically: the names it reads from earlier cells.

The source is IPython's: magics and `!` lines are first turned into Python the way the kernel
does (`transform_cell`), so `%time total = sum(rows)` reads `rows` and `!wc -l {path}` reads
`path`. A name is *free* in a cell when the cell reads it before binding it itself; names read
inside a function or class body count unless the cell binds them anywhere (the body runs
later). Builtins come out free too: they only make an edge if an earlier cell rebound them.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from IPython.core.inputtransformer2 import TransformerManager

#: Magics whose argument (line) or body (cell) IPython runs as Python in the user namespace.
CODE_MAGICS = frozenset({"time", "timeit", "prun", "capture", "debug"})
_SHELL_CALLS = frozenset({"system", "getoutput"})
_MAGIC_LINE = re.compile(r"^\s*(%%?|!)")
_SHELL_NAME = re.compile(r"\$(\w+)|\{([^{}]+)\}")


@lru_cache(maxsize=1)
def _transformer() -> TransformerManager | None:
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:
        return None
    return TransformerManager()


@lru_cache(maxsize=4096)  # the cells report reads every cell twice (modules, then names)
def python_source(source: str) -> str:
    """The cell as the kernel runs it: IPython's transform when IPython is here; else magic
    and `!` lines are dropped (their effects are still seen by the run)."""
    manager = _transformer()
    if manager is not None:
        try:
            return str(manager.transform_cell(source))
        except Exception:  # IPython's transformers raise many things on odd input
            pass
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        return ""
    return "\n".join("" if _MAGIC_LINE.match(line) else line for line in lines)


def parse_cell(source: str) -> ast.Module | None:
    """The cell's syntax tree after the IPython transform; None when it does not parse."""
    try:
        return ast.parse(python_source(source))
    except (SyntaxError, ValueError):
        return None


def free_names(source: str) -> list[str]:
    """The names `source` reads that it has not bound first, sorted."""
    tree = parse_cell(source)
    if tree is None:
        return []
    reader = _Reader()
    reader.visit(tree)
    return sorted(reader.free | (reader.deferred - reader.bound))


class _Reader(ast.NodeVisitor):
    """Walks module-level code in evaluation order: value before target, iterable before
    loop variable, so `x = x + 1` reads x and `for v in vs: print(v)` does not read v."""

    def __init__(self) -> None:
        self.free: set[str] = set()
        self.bound: set[str] = set()
        self.deferred: set[str] = set()  # read by function and class bodies
        self.local: list[set[str]] = []  # comprehension variables in scope

    def _read(self, name: str) -> None:
        if name not in self.bound and not any(name in scope for scope in self.local):
            self.free.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self._read(node.id)
        elif isinstance(node.ctx, ast.Store):
            if self.local:
                self.local[-1].add(node.id)
            else:
                self.bound.add(node.id)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._read(node.target.id)
        self.visit(node.value)
        self.visit(node.target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.visit(node.annotation)
        self.visit(node.target)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for child in (*node.body, *node.orelse):
            self.visit(child)

    visit_AsyncFor = visit_For

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bound.add(node.target.id)  # a walrus binds in the enclosing scope

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp,
                       parts: list[ast.expr]) -> None:
        generators = node.generators
        self.visit(generators[0].iter)  # evaluated in the enclosing scope
        self.local.append(set())
        for number, generator in enumerate(generators):
            if number:
                self.visit(generator.iter)
            self.visit(generator.target)
            for condition in generator.ifs:
                self.visit(condition)
        for part in parts:
            self.visit(part)
        self.local.pop()

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    def visit_SetComp(self, node: ast.SetComp) -> None:
        self._comprehension(node, [node.elt])

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._comprehension(node, [node.elt])

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.bound.add(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name:
            self.bound.add(node.name)
        for child in node.body:
            self.visit(child)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for outer in (*node.decorator_list, *node.args.defaults,
                      *(d for d in node.args.kw_defaults if d is not None)):
            self.visit(outer)
        self.deferred |= _body_free(node.args, node.body)
        self.bound.add(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for outer in node.args.defaults:
            self.visit(outer)
        self.deferred |= _body_free(node.args, [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for outer in (*node.decorator_list, *node.bases, *(k.value for k in node.keywords)):
            self.visit(outer)
        self.deferred |= _body_free(None, node.body)
        self.bound.add(node.name)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        method = getattr(node.func, "attr", None)
        texts = [a.value for a in node.args
                 if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if method in ("run_line_magic", "run_cell_magic") and texts and texts[0] in CODE_MAGICS:
            code = texts[-1] if method == "run_cell_magic" else " ".join(texts[1:])
            try:
                tree = ast.parse(python_source(code))
            except (SyntaxError, ValueError):
                return
            for statement in tree.body:
                self.visit(statement)
        elif method in _SHELL_CALLS and texts:
            for simple, expression in _SHELL_NAME.findall(texts[0]):
                if simple:
                    self._read(simple)
                else:
                    try:
                        self.visit(ast.parse(expression, mode="eval"))
                    except (SyntaxError, ValueError):
                        continue


def _body_free(args: ast.arguments | None, body: list[ast.stmt] | list[ast.expr]) -> set[str]:
    """Names a function, lambda or class body reads that it does not bind itself."""
    local: set[str] = set()
    if args is not None:
        every = (*args.posonlyargs, *args.args, *args.kwonlyargs,
                 *(a for a in (args.vararg, args.kwarg) if a is not None))
        local.update(a.arg for a in every)
    declared: set[str] = set()
    reads: set[str] = set()
    nested: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef] = []
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            nested.append(node)
            if not isinstance(node, ast.Lambda):
                local.add(node.name)
                todo.extend(node.decorator_list)
            continue
        if isinstance(node, ast.Name):
            (reads if isinstance(node.ctx, ast.Load) else local).add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            local.update(a.asname or a.name.split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, ast.ExceptHandler) and node.name:
            local.add(node.name)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            reads.add(node.target.id)
        todo.extend(ast.iter_child_nodes(node))
    for inner in nested:
        if isinstance(inner, ast.ClassDef):
            reads |= _body_free(None, inner.body)
            reads.update(_names_in([*inner.bases, *(k.value for k in inner.keywords)]))
        else:
            inner_args = inner.args
            body = [inner.body] if isinstance(inner, ast.Lambda) else inner.body
            reads |= _body_free(inner_args, body)
            reads.update(_names_in([*inner_args.defaults,
                                    *(d for d in inner_args.kw_defaults if d is not None)]))
    return (reads - (local - declared)) | (reads & declared)


def _names_in(nodes: list[ast.expr]) -> set[str]:
    return {n.id for node in nodes for n in ast.walk(node)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def named_modules(source: str) -> list[str]:
    """Absolute module names the cell names: import statements anywhere in it (function
    bodies too), `importlib.import_module("literal")` and `__import__("literal")`, and the
    same inside `%time`-like magics. Relative imports name local code: left out."""
    tree = parse_cell(source)
    if tree is None:
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Call):
            texts = [a.value for a in node.args
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            callee = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if callee in ("import_module", "__import__") and texts and node.args and \
                    isinstance(node.args[0], ast.Constant) and not texts[0].startswith("."):
                names.append(texts[0])
            elif callee in ("run_line_magic", "run_cell_magic") and texts \
                    and texts[0] in CODE_MAGICS:
                code = texts[-1] if callee == "run_cell_magic" else " ".join(texts[1:])
                names.extend(named_modules(code))
    return list(dict.fromkeys(names))
