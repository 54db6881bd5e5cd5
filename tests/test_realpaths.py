"""RealPaths gives os.path.realpath's answer, folders resolved once."""

from __future__ import annotations

import os
from pathlib import Path

from auditor.common.realpaths import RealPaths


def test_the_same_answers_as_realpath_through_links_of_folders_and_files(tmp_path: Path) -> None:
    (tmp_path / "lib" / "site").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("a")
    os.symlink("lib", tmp_path / "lib64")  # a linked folder
    os.symlink("../../data/a.csv", tmp_path / "lib" / "site" / "link.csv")  # a linked file
    os.symlink("missing", tmp_path / "lib" / "dangling")
    paths = [tmp_path / "lib64" / "site" / "x.py", tmp_path / "lib64" / "site" / "link.csv",
             tmp_path / "lib" / "site" / "link.csv", tmp_path / "lib" / "dangling",
             tmp_path / "data" / "a.csv", tmp_path / "lib64" / ".." / "data" / "a.csv",
             tmp_path / "lib64" / "." / "site" / "y", tmp_path / "nowhere" / "z", tmp_path]
    real = RealPaths()
    for _ in range(2):  # the second round answers from the memo
        for path in paths:
            assert real(str(path)) == os.path.realpath(path), path
    assert real(str(tmp_path / "lib64" / "site" / "link.csv")) == str(tmp_path / "data" / "a.csv")
