"""One backpack contract both sides import.

- flo-run (provisioner/) imports from the auditor only `auditor.backpack` (the model of every
  backpack file) and `auditor.common` (errors, subprocesses, the process tree), and those two
  import no stage of the audit (record, events, roles, resolve, emit): the seam is walked in
  the source, every import statement, including those inside functions.
- session.json and summary.json are read through their models, which check the schema number:
  a record of a newer schema asks for an upgrade, one without a schema asks to re-run or
  re-derive, in one line; what is written reads back equal.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from auditor.backpack.layout import BackpackSpecError, load_backpack
from auditor.backpack.session import SCHEMA, Session, read_session, write_session
from auditor.backpack.summary import Summary, read_summary
from auditor.common.errors import RecordFormatError, SpecError
from auditor.common.execution import FailedCell

REPO = Path(__file__).resolve().parents[1]
CONTRACT = ("auditor.backpack", "auditor.common")


def imported_modules(folder: Path, root: Path = REPO) -> dict[str, set[str]]:
    """file -> the absolute names of the modules its import statements import from (and of
    the names they import, which may be modules); `root` is where package names start."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                names.add(module)
                names |= {f"{module}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(root))] = names
    return found


def _outside(names: set[str], allowed: tuple[str, ...]) -> list[str]:
    auditor = {n for n in names if n == "auditor" or n.startswith("auditor.")}
    return sorted(n for n in auditor
                  if not any(n == a or n.startswith(a + ".") for a in allowed)
                  and n not in ("auditor", "auditor.__version__"))


def test_provisioner_imports_only_the_contract_from_the_auditor() -> None:
    imports = imported_modules(REPO / "provisioner")
    assert len(imports) > 20, "the walk found provisioner's modules"
    assert any(n.startswith("auditor.backpack.") for names in imports.values() for n in names)
    crossing = {f: _outside(names, CONTRACT) for f, names in imports.items()}
    assert not {f: c for f, c in crossing.items() if c}, crossing


def test_the_contract_imports_no_stage_of_the_audit() -> None:
    for package in ("backpack", "common"):
        imports = imported_modules(REPO / "auditor" / package)
        crossing = {f: _outside(names, CONTRACT) for f, names in imports.items()}
        assert not {f: c for f, c in crossing.items() if c}, crossing


def test_the_walk_sees_a_crossing(tmp_path: Path) -> None:
    """The check itself: a stage import, also one inside a function, is caught."""
    names = {"auditor.emit.cells", "auditor.emit.cells.CELLS", "auditor.backpack.layout"}
    assert _outside(names, CONTRACT) == ["auditor.emit.cells", "auditor.emit.cells.CELLS"]
    (tmp_path / "provisioner").mkdir()
    (tmp_path / "provisioner" / "mod.py").write_text(
        "from auditor.backpack.layout import Backpack\n"
        "def f():\n    from auditor.roles import MANAGER\n")
    found = imported_modules(tmp_path / "provisioner", tmp_path)["provisioner/mod.py"]
    assert _outside(found, CONTRACT) == ["auditor.roles", "auditor.roles.MANAGER"]


def _session() -> Session:
    return Session(notebook="/p/nb.ipynb", cwd="/p", backend="strace", status="failed",
                   started=10.0, ended=12.5, cells=[(0, 1), (1, 3)], code_cells=3,
                   failed_cell=FailedCell(3, "ValueError", "bad"), kernel={"pid": 7},
                   kernel_pid=7, tracer_pid=6, warnings=["w"], samples="samples.jsonl",
                   pool=None)


def test_session_reads_back_what_was_written(tmp_path: Path) -> None:
    written = _session()
    path = write_session(tmp_path, written)
    assert json.loads(path.read_text())["schema"] == SCHEMA
    read = read_session(tmp_path)
    assert read == written
    assert read.cell_of_seq == {0: 1, 1: 3} and read.failed_index == 3
    assert not read.complete and read.seconds == 2.5 and read.folder == "/p"
    assert not list(tmp_path.glob("*.part")), "written whole, no temporary file left"


@pytest.mark.parametrize("schema, says", [(2, "upgrade flo-backpack"), (None, "re-run flo-audit"),
                                          (0, "re-run flo-audit")])
def test_session_of_another_schema_is_one_line_saying_what_to_do(tmp_path: Path, schema,
                                                                 says) -> None:
    doc = _session().to_json()
    if schema is None:
        del doc["schema"]
    else:
        doc["schema"] = schema
    (tmp_path / "session.json").write_text(json.dumps(doc))
    with pytest.raises(RecordFormatError) as caught:
        read_session(tmp_path)
    message = str(caught.value)
    assert says in message and "schema" in message and "\n" not in message


def test_session_older_keys_default_when_absent(tmp_path: Path) -> None:
    """Keys added to schema 1 after its first records (code_cells, samples, pool)."""
    doc = _session().to_json()
    for key in ("code_cells", "samples", "pool"):
        del doc[key]
    read = Session.from_json(doc)
    assert read.code_cells is None and read.samples is None and read.pool is None


def _summary_backpack(root: Path, summary: object) -> Path:
    (root / "audit").mkdir(parents=True)
    (root / "software").mkdir()
    (root / "workflow").mkdir()
    (root / "workflow" / "nb.ipynb").write_text(json.dumps(
        {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    (root / "software" / "environment.yml").write_text(
        "name: t\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n      - six==1.16.0\n")
    (root / "compute").mkdir()
    (root / "compute" / "compute.yml").write_text("vine_factory_config:\n  cores: 1\n")
    (root / "audit" / "summary.json").write_text(json.dumps(summary))
    return root


def test_summary_typed_parts_and_the_whole_object(tmp_path: Path) -> None:
    doc = {"schema": 1, "notebook": "/p/nb.ipynb", "status": "worker-died", "complete": False,
           "data": {"outputs": ["/p/out.csv"], "intermediates": ["/p/mid.csv"]},
           "roles": {"worker": {"started_by": "notebook"}}, "added_later": {"x": 1}}
    bp = _summary_backpack(tmp_path / "bp", doc)
    summary = read_summary(bp)
    assert summary is not None and not summary.complete and summary.status == "worker-died"
    assert summary.written == ["/p/out.csv", "/p/mid.csv"]
    assert summary.roles["worker"]["started_by"] == "notebook"
    assert summary.doc["added_later"] == {"x": 1}, "nothing a newer writer added is lost"
    assert not load_backpack(bp).complete


@pytest.mark.parametrize("doc, key, says", [
    ({"schema": 2, "status": "complete"}, "schema", "upgrade flo-backpack"),
    ({"status": "complete"}, "schema", "re-derive"),
    ({"schema": 1}, "status", "a string"),
    ({"schema": 1, "status": "complete", "roles": [1]}, "roles", "an object"),
])
def test_summary_that_breaks_the_model_names_file_and_key(tmp_path: Path, doc, key,
                                                          says) -> None:
    bp = _summary_backpack(tmp_path / "bp", doc)
    with pytest.raises(SpecError) as caught:
        Summary.from_json(doc, bp / "audit" / "summary.json")
    assert caught.value.key == key and says in str(caught.value)
    with pytest.raises(BackpackSpecError) as loading:
        load_backpack(bp)
    assert loading.value.key == key and str(bp / "audit" / "summary.json") in str(loading.value)
