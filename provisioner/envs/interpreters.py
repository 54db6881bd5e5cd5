"""Find a Python interpreter on this machine that matches an environment's `python=` pin.

Where we look, in order: `--python` (when given it is the only candidate), `~/.pyenv/versions/*`,
then `pythonX.Y` / `python3` on PATH. An exact version wins; else the newest patch release of the
same major.minor. pyenv shims on PATH are resolved by asking the interpreter for
`sys.executable`, so a shim for a version pyenv has not selected is skipped, not trusted.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from auditor.common.errors import CommandError, FloError
from auditor.common.process import run

# Printed by the probed interpreter itself: what it is, exactly, for the cache key.
_PROBE = (
    "import json, platform, sys, sysconfig; print(json.dumps({"
    "'executable': sys.executable, 'version': platform.python_version(), "
    "'implementation': sys.implementation.name, 'platform': sysconfig.get_platform(), "
    "'abiflags': getattr(sys, 'abiflags', '')}))"
)


class InterpreterNotFound(FloError):
    """No interpreter on this machine matches the requested `python=` version."""


@dataclass(frozen=True)
class Interpreter:
    """A probed interpreter: its real path and what it is (version, implementation, platform)."""

    executable: str
    version: str
    implementation: str
    platform: str
    abiflags: str = ""

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])

    def to_dict(self) -> dict:
        return asdict(self)


def pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def probe(path: str | os.PathLike[str]) -> Interpreter | None:
    """Ask `path` what it is; None when it does not run (a stale shim, a broken install)."""
    try:
        done = run([path, "-I", "-c", _PROBE], timeout=30, check=False,
                   what=f"probing interpreter {path}")
    except CommandError:
        return None
    if done.returncode != 0:
        return None
    try:
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return Interpreter(**info)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def _matches(version: str, wanted: str) -> bool:
    """`wanted` "3.11" matches any 3.11.x; "3.11.7" matches exactly."""
    return version.split(".")[: len(wanted.split("."))] == wanted.split(".")


def _pyenv_candidates() -> list[tuple[str, Path]]:
    """(version from the folder name, python path) for every pyenv-installed CPython."""
    versions = pyenv_root() / "versions"
    found = []
    for folder in sorted(versions.glob("*")) if versions.is_dir() else []:
        python = folder / "bin" / "python"
        if python.exists() and folder.name[:1].isdigit():
            found.append((folder.name, python))
    return found


def _path_candidates(major_minor: str) -> list[Path]:
    names = [f"python{major_minor}", f"python{major_minor.split('.')[0]}", "python"]
    seen, found = set(), []
    for name in names:
        where = shutil.which(name)
        if where and where not in seen:
            seen.add(where)
            found.append(Path(where))
    return found


def find_interpreter(wanted: str | None, explicit: str | os.PathLike[str] | None = None,
                     ) -> Interpreter:
    """The interpreter to build an environment on, for the spec's `python=` version `wanted`.

    `wanted` None means "no pin": the explicit interpreter, else the newest pyenv one, else
    python3 on PATH.
    """
    if explicit is not None:
        interp = probe(explicit)
        if interp is None:
            raise InterpreterNotFound(f"--python {explicit}: does not run; give a working "
                                      "Python interpreter")
        if wanted and not _matches(interp.version, ".".join(wanted.split(".")[:2])):
            raise InterpreterNotFound(
                f"--python {explicit} is Python {interp.version} but the spec asks for "
                f"python={wanted}; give a {wanted} interpreter or change the spec")
        return interp
    if wanted is None:
        pyenv = sorted(_pyenv_candidates(), key=lambda c: _version_key(c[0]))
        paths = [p for _, p in reversed(pyenv)] + _path_candidates("3")
        for path in paths:
            if (interp := probe(path)) is not None:
                return interp
        raise InterpreterNotFound("no Python interpreter found; install one or give --python")

    major_minor = ".".join(wanted.split(".")[:2])
    pyenv = [(v, p) for v, p in _pyenv_candidates() if _matches(v, major_minor)]
    # pyenv folder names are versions: try exact ones first, then newest patch first.
    pyenv.sort(key=lambda c: (not _matches(c[0], wanted), [-n for n in _version_key(c[0])]))
    probed: list[Interpreter] = []
    for _, path in pyenv:
        interp = probe(path)
        if interp is not None and _matches(interp.version, wanted):
            return interp
        if interp is not None:
            probed.append(interp)
    for path in _path_candidates(major_minor):
        interp = probe(path)
        if interp is not None and _matches(interp.version, wanted):
            return interp
        if interp is not None:
            probed.append(interp)
    same_minor = [i for i in probed if i.major_minor == major_minor]
    if same_minor:
        return max(same_minor, key=lambda i: _version_key(i.version))
    raise InterpreterNotFound(
        f"no Python {wanted} interpreter found (looked in {pyenv_root() / 'versions'}/*/bin/python"
        f" and python{major_minor}/python3/python on PATH); install it (e.g. `pyenv install "
        f"{wanted}`) or give --python PATH")
