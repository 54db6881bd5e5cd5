"""The per-cell report and the cell graph (issue 12): audit/cells.yml.

The kernel side's `names` record runs in plain interpreters with a stand-in shell (the
protocol edge); the report itself comes from real audits of fixtures/notebooks/cell_graph
(strace and hooks-only) and cell_fails, and from `flo-audit derive` on the saved record.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import STAND_IN_SHELL, AuditRun, Scenario, flo_audit_argv
from test_kernel_side import KERNEL_SIDE, _interpreters

from auditor.backpack.cells import load_cells_yml
from auditor.emit.cell_source import free_names

# argv: kernel side path, log path. Three cells around a namespace the script edits itself.
NAMES_SCRIPT = STAND_IN_SHELL + r'''
import runpy, sys
shell = Shell()
kept, other = object(), object()
shell.user_ns = {"In": [], "Out": {}, "get_ipython": print, "exit": None, "_": None,
                 "kept": kept, "gone": 1}
runpy.run_path(sys.argv[1], run_name="_flo_backpack_kernel")["attach"](
    shell, {"log": sys.argv[2], "marks": False})
pre, post = shell.events.handlers["pre_run_cell"][0], shell.events.handlers["post_run_cell"][0]
ns = shell.user_ns

pre(None)                       # cell 0: two new names, one hidden, IPython's In rebound
ns["a"], ns["df"], ns["_hidden"], ns["In"] = [1], [2], 3, [4]
post(None)
pre(None)                       # cell 1: a rebound, df kept, a name deleted, one added
ns["a"] = [5]
del ns["gone"]
ns["b"] = kept
ns[1] = "a key that is no name"  # globals()[1] = ...: skipped, the record still written
post(None)
pre(None)                       # cell 2: nothing bound; a rebound to the same object is not
ns["a"] = ns["a"]
post(None)
'''

SHELLS = {"sh", "dash", "bash", "zsh"}


@pytest.mark.parametrize("python", _interpreters(), ids=lambda p: Path(p).parent.parent.name)
def test_names_record_lists_what_each_cell_bound(python: str, tmp_path: Path) -> None:
    log = tmp_path / "hooks.jsonl"
    done = subprocess.run([python, "-c", NAMES_SCRIPT, str(KERNEL_SIDE), str(log)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    names = [(r["seq"], r["bound"]) for r in records if r["ev"] == "names"]
    assert names == [(0, ["a", "df"]), (1, ["a", "b"]), (2, [])]
    # Written inside the cell, before its end mark: derive attributes it to that cell.
    order = [(r["ev"], r["seq"]) for r in records if r["ev"] in ("names", "cell")]
    assert order[:3] == [("cell", 0), ("names", 0), ("cell", 0)]


# argv: kernel side path, log path, "addresses" or "hash" (the object.__hash__ fallback).
# Cells around a namespace wider than the parts write_names compares, on what a design that
# pairs names by position and identity could get wrong. Every old value stays alive (`keep`),
# so no new object can take a freed one's address.
NAMES_EDGES_SCRIPT = STAND_IN_SHELL + r"""
import runpy, sys
shell = Shell()
keep = []
ns = shell.user_ns = {"In": [], "_i": "", "_ii": "", "_iii": "", "x": [0], "y": [0],
                      "t": (1, 2), "s": "a long string", "big": 10**30}
ns.update(("v%d" % i, [i]) for i in range(600))
runpy.run_path(sys.argv[1], run_name="_flo_backpack_kernel")["attach"](
    shell, {"log": sys.argv[2], "marks": False})
pre, post = shell.events.handlers["pre_run_cell"][0], shell.events.handlers["post_run_cell"][0]
side = post.__self__
if sys.argv[3] == "hash":
    side.addresses, side.unit = None, 1
    side.ns_names, side.ns_keys, side.ns_ids = side.namespace()
print(side.unit)

def cell(n, edit):
    pre(None)
    ns["_iii"], ns["_ii"], ns["_i"] = ns["_ii"], ns["_i"], "cell %d" % n  # as IPython does
    ns["_i%d" % n] = ns["_i"]
    edit()
    post(None)

def deleted_and_readded():
    keep.append(ns.pop("x"))
    ns["x"] = [0]                   # another object: bound, though it moved to the end
    ns["y"] = ns.pop("y")           # the same object: not bound
cell(0, deleted_and_readded)

def equal_but_other():
    keep.extend([ns["t"], ns["s"], ns["big"], ns["v7"]])
    ns["t"] = tuple(list(ns["t"]))
    ns["s"] = "".join(list(ns["s"]))
    ns["big"] = int(str(ns["big"]))
    ns["v7"] = list(ns["v7"])
cell(1, equal_but_other)

def by_global_statement():
    keep.append(ns["v500"])
    exec("def set_g():\n    global g, v500\n    g = {'k': 1}\n    v500 = [500]\nset_g()\n", ns)
cell(2, by_global_statement)

def many_deletions():
    for i in range(0, 600, 10):     # 60 deletions, more than write_names' runs
        keep.append(ns.pop("v%d" % i))
    keep.extend([ns["v595"], ns["v3"]])
    ns["v595"], ns["v3"] = [-595], [-3]
    ns["v10"] = [10]                # deleted, then re-added
    ns["added"] = 1
cell(3, many_deletions)

def one_rebound():
    keep.append(ns["v301"])
    ns["v301"] = [301]
    ns["_4"] = "an output"
cell(4, one_rebound)
cell(5, lambda: None)
"""


@pytest.mark.parametrize("identities", ["addresses", "hash"])
@pytest.mark.parametrize("python", _interpreters(), ids=lambda p: Path(p).parent.parent.name)
def test_names_record_on_deletions_equal_values_and_global_statements(
        python: str, identities: str, tmp_path: Path) -> None:
    log = tmp_path / "hooks.jsonl"
    done = subprocess.run([python, "-c", NAMES_EDGES_SCRIPT, str(KERNEL_SIDE), str(log),
                           identities], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The addresses are read in bulk on every supported interpreter (a word each), else
    # the object.__hash__ fallback (one int per name) is in use.
    assert int(done.stdout) == (8 if identities == "addresses" else 1)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["bound"] for r in records if r["ev"] == "names"] == [
        ["x"],
        ["t", "s", "big", "v7"],
        ["v500", "set_g", "g"],
        ["v3", "v595", "v10", "added"],
        ["v301"],
        [],
    ]


@pytest.mark.parametrize("identities", ["addresses", "hash"])
def test_names_record_pairs_each_name_with_its_old_self_under_random_edits(
        identities: str, tmp_path: Path) -> None:
    """write_names pairs names by key addresses or runs, and compares identities in parts;
    on random cells of rebinds, deletions, re-additions and new names, over a namespace
    bigger than a part, it must list exactly what a lookup by name finds, in namespace
    order, with identities read in bulk or by the object.__hash__ fallback."""
    import random
    import runpy
    from types import SimpleNamespace

    kernel_side = runpy.run_path(str(KERNEL_SIDE), run_name="_flo_backpack_kernel_test")
    rng = random.Random(12)
    keep = []  # every object stays alive: no address is reused, identities stay unique

    def fresh() -> object:
        keep.append(object())
        return keep[-1]

    ns: dict[str, object] = {"In": [], "_i": "", **{f"v{i}": fresh() for i in range(1500)}}
    side = kernel_side["_KernelSide"](str(tmp_path / "hooks.jsonl"), False,
                                      SimpleNamespace(user_ns=ns), None)
    assert side.unit == 8
    if identities == "hash":
        side.addresses, side.unit = None, 1
        side.ns_names, side.ns_keys, side.ns_ids = side.namespace()
    seen = []
    for cell in range(120):
        before = {name: id(value) for name, value in ns.items()}
        names = list(ns)
        for _ in range(rng.choice([0, 1, 3, 20, 300])):
            name, action = rng.choice(names), rng.random()
            if action < 0.4:
                ns[name] = fresh()  # rebound
            elif action < 0.6:
                ns.pop(name, None)  # deleted
            elif action < 0.7 and name in ns:
                ns[name] = ns.pop(name)  # moved to the end, same object: not bound
            elif action < 0.8:
                ns[name] = fresh() if name not in ns else ns[name]
            else:
                ns[f"new{cell}_{len(ns)}"] = fresh()
        ns["_i"] = f"cell {cell}"
        expected = [name for name, value in ns.items()
                    if before.get(name) != id(value) and name[:1] != "_" and name != "In"]
        side.write_names()
        seen.append(expected)
    side.flush()
    records = [json.loads(line) for line in (tmp_path / "hooks.jsonl").read_text().splitlines()]
    assert [r["bound"] for r in records if r["ev"] == "names"] == seen
    assert any(len(bound) > 50 for bound in seen) and seen.count([]) > 3


@pytest.mark.parametrize(("source", "free"), [
    ("x = x + 1\nfor v in vs:\n    print(v)", ["print", "vs", "x"]),
    ("values = [v * 10 for v in values]", ["values"]),
    ("total += step", ["step", "total"]),
    ("%time total = sum(rows)", ["get_ipython", "rows", "sum"]),
    ("%%time\ny = df.a\n", ["df", "get_ipython"]),
    ("!wc -l {path} $other", ["get_ipython", "other", "path"]),
    ("files = !ls {folder}", ["folder", "get_ipython"]),
    ("%matplotlib inline\nplt.plot(xs)", ["get_ipython", "plt", "xs"]),
    ("def f(a):\n    return a + helper + later\nlater = 1", ["helper"]),
    ("class Model(Base):\n    size = default_size", ["Base", "default_size"]),
    ("import numpy as np\nfrom os import path\nnp.mean(path)", []),
    ("try:\n    pass\nexcept KeyError as err:\n    print(err)", ["KeyError", "print"]),
    ("if (n := len(items)) > 2:\n    print(n)", ["items", "len", "print"]),
    ("def broken(:\n    pass", []),
])
def test_free_names_of_a_cell(source: str, free: list[str]) -> None:
    assert free_names(source) == free


@pytest.fixture(scope="module")
def graph_run(audit_runs: Callable[..., AuditRun]) -> AuditRun:
    return audit_runs("cell_graph")


def _cells(run: AuditRun) -> dict[int, dict]:
    path = run.path("audit/cells.yml")
    assert path.is_file(), f"no audit/cells.yml\n{run.describe()}"
    report = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert report["schema"] == 1 and report["notebook"] == "cell_graph.ipynb"
    return {c["cell"]: c for c in report["cells"]}


def _graph(cells: dict[int, dict]) -> dict[int, dict[int, list[str]]]:
    return {i: {p["cell"]: p["reasons"] for p in c["depends_on"]} for i, c in cells.items()}


@pytest.mark.slow
def test_cells_yml_reports_each_cell(graph_run: AuditRun) -> None:
    assert graph_run.returncode == 0, graph_run.describe()
    expect = Scenario("cell_graph").expect["cells"]
    cells = _cells(graph_run)
    assert list(cells) == list(range(1, 11)), "code cells in notebook order, 0-based"
    for index, cell in cells.items():
        assert cell["status"] == "ok" and cell["execution_count"] == index
        assert cell["seconds"] is not None and cell["seconds"] >= 0
    assert cells[5]["first_line"] == "!wc -l table.csv"
    for index, wanted in expect["read"].items():
        assert cells[index]["data_dependencies"]["read"] == wanted, cells[index]
    for index, wanted in expect["written"].items():
        assert cells[index]["data_dependencies"]["written"] == wanted, cells[index]
    for side in ("manager", "worker"):
        for index, wanted in expect[side].items():
            names = {pin.split("==")[0] for pin in cells[index]["code_dependencies"][side]}
            assert set(wanted) <= names, (side, cells[index])
    # termcolor ran in the forked worker only; numpy's first use is cell 1, not cell 4.
    assert not any(p.startswith("termcolor==") for c in cells.values()
                   for p in c["code_dependencies"]["manager"])
    assert any(p.startswith("numpy==") for p in cells[1]["code_dependencies"]["first_used"])
    assert not any(p.startswith("numpy==") for c in cells.values() if c["cell"] != 1
                   for p in c["code_dependencies"]["first_used"])
    # A `!` line runs through $SHELL (IPython's choice, `sh` when unset): bash execs the
    # command, dash forks it, so the shell itself is listed or not depending on the machine.
    for index, wanted in expect["tools"].items():
        tools = [Path(t).name for t in cells[index]["tools"]]
        assert [t for t in tools if t not in SHELLS] == wanted, cells[index]
    assert any(c["peak_rss_mb"] for c in cells.values()), "no cell has the kernel's RSS"


@pytest.mark.slow
def test_static_cross_check_of_each_cell(graph_run: AuditRun) -> None:
    """Imports the source names against what the run used: an uncalled function's import
    and a missing package are named but unused; IPython's own use for `!` and `%time` is
    used but unnamed; a literal import_module("dateutil.rrule") counts as named."""
    expect = Scenario("cell_graph").expect["cells"]
    cells = _cells(graph_run)
    for index, wanted in expect["named_not_used"].items():
        assert cells[index]["static_check"]["named_not_used"] == wanted, cells[index]
    for index, wanted in expect["used_not_named"].items():
        assert set(wanted) <= set(cells[index]["static_check"]["used_not_named"]), cells[index]
    ten = cells[10]
    assert any(p.startswith("python-dateutil==") for p in ten["code_dependencies"]["manager"])
    assert "python-dateutil" not in ten["static_check"]["used_not_named"]
    # termcolor is named in 9 (inside the task function) and used there, by the worker.
    assert cells[9]["static_check"] == {"named_not_used": [], "used_not_named": []}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ptrace", "strace", "hooks"])
def test_cell_graph_edges_and_concurrent_groups(backend: str,
                                                audit_runs: Callable[..., AuditRun]) -> None:
    """The rebound `values` links 4 to 3 (not 2); 5 is linked by a file only, 6 by a name
    only; 6 and 7 are independent branches, so they share a group."""
    run = audit_runs("cell_graph", backend)
    assert run.returncode == 0, run.describe()
    expect = Scenario("cell_graph").expect["cells"]
    cells = _cells(run)
    assert _graph(cells) == expect["depends_on"]
    report = yaml.safe_load(run.path("audit/cells.yml").read_text(encoding="utf-8"))
    assert report["concurrent_groups"] == expect["concurrent_groups"]


@pytest.mark.slow
def test_derive_rewrites_the_same_cells_yml(graph_run: AuditRun, tmp_path: Path) -> None:
    again = tmp_path / "again"
    done = subprocess.run([*flo_audit_argv(), "derive", str(graph_run.out), "-o", str(again)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    before = (graph_run.out / "audit" / "cells.yml").read_text(encoding="utf-8")
    assert (again / "audit" / "cells.yml").read_text(encoding="utf-8") == before
    assert load_cells_yml(again / "audit" / "cells.yml").groups[0] == [1, 2, 9, 10]
    executed = "audit/executed.ipynb"  # its facts re-derived, the same again
    assert (again / executed).read_text() == (graph_run.out / executed).read_text()


@pytest.mark.slow
def test_executed_notebook_carries_each_cells_facts(graph_run: AuditRun) -> None:
    """audit/executed.ipynb: each code cell's cells.yml entry in its metadata under `flo`
    (what JupyterLab shows), outputs untouched; markdown cells get none."""
    import nbformat

    executed = nbformat.read(graph_run.path("audit/executed.ipynb"), as_version=4)
    nbformat.validate(executed)
    cells = _cells(graph_run)
    assert "flo" not in executed.cells[0].metadata  # the markdown cell
    for index in (1, 5, 8):
        assert executed.cells[index].metadata["flo"] == cells[index]
    assert executed.cells[8].metadata["flo"]["depends_on"][0]["cell"] == 6
    assert any(o.get("text") for o in executed.cells[8].outputs)


@pytest.mark.slow
def test_failed_cell_and_the_cells_after_it(audit_runs: Callable[..., AuditRun]) -> None:
    run = audit_runs("cell_fails")
    cells = _cells_of(run)
    assert [(c["cell"], c["status"]) for c in cells] == [(1, "ok"), (2, "error"),
                                                         (3, "not run")]
    assert cells[2]["group"] is None and cells[2]["code_dependencies"]["manager"] == []


def _cells_of(run: AuditRun) -> list[dict]:
    text = run.path("audit/cells.yml").read_text(encoding="utf-8")
    return yaml.safe_load(text)["cells"]


def _cells_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*flo_audit_argv(), "cells", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_cells_command_formats(graph_run: AuditRun) -> None:
    saved = yaml.safe_load((graph_run.out / "audit" / "cells.yml").read_text(encoding="utf-8"))
    for where in (graph_run.out, graph_run.out / "audit"):
        done = _cells_cli(str(where), "--format", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == saved
    done = _cells_cli(str(graph_run.out), "--format", "yaml")
    assert yaml.safe_load(done.stdout) == saved

    table = _cells_cli(str(graph_run.out))
    assert table.returncode == 0, table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 100
    assert "[v * 10" in table.stdout  # a cell's source is not taken for rich markup
    assert "{1, 2, 9, 10}  {3}  {4}  {5}  {6, 7}  {8}" in table.stdout

    dot = _cells_cli(str(graph_run.out), "--format", "dot").stdout
    assert dot.startswith("digraph cells {") and dot.rstrip().endswith("}")
    assert 'c4 -> c5 [label="file table.csv"];' in dot
    assert 'c3 -> c4 [label="name values"];' in dot and "c2 -> c4" not in dot
    # --cell 8: the cell and its ancestors only (9 is an unrelated branch).
    ancestors = _cells_cli(str(graph_run.out), "--format", "dot", "--cell", "8").stdout
    assert "c1 [" in ancestors and "c7 -> c8" in ancestors
    assert "c9" not in ancestors and "c10" not in ancestors

    one = json.loads(_cells_cli(str(graph_run.out), "--format", "json", "--cell", "9",
                                "--role", "worker").stdout)
    assert one["cell"] == 9 and "manager" not in one["code_dependencies"]
    assert [p.split("==")[0] for p in one["code_dependencies"]["worker"]] == ["termcolor"]
    markdown = _cells_cli(str(graph_run.out), "--format", "markdown").stdout
    assert "| 5 | ok |" in markdown and "4 (file table.csv)" in markdown


@pytest.mark.slow
def test_cells_command_bad_input(graph_run: AuditRun, tmp_path: Path) -> None:
    def fails(*args: str) -> str:
        done = _cells_cli(*args)
        assert done.returncode == 2, (done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flo-audit: error: "), done.stderr
        return lines[0]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty / "session.json") in fails(str(empty))

    record = tmp_path / "audit"
    record.mkdir()
    (record / "session.json").write_bytes((graph_run.out / "audit" / "session.json").read_bytes())
    cells = record / "cells.yml"
    assert str(cells) in fails(str(record)) and "derive" in fails(str(record))  # missing
    cells.write_text("cells: [\n  - {cell: 1\n")
    assert str(cells) in fails(str(record))
    cells.write_text("schema: 0\ncells: []\n")
    line = fails(str(record))
    assert str(cells) in line and "schema" in line
    cells.write_text("schema: 1\ncells:\n- {first_line: x}\n")
    assert str(cells) in fails(str(record))

    line = fails(str(graph_run.out), "--cell", "0")
    assert "--cell 0" in line and "1-10" in line


@pytest.mark.slow
def test_worker_side_use_goes_to_the_cell_that_submitted_the_work(
        audit_runs: Callable[..., AuditRun]) -> None:
    """Dask: the worker process starts in cell 2, and termcolor is first imported inside the
    task cell 3 submits, so it is cell 3's worker dependency (first use), nobody's on the
    manager side, and the graph links 3 and 4 to the cells whose names they read."""
    run = audit_runs("cell_graph_dask")
    assert run.returncode == 0, run.describe()
    cells = _cells_of(run)
    by_cell = {c["cell"]: c for c in cells}

    def names(cell: int, side: str) -> set[str]:
        return {p.split("==")[0].lower() for p in by_cell[cell]["code_dependencies"][side]}

    assert "termcolor" in names(3, "worker")
    assert not any("termcolor" in names(c, "worker") for c in (1, 2, 4))
    assert not any("termcolor" in names(c, "manager") for c in by_cell)
    assert any(p.lower().startswith("termcolor==")
               for p in by_cell[3]["code_dependencies"]["first_used"])
    assert "distributed" in names(2, "worker")  # the worker's own start-up, in cell 2
    depends = {c["cell"]: {p["cell"] for p in c["depends_on"]} for c in cells}
    assert depends[3] == {2} and depends[4] == {2, 3}


def test_a_later_rebinding_or_rewrite_orders_the_cells_that_read_before_it() -> None:
    """Groups run at once, so a cell that rebinds a name (or rewrites a file) an earlier cell
    read, or bound (wrote) too, must come after it though it uses nothing of it; without that
    rule cells 2 and 3 below would share a group and 2 could see 3's `x` (or table.csv)."""
    from types import SimpleNamespace

    from auditor.backpack.cells import CellReport
    from auditor.emit.cell_watch import CellWatch
    from auditor.emit.cells import _graph

    sources = {1: "x = 1\nwith open('t.csv', 'w') as f:\n    f.write('1')",
               2: "print(x)\nprint(open('t.csv').read())",
               3: "x = 2\nopen('t.csv', 'w').write('2')", 4: "print(x)"}
    watch = CellWatch(order=[1, 2, 3, 4], bound={1: {"x", "f"}, 3: {"x"}})
    paths = {"/nb/t.csv": ({2}, {1, 3})}  # path -> (cells that read it, cells that wrote it)
    facts = SimpleNamespace(watch=watch, sources=sources, paths=paths)
    reports = {c: CellReport(c, c, "", "ok") for c in sources}
    _graph(reports, facts, {"/nb/t.csv": "t.csv"})  # type: ignore[arg-type]

    assert [(p.cell, p.reasons) for p in reports[2].depends_on] == [
        (1, ["name x", "file t.csv"])]
    assert reports[3].depends_on == []
    assert [(p.cell, p.reasons) for p in reports[3].after] == [
        (1, ["rebinds name x set there", "rewrites file t.csv set there"]),
        (2, ["rebinds name x read there", "rewrites file t.csv read there"])]
    assert [(p.cell, p.reasons) for p in reports[4].depends_on] == [(3, ["name x"])]
    assert [reports[c].group for c in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert reports[3].to_dict()["after"][1] == {
        "cell": 2, "reasons": ["rebinds name x read there", "rewrites file t.csv read there"]}
    assert "after" not in reports[2].to_dict()  # written only when there is one
    assert CellReport.from_dict(reports[3].to_dict()).after == reports[3].after
