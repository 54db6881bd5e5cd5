"""Module name -> the distribution that provides it, for names read from a cell's source.

The run's own imports are resolved by path (DESIGN.md rule 4); a name that only appears in the
source has no path yet, so it is looked for the way the import system would: in the kernel's
sys.path entries, in order, and the file found goes through the same index.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from .index import EnvIndex

#: What `owner` returns for a name nothing on the kernel's path provides.
NOT_FOUND = "not installed"
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)


@dataclass
class ModuleOwners:
    """Finds the owner of modules on `search_path` (the kernel's sys.path): the deepest part
    of a dotted name that exists decides (`jaraco.functools`, not the shared `jaraco/`)."""

    index: EnvIndex
    search_path: Iterable[str]
    notebook_dir: str
    _memo: dict[str, str | None] = field(default_factory=dict)
    # Each folder's extension modules by name, listed once: a glob per module lists the
    # whole folder again, and N names looked up in a folder of N modules is N^2 (bench/growth.py
    # --only imports).
    _extensions: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def owner(self, module: str) -> str | None:
        """The distribution's name; None for the stdlib and the notebook's own modules;
        NOT_FOUND when no sys.path entry holds it."""
        if module not in self._memo:
            self._memo[module] = self._find(module)
        return self._memo[module]

    def _find(self, module: str) -> str | None:
        parts = module.split(".")
        top = parts[0]
        for entry in self.search_path:
            if not entry or not os.path.isdir(entry):
                continue
            paths: list[str] = []
            for depth in range(len(parts), 0, -1):
                paths = self._candidates(entry, os.path.join(*parts[:depth]))
                if paths:
                    break
            for path in paths:
                found = self.index.owner(path)
                if found is not None and found.dist is not None and not found.excluded:
                    return str(found.dist.name)
                if found is not None and found.stdlib:
                    return None
                if path.startswith(os.path.normpath(self.notebook_dir) + os.sep):
                    return None  # the workflow's own helper module
        return None if top in _STDLIB else NOT_FOUND

    def _candidates(self, entry: str, relative: str) -> list[str]:
        package = os.path.join(entry, relative)
        found = [p for p in (os.path.join(package, "__init__.py"), package + ".py")
                 if os.path.isfile(p)]
        folder, base = os.path.split(package)
        found += [os.path.join(folder, name) for name in self._extensions_in(folder).get(base, ())]
        if not found and os.path.isdir(package):  # a namespace package: any module in it
            found = sorted(glob.glob(os.path.join(glob.escape(package), "**", "*.py"),
                                     recursive=True))[:1]
        return found

    def _extensions_in(self, folder: str) -> dict[str, list[str]]:
        """`name.<tag>.so` files (`_json.cpython-311-x86_64-linux-gnu.so`) by module name."""
        if folder not in self._extensions:
            by_name: dict[str, list[str]] = {}
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            for name in names:
                module, dot, tag = name.partition(".")
                if dot and tag.endswith(".so"):
                    by_name.setdefault(module, []).append(name)
            self._extensions[folder] = by_name
        return self._extensions[folder]
