"""Load the workflow to audit: a Jupyter notebook, or a .py script as an in-memory notebook.

Every problem with the file itself becomes one `UsageError` line that says what is wrong,
before any kernel or tracer is started.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat

from ..common.errors import UsageError

SUPPORTED = (".ipynb", ".py")

# A percent-format cell marker: "# %%", optionally followed by a title or "[markdown]".
_CELL_MARKER = re.compile(r"^# ?%%(?!%)(.*)$")


@dataclass
class Workflow:
    """The workflow as given (`path`, never modified) and the notebook the recorder runs."""

    path: Path
    notebook: nbformat.NotebookNode
    kind: str  # "ipynb" | "py"

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def code_cells(self) -> int:
        return sum(1 for cell in self.notebook.cells if cell.cell_type == "code")

    @property
    def code_sources(self) -> dict[int, str]:
        """Code cell index (markdown cells counted) -> its source."""
        return {i: cell.source for i, cell in enumerate(self.notebook.cells)
                if cell.cell_type == "code"}

    @property
    def saved_counts(self) -> dict[int, int]:
        """Code cell index -> the execution count saved in the notebook (cells never run
        interactively, and every .py cell, have none)."""
        return {i: cell.execution_count for i, cell in enumerate(self.notebook.cells)
                if cell.cell_type == "code" and isinstance(cell.get("execution_count"), int)
                and not isinstance(cell.execution_count, bool)}


def load_workflow(path: str | Path, *, validate: bool = True) -> Workflow:
    """Read and validate `path`; raise `UsageError` with one line saying what is wrong.
    `validate=False` skips the nbformat schema check (a notebook audited before, read again
    for what it holds: the check is the slowest part of reading a big notebook)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"no such file: {path}")
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the notebook or script file to audit")
    suffix = path.suffix.lower()
    if suffix == ".ipynb":
        notebook = _load_notebook(path, validate)
        kind = "ipynb"
    elif suffix == ".py":
        notebook = notebook_from_script(_read_text(path))
        kind = "py"
    else:
        raise UsageError(f"cannot audit {path}: unsupported file type {path.suffix or '(none)'!r}; "
                         "give a Jupyter notebook (.ipynb) or a Python script (.py)")
    return Workflow(path.resolve(), notebook, kind)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _load_notebook(path: Path, validate: bool = True) -> nbformat.NotebookNode:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not a Jupyter notebook: not JSON "
                         f"({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise UsageError(f"{path} is not a Jupyter notebook: "
                         "the JSON has no 'cells' (nbformat 4) or 'worksheets' (nbformat 3)")
    if not isinstance(data.get("nbformat"), int):
        raise UsageError(f"{path} is not a valid notebook: missing or non-integer 'nbformat' "
                         "version; open and re-save it in Jupyter")
    # nbformat.reads would log validation errors and warn on stderr; validate quietly instead.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            notebook = nbformat.convert(nbformat.reader.reads(text), 4)
        except Exception as exc:  # nbformat raises a variety of types for odd versions
            raise UsageError(f"{path} is not a valid notebook: {_one_line(str(exc))}") from None
        try:
            if validate:
                nbformat.validate(notebook)
        except nbformat.ValidationError as exc:
            raise UsageError(f"{path} is not a valid notebook (nbformat {notebook.nbformat}): "
                             f"{_summarise_validation(exc)}; open and re-save it in Jupyter"
                             ) from None
    return notebook


def _summarise_validation(exc: nbformat.ValidationError) -> str:
    """One line from a jsonschema error: where in the notebook, and what was wrong."""
    where = "/".join(str(p) for p in getattr(exc, "absolute_path", []) or [])
    message = _one_line(getattr(exc, "message", "") or str(exc))
    if len(message) > 160:
        message = message[:157] + "..."
    return f"at {where}: {message}" if where else message


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return first.strip()


def notebook_from_script(source: str) -> nbformat.NotebookNode:
    """A notebook from a percent-format script: one cell per `# %%` marker, else one cell.

    `# %% [markdown]` cells become markdown cells (their `# ` comment prefixes stripped).
    """
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    lines = source.splitlines()
    if not any(_CELL_MARKER.match(line) for line in lines):
        notebook.cells.append(nbformat.v4.new_code_cell(source.rstrip("\n")))
        return notebook
    chunks: list[tuple[str, list[str]]] = [("code", [])]
    for line in lines:
        match = _CELL_MARKER.match(line)
        if match:
            kind = "markdown" if "[markdown]" in match.group(1) else "code"
            chunks.append((kind, []))
        else:
            chunks[-1][1].append(line)
    for kind, body in chunks:
        text = "\n".join(body).strip("\n")
        if kind == "markdown":
            text = "\n".join(re.sub(r"^# ?", "", line) for line in text.splitlines())
            notebook.cells.append(nbformat.v4.new_markdown_cell(text))
        elif text.strip():
            notebook.cells.append(nbformat.v4.new_code_cell(text))
    return notebook
