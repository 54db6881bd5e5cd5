"""Writing a backpack all-or-nothing, and reading its spec files back with useful errors."""

from __future__ import annotations

import pytest

from auditor.backpack.compute import draft_compute, render_compute_yml
from auditor.backpack.layout import (
    BackpackError,
    load_backpack,
    workflow_copies,
    write_backpack,
)
from auditor.common.errors import UsageError

ENV = "name: nb\nchannels: [conda-forge]\ndependencies:\n  - python=3.11.7\n  - pip\n" \
      "  - pip:\n      - numpy==2.2.6\n"


def texts(marker="new"):
    return {"software/environment.yml": ENV,
            "software/requirements.txt": f"# {marker}\nnumpy==2.2.6  # used in cell 1\n",
            "compute/compute.yml": render_compute_yml(draft_compute(), "nb.ipynb", "today"),
            "audit/summary.json": '{"schema": 1, "notebook": "/x/nb.ipynb", "status": "complete", '
                                  '"complete": true}'}


@pytest.fixture
def notebook(tmp_path):
    folder = tmp_path / "project"
    (folder / "lib").mkdir(parents=True)
    nb = folder / "nb.ipynb"
    nb.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    (folder / "lib" / "helpers.py").write_text("X = 1\n")
    return nb


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_layout_and_round_trip(tmp_path, notebook):
    copies, warnings = workflow_copies(notebook, [str(notebook.parent / "lib/helpers.py"),
                                                  "/usr/lib/elsewhere.py"])
    dest = write_backpack(tmp_path / "out", texts=texts(), copies=copies)
    assert (dest / "workflow/nb.ipynb").read_bytes() == notebook.read_bytes()
    assert (dest / "workflow/lib/helpers.py").read_text() == "X = 1\n"
    assert warnings == ["/usr/lib/elsewhere.py is outside the notebook's folder; "
                        "not copied into workflow/"]
    backpack = load_backpack(dest)
    assert backpack.workflow == dest / "workflow/nb.ipynb"
    assert backpack.environment["dependencies"][0] == "python=3.11.7"
    assert backpack.specs["manager"].python == "3.11.7" and set(backpack.specs) == {"manager"}
    assert backpack.requirements == ["numpy==2.2.6"]
    assert backpack.compute == draft_compute()
    assert backpack.worker_environment is None and backpack.warnings == []
    assert leftovers(tmp_path) == []


def test_existing_folder_is_refused_without_force(tmp_path, notebook):
    dest = write_backpack(tmp_path / "out", texts=texts("old"), copies=[])
    with pytest.raises(UsageError, match="already exists; pass --force"):
        write_backpack(dest, texts=texts("new"), copies=[])
    assert "# old" in (dest / "software/requirements.txt").read_text()
    write_backpack(dest, texts=texts("new"), copies=[], force=True)
    assert "# new" in (dest / "software/requirements.txt").read_text()
    assert leftovers(tmp_path) == []


def test_failure_mid_write_keeps_the_old_folder_and_no_temporary_one(tmp_path, notebook):
    dest = write_backpack(tmp_path / "out", texts=texts("old"), copies=[])

    def copies_then_interrupt():
        yield notebook, "workflow/nb.ipynb"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_backpack(dest, texts=texts("new"), copies=copies_then_interrupt(), force=True)
    with pytest.raises(FileNotFoundError):
        write_backpack(dest, texts=texts("new"), force=True,
                       copies=[(notebook, "workflow/nb.ipynb"), (tmp_path / "gone", "x")])
    assert "# old" in (dest / "software/requirements.txt").read_text()
    assert not (dest / "workflow").exists()
    assert leftovers(tmp_path) == []


def test_paths_outside_the_backpack_are_refused(tmp_path):
    with pytest.raises(BackpackError, match="outside the backpack"):
        write_backpack(tmp_path / "out", texts={"../escape.txt": "x"}, copies=[])
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("relative, content, message", [
    ("software/environment.yml", "name: nb\ndependencies: numpy\n",
     "environment.yml: key 'dependencies': expected a list"),
    ("software/environment.yml", "dependencies:\n  - {conda: [x]}\n",
     "key 'dependencies[0]': expected a package spec string"),
    ("software/environment.yml", "dependencies: [\n", "environment.yml: not valid YAML"),
    ("compute/compute.yml", "vine_factory_config:\n  cores: four\n",
     "compute.yml: key 'vine_factory_config.cores': expected a non-negative integer"),
    ("compute/compute.yml", "vine_factory_config:\n  min-workers: 3\n  max-workers: 2\n",
     "key 'vine_factory_config.min-workers': expected at most max-workers"),
    ("compute/compute.yml", "- 1\n", "compute.yml: expected a mapping"),
])
def test_load_errors_name_file_key_and_expectation(tmp_path, notebook, relative, content,
                                                   message):
    dest = write_backpack(tmp_path / "out", texts={**texts(), relative: content},
                          copies=[(notebook, "workflow/nb.ipynb")])
    with pytest.raises(BackpackError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_backpack(dest)


def test_unknown_keys_are_reported(tmp_path, notebook):
    compute = "vine_factory_config:\n  cores: 2\n  gpus: 1\nextra: true\n"
    dest = write_backpack(tmp_path / "out", texts={**texts(), "compute/compute.yml": compute},
                          copies=[(notebook, "workflow/nb.ipynb")])
    backpack = load_backpack(dest)
    assert backpack.compute.cores == 2
    assert sorted(w.split(": ", 1)[1] for w in backpack.warnings) == [
        "unknown key 'extra' ignored", "unknown key 'vine_factory_config.gpus' ignored"]


# ---------------------------------------------------------------- real runs through the API

TINY = {"cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "outputs": [],
                   "execution_count": None, "source": "import yaml\nprint(yaml.__version__)"},
                  {"cell_type": "code", "id": "c2", "metadata": {}, "outputs": [],
                   "execution_count": None, "source": "x = 1"}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    import json
    import tempfile

    folder = tmp_path / "work"
    folder.mkdir()
    nb = folder / "tiny.ipynb"
    nb.write_text(json.dumps(TINY))
    scratch = tmp_path / "scratch"  # where audit() keeps its temporary record folder
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return nb, scratch


@pytest.mark.slow
def test_audit_writes_a_backpack_that_derive_reproduces(tiny, tmp_path):
    from auditor.api import AuditOptions, audit, derive_backpack

    nb, scratch = tiny
    seen = []
    result = audit(nb, AuditOptions(output=tmp_path / "bp", backend="hooks",
                                    progress=lambda *a: seen.append(a)))
    assert result.exit_code == 0 and result.backpack == tmp_path / "bp"
    assert ("hooks.jsonl" in {p.name for p in (result.backpack / "audit").iterdir()})
    assert {p["name"] for p in result.summary["packages"] if p["reason"] == "used"} == {"PyYAML"}
    assert (0, 2, "start") in seen and (1, 2, "end") in seen
    assert list(scratch.iterdir()) == []  # the temporary record folder is gone
    derived, _ = derive_backpack(result.backpack)
    for name in ("software/environment.yml", "software/requirements.txt", "compute/compute.yml"):
        assert derived.texts[name] == (result.backpack / name).read_text(), name
    assert load_backpack(result.backpack).complete


@pytest.mark.slow
def test_interrupted_audit_writes_nothing_and_leaves_no_temporary_folder(tiny, tmp_path):
    from auditor.api import AuditOptions, audit
    from auditor.common.errors import Interrupted

    nb, scratch = tiny

    def ctrl_c(position, count, phase):
        if phase == "start" and position == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        audit(nb, AuditOptions(output=tmp_path / "bp", backend="hooks", progress=ctrl_c))
    assert not (tmp_path / "bp").exists()
    assert list(scratch.iterdir()) == []
    assert leftovers(tmp_path) == []
