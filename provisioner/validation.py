"""Validation, the first phase of every flo-run command: the backpack loaded once, with every
problem collected (never raised), and the workflow checked as it will be executed (strict).

A problem is the loader's `SpecError` fields (file, key, expected), paths relative to the
backpack; `ValidationResult.backpack` is the loaded backpack the later phases use.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from auditor.backpack.environment import EnvSpec
from auditor.backpack.layout import Backpack, read_backpack
from auditor.common.errors import FloError, SpecError

ENV_FILES = {"manager": "software/environment.yml", "worker": "software/worker-environment.yml"}


class InvalidBackpack(FloError):
    """The backpack did not validate; the message lists what is wrong, file by file."""

    def __init__(self, result: ValidationResult) -> None:
        first = result.problems[0]
        more = f" (and {len(result.problems) - 1} more; run `flo-run validate`)" \
            if len(result.problems) > 1 else ""
        super().__init__(f"invalid backpack {result.root}: {first}{more}")
        self.result = result


@dataclass(frozen=True)
class Problem:
    """One reason a backpack is invalid: which file, which key, what was expected."""

    file: str
    key: str
    expected: str

    def __str__(self) -> str:
        key = f": key {self.key!r}" if self.key else ""
        return f"{self.file}{key}: {self.expected}"


@dataclass
class ValidationResult:
    root: Path
    workflow: Path | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    specs: dict[str, EnvSpec] = field(default_factory=dict)  # role -> spec
    #: The backpack as loaded (once, for the whole command); None when it is invalid.
    backpack: Backpack | None = None
    checked_with: str = "auditor.backpack.layout"  # which loader validated the spec files
    seconds: float = 0.0

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.valid else 2

    def to_dict(self) -> dict:
        return {"backpack": str(self.root), "valid": self.valid,
                "workflow": str(self.workflow) if self.workflow else None,
                "problems": [{"file": p.file, "key": p.key, "expected": p.expected}
                             for p in self.problems],
                "warnings": self.warnings, "checked_with": self.checked_with,
                "python": {role: spec.python for role, spec in self.specs.items()},
                "seconds": round(self.seconds, 3)}


def validate(backpack: str | Path, strict: bool = False) -> ValidationResult:
    """Check a backpack's layout and spec files; every problem found is listed, none raised.
    A valid backpack is loaded once, here: `result.backpack` is what the later phases use."""
    started = time.monotonic()
    root = Path(backpack).expanduser().absolute()
    result = ValidationResult(root)
    if not root.is_dir():
        result.problems.append(Problem(str(root), "", "expected a backpack folder"))
        return result
    reading = read_backpack(root)
    result.problems += [_problem(exc, root) for exc in reading.errors]
    result.backpack, result.workflow = reading.backpack, reading.workflow
    result.specs = dict(reading.specs)
    for role, spec in reading.specs.items():
        if spec.python is None:
            result.warnings.append(f"{ENV_FILES[role]}: no 'python=' pin; the newest "
                                   "interpreter found (or --python) will be used")
    if "manager" in result.specs and not (root / ENV_FILES["worker"]).exists():
        result.specs["worker"] = result.specs["manager"]  # absent = same as manager
    if reading.backpack is not None:
        result.warnings.extend(_relative(w, root) for w in reading.backpack.warnings)
    if strict and result.workflow is not None:
        _check_notebook(root, result.workflow, result)
    result.seconds = time.monotonic() - started
    return result


def _problem(exc: SpecError, root: Path) -> Problem:
    """A loader's error as a Problem, paths relative to the backpack. A data.yml entry's key
    stays in the text ("entry data[0] ('x'): key 'checksum': ..."), as the entry names it."""
    file = _relative(exc.file, root)
    if exc.entry:
        return Problem(file, "", _relative(exc.detail, root))
    return Problem(file, exc.key, _relative(exc.expectation, root))


def _check_notebook(root: Path, workflow: Path, result: ValidationResult) -> None:
    """The workflow as flo-run will execute it: read by the audit's loader (a notebook must
    be valid nbformat; a script UTF-8 text), and a script must compile."""
    from auditor.backpack.workflow import load_workflow

    relative = str(workflow.relative_to(root))
    try:
        load_workflow(workflow)
    except FloError as exc:
        message = _relative(str(exc), root).removeprefix(f"{relative} is ")
        result.problems.append(Problem(relative, "", message))
        return
    if workflow.suffix != ".py":
        return
    try:
        compile(workflow.read_text(encoding="utf-8"), str(workflow), "exec")
    except SyntaxError as exc:
        problem = Problem(relative, f"line {exc.lineno}", f"valid Python ({exc.msg})")
        ours, theirs = f"{sys.version_info[0]}.{sys.version_info[1]}", _minor(result)
        if theirs is None or theirs == ours:
            result.problems.append(problem)
        else:  # the kernel's Python may accept what ours does not (or the other way round)
            result.warnings.append(f"{problem} under Python {ours}; the manager environment "
                                   f"has Python {theirs}")


def _minor(result: ValidationResult) -> str | None:
    spec = result.specs.get("manager")
    if spec is None or not spec.python:
        return None
    return ".".join(spec.python.split(".")[:2])


def _relative(text: str, root: Path) -> str:
    return text.replace(f"{root}/", "")
