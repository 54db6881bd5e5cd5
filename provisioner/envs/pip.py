"""Build a venv with the interpreter's own `venv` and `pip`: the same steps as the uv builder
(pins with --no-deps, then the bootstrap packages with the pins as constraints, then a check),
for machines without uv and for comparing the two (bench/run_overhead.py).

`python -m venv` writes absolute paths into the entry-point scripts of bin/. The cache builds in
a temporary folder and renames it to its key, so those shebangs are rewritten to the final
path before returning; flo-run itself only ever runs `ENV/bin/python -m ...`, which survives the
rename either way.
"""

from __future__ import annotations

import json
from pathlib import Path

from auditor.common.errors import CommandError
from auditor.common.process import run

from .base import BuildOutcome, EnvBuilder, EnvBuildError, EnvRequest, register
from .uv import _cause, install_pins, requirement_lines


@register
class PipBuilder(EnvBuilder):
    name = "pip"

    def build(self, request: EnvRequest, target: Path) -> BuildOutcome:
        python = target / "bin" / "python"

        def pip(args: list[str], what: str) -> str:
            return run([python, "-m", "pip", "--disable-pip-version-check",
                        "--no-input", *args], cwd=target.parent, timeout=1800,
                       what=what).stdout

        notes: list[str] = []
        lines = requirement_lines(request.pins, notes)
        run([request.interpreter.executable, "-m", "venv", target], timeout=600,
            what="creating the venv")
        install_pins(lambda args, what: pip(["install", "--quiet", *args], what), target,
                     lines, request.bootstrap)
        try:
            pip(["check"], "checking the environment")
        except CommandError as exc:
            raise EnvBuildError(f"the built environment is inconsistent (pip check): "
                                f"{_cause(exc)}; fix the pins in the spec") from None
        listing = pip(["list", "--format", "json"], "listing the environment")
        _rewrite_shebangs(target, target.parent / request.key)
        installed = {d["name"]: d["version"] for d in json.loads(listing or "[]")}
        return BuildOutcome(installed, notes)


def _rewrite_shebangs(built: Path, final: Path) -> None:
    """Point bin/ scripts at the folder the cache renames `built` to. The interpreter path is
    in the first lines: a `#!` line, or for long paths a `#!/bin/sh` + `exec` trampoline."""
    old, new = f"{built}/bin/".encode(), f"{final}/bin/".encode()
    for script in (built / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        content = script.read_bytes()
        head = content[:4096].split(b"\nimport ", 1)[0]  # the header, before any Python code
        if old in head:
            script.write_bytes(head.replace(old, new) + content[len(head):])
