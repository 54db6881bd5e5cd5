"""dump_yaml writes what yaml.safe_dump writes, through the C emitter when PyYAML has one."""

from __future__ import annotations

import yaml

from auditor.backpack import yaml_text
from auditor.backpack.yaml_text import dump_yaml

DOC = {
    "schema_version": 1.0,
    "profiles": {"local_data": {"policy": {"retry_attempts": 3, "timeout": 60}, "data": [
        {"name": "données été.csv", "source": "https://example.org/a?b=1&c=%20x",
         "target_location": "../in/a b: c.csv", "checksum": "sha256:" + "0f" * 32,
         "expected_size": 12345678901, "first_cell": None, "tags": ["yes", "no", "null", "1.0"],
         "note": "a long sentence " * 12, "multi": "line one\nline two\n", "empty": ""}]}},
    "cells": [{"cell": 1, "depends_on": [{"cell": 0, "reasons": ["name x", "file t.csv"]}],
               "group": 0, "read": [], "written": ["out/x.csv"]}],
}


def test_the_c_emitter_is_used_where_pyyaml_has_it() -> None:
    assert yaml_text._DUMPER is (yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper)


def test_the_same_text_as_safe_dump_in_the_styles_the_backpack_files_use() -> None:
    for options in ({"sort_keys": False, "allow_unicode": True, "width": 100},
                    {"sort_keys": False, "width": 100, "default_flow_style": None,
                     "allow_unicode": True}):
        text = dump_yaml(DOC, **options)
        assert text == yaml.safe_dump(DOC, **options)
        assert yaml.safe_load(text) == DOC


def test_reading_gives_the_same_document_and_the_line_of_a_syntax_error() -> None:
    from auditor.backpack.yaml_text import load_yaml_text

    for options in ({"sort_keys": False, "allow_unicode": True, "width": 100},
                    {"sort_keys": False, "width": 100, "default_flow_style": None}):
        text = yaml.safe_dump(DOC, **options)
        assert load_yaml_text(text) == yaml.safe_load(text) == DOC
    for bad, line in (("a: [1, 2\n", 2), ("a: b: c\n", 1), ("key: 1\n  bad: 2\n", 2)):
        try:
            load_yaml_text(bad)
        except yaml.YAMLError as exc:
            assert exc.problem_mark.line + 1 == line, bad  # type: ignore[attr-defined]
        else:
            raise AssertionError(f"{bad!r} was read")
