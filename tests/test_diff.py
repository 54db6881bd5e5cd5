"""flo-audit diff on hand-written spec files."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from auditor.backpack.environment import parse_conda_spec
from auditor.common.errors import UsageError
from auditor.diff import diff, render_markdown


def write_env(folder: Path, body: str, name: str = "environment.yml") -> Path:
    path = folder / "software" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return folder


BASE = """\
name: demo
channels: [conda-forge]
dependencies:
  - python=3.11.7
  - conda-forge::numpy==2.1.3
  - pip
  - pip:
      - pandas==2.2.3
      - six==1.16.0
      - tzdata==2024.1
"""


def test_identical_sides_are_same(tmp_path: Path) -> None:
    a = write_env(tmp_path / "a", BASE)
    b = write_env(tmp_path / "b", BASE)
    result = diff(a, b)
    assert result.same and result.exit_code == 0
    assert "No differences" in render_markdown(result)


def test_versions_compared_as_versions_not_strings(tmp_path: Path) -> None:
    a = write_env(tmp_path / "a", BASE)
    b = write_env(tmp_path / "b", BASE.replace("pandas==2.2.3", "pandas==2.10.0")
                  .replace("tzdata==2024.1", "tzdata==2023.4")
                  .replace("six==1.16.0", "six==1.16")
                  .replace("python=3.11.7", "python=3.12.1")
                  .replace("conda-forge::numpy==2.1.3", "defaults::numpy==2.1.3")
                  + "      - rich==13.0.0\n")
    changes = {(c.section, c.name, c.change): c for c in diff(a, b).changes}
    assert ("package", "pandas", "upgraded") in changes  # "2.10.0" < "2.2.3" as strings
    assert ("package", "tzdata", "downgraded") in changes
    assert ("package", "rich", "added") in changes
    assert ("package", "numpy", "moved") in changes
    assert ("python", "python", "changed") in changes
    assert not any(name == "six" for _, name, _ in changes)  # 1.16 == 1.16.0
    # no worker environment on either side: only manager rows
    assert {c.role for c in diff(a, b).changes} == {"manager"}


def test_worker_environment_compared_per_role(tmp_path: Path) -> None:
    a = write_env(tmp_path / "a", BASE)
    b = write_env(tmp_path / "b", BASE)
    write_env(b, BASE.replace("      - pandas==2.2.3\n", ""), "worker-environment.yml")
    changes = {(c.role, c.name, c.change) for c in diff(a, b).changes}
    # A's worker environment is its manager's; B's workers lost pandas
    assert changes == {("worker", "pandas", "removed")}


def test_ignore_patch_hides_patch_level_changes(tmp_path: Path) -> None:
    a = write_env(tmp_path / "a", BASE)
    b = write_env(tmp_path / "b", BASE.replace("pandas==2.2.3", "pandas==2.2.4")
                  .replace("tzdata==2024.1", "tzdata==2025.1"))
    names = {c.name for c in diff(a, b, ignore_patch=True).changes}
    assert names == {"tzdata"}


def test_conda_to_pip_move_and_removal(tmp_path: Path) -> None:
    a = write_env(tmp_path / "a", BASE)
    b = write_env(tmp_path / "b", BASE.replace("  - conda-forge::numpy==2.1.3\n", "")
                  .replace("      - six==1.16.0\n", "      - numpy==2.1.3\n"))
    changes = {(c.name, c.change) for c in diff(a, b).changes if c.role == "manager"}
    assert changes == {("numpy", "moved"), ("six", "removed")}


def test_data_changes_by_name_and_target(tmp_path: Path) -> None:
    def data(folder: Path, entries: list[dict]) -> Path:
        (folder / "data").mkdir(parents=True)
        doc = {"schema_version": 1.0, "default_profile": "local_data",
               "profiles": {"local_data": {"data": entries}}}
        (folder / "data" / "data.yml").write_text(yaml.safe_dump(doc))
        return write_env(folder, BASE)

    def entry(name: str, target: str, **more: object) -> dict:
        return {"name": name, "source_type": "fs", "source": f"/d/{target}",
                "target_location": target, **more}

    a = data(tmp_path / "a", [entry("m", "m.csv", expected_size=10, checksum="sha256:" + "a" * 64),
                              entry("old", "o.csv")])
    b = data(tmp_path / "b", [entry("m", "m.csv", expected_size=10, checksum="sha256:" + "b" * 64),
                              entry("new", "n.csv")])
    changes = {(c.name, c.change) for c in diff(a, b).changes if c.section == "data"}
    assert changes == {("m -> m.csv", "changed"), ("old -> o.csv", "removed"),
                       ("new -> n.csv", "added")}


def test_per_cell_changes_matched_by_position_and_source(tmp_path: Path) -> None:
    def audit(folder: Path, cells: list[dict]) -> Path:
        write_env(folder, BASE)
        (folder / "audit").mkdir()
        (folder / "audit" / "summary.json").write_text(json.dumps(
            {"schema": 1, "status": "complete", "cells": cells}))
        return folder

    a = audit(tmp_path / "a", [{"index": 0, "source": "import x", "packages": ["x"]},
                               {"index": 1, "source": "f()", "packages": ["y"],
                                "files": ["in.csv"]}])
    b = audit(tmp_path / "b", [{"index": 0, "source": "import x", "packages": ["x", "z"]},
                               {"index": 1, "source": "g()", "packages": []}])
    changes = [(c.name, c.change, c.after) for c in diff(a, b).changes if c.section == "cell"]
    assert changes == [("cell 0", "package appeared", "z")]  # cell 1's source changed


@pytest.mark.parametrize("summary, message", [
    ('{"schema": 1, "status": "complete", "cells": [1]}', "key 'cells[0]'"),
    ('{"schema": 1, "status": "complete", "cells": [{"index": 0, "source": "x", '
     '"packages": "numpy"}]}', "key 'cells[0].packages': a list of strings"),
    ('{"status": "complete", "cells": []}', "key 'schema'"),
    ('[1]', "expected a JSON object"),
    ('{"cells": [', "valid JSON"),
])
def test_malformed_summary_names_the_file(tmp_path: Path, summary: str, message: str) -> None:
    """diff reads summary.json through its model: a summary it cannot read is one error
    naming the file and the key, not a crash in the comparison."""
    good = write_env(tmp_path / "good", BASE)
    bad = write_env(tmp_path / "bad", BASE)
    (bad / "audit").mkdir()
    (bad / "audit" / "summary.json").write_text(summary)
    with pytest.raises(UsageError) as err:
        diff(good, bad)
    assert str(bad / "audit" / "summary.json") in str(err.value), err.value
    assert message in str(err.value), err.value


@pytest.mark.parametrize("body, message", [
    ("name: x\n", "key 'dependencies'"),
    ("dependencies: [python=3.11, {conda: x}]\n", "'pip:' list of requirement strings"),
    ("dependencies: [\n", "not valid YAML"),
    ("dependencies:\n  - pip:\n      - 'not a requirement !!'\n", "not a pip requirement"),
])
def test_malformed_inputs_name_file_and_problem(tmp_path: Path, body: str, message: str) -> None:
    bad = tmp_path / "environment.yml"
    bad.write_text(body)
    good = write_env(tmp_path / "good", BASE) / "software" / "environment.yml"
    with pytest.raises(UsageError) as err:
        diff(good, bad)
    assert str(bad) in str(err.value) and message in str(err.value)


def test_parse_conda_spec_forms() -> None:
    assert parse_conda_spec("conda-forge::numpy==2.1.3") == ("numpy", "2.1.3", "conda-forge")
    assert parse_conda_spec("numpy=2.1.3=py311h1234") == ("numpy", "2.1.3", None)
    assert parse_conda_spec("python=3.11") == ("python", "3.11", None)
    assert parse_conda_spec("numpy>=2") == ("numpy", None, None)
    assert parse_conda_spec("pip") == ("pip", None, None)


def test_markdown_renders_a_table(tmp_path: Path) -> None:
    a = write_env(tmp_path / "a", BASE)
    b = write_env(tmp_path / "b", BASE.replace("pandas==2.2.3", "pandas==2.2.4"))
    text = render_markdown(diff(a, b))
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows[0] == "| section | role | name | change | before | after |"
    assert rows[1].count("---") == 6
    assert "| package | manager | pandas | upgraded | 2.2.3 | 2.2.4 |" in rows
