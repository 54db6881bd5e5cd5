"""flo-backpack's kernel side, interpreter part: what the kernel's Python is and what it loads.

Loaded by flo_kernel.attach, by path like it; stdlib only, CPython 3.8 to 3.13. Builds the
`kernel` record (the interpreter, its paths, environment markers, tool folders, the modules
loaded so far) and finds which modules a cell imported. None of it runs on the audit hook's
hot path: the record is written once at attach, imports once per cell.
"""

from __future__ import annotations

import ast
import os
import platform
import sys
import sysconfig

# Environment variables naming cache and tool configuration folders (their paths only are
# recorded). Keep in sync with auditor/emit/data/rules.py (TOOL_ENV_DIRS).
TOOL_ENV_DIRS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "IPYTHONDIR",
                 "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                 "JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "NUMBA_CACHE_DIR",
                 "PYTHONPYCACHEPREFIX")


def kernel_record(url_status=False):
    """The `kernel` record's fields: the interpreter, its paths, HOME, the tool folders set in
    the environment, and whether URL responses are logged (`response` records)."""
    stdlib = []
    for name in ("stdlib", "platstdlib"):
        path = sysconfig.get_path(name)
        if path and path not in stdlib:
            stdlib.append(path)
    modules = set()
    for module in list(sys.modules.values()):
        path = module_file(module)
        if path:
            modules.add(path)
    return {
        "executable": sys.executable,
        "version": platform.python_version(),
        "prefix": sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "path": list(sys.path),
        "stdlib": stdlib,
        "purelib": sysconfig.get_path("purelib"),
        "platlib": sysconfig.get_path("platlib"),
        "markers": _marker_environment(),
        "cwd": os.getcwd(),
        "home": os.path.expanduser("~"),
        "tool_dirs": {name: _abspaths(os.environ[name]) for name in TOOL_ENV_DIRS
                      if os.environ.get(name)},
        "url_status": url_status,
        "modules": sorted(modules),
    }


def module_file(module):
    """The file a module was loaded from (`__file__`, else its first `__path__` entry).

    Reads the module's __dict__ directly: attribute access on a lazily loaded module
    (importlib.util.LazyLoader) would load it, changing what the notebook does.
    """
    try:
        namespace = object.__getattribute__(module, "__dict__")
    except Exception:
        return None
    try:
        path = namespace.get("__file__")
        if isinstance(path, str) and path:
            return os.path.abspath(path)
        search = namespace.get("__path__")
        if search is not None:
            for entry in search:
                if isinstance(entry, str) and entry:
                    return os.path.abspath(entry)
                break
    except Exception:
        pass
    return None


def imported_names(shell, raw_cell, depth=0):
    """Absolute module names the cell's import statements name, in source order.

    `from a import b` yields "a" and "a.b" (b may be a submodule; the caller keeps only names
    present in sys.modules). Relative imports are skipped: they name local code by position.
    Magics are transformed to Python first; the text given to a magic (`%%time` bodies,
    `%time import x`) is searched too, since such magics run it as Python.
    """
    if "import" not in raw_cell:  # every form found below spells it: no parse needed
        return []
    source = raw_cell
    try:
        source = shell.transform_cell(raw_cell)
    except Exception:
        pass
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
            names.extend(node.module + "." + alias.name for alias in node.names
                         if alias.name != "*")
        elif (isinstance(node, ast.Call) and depth < 3
              and getattr(node.func, "attr", None) in ("run_cell_magic", "run_line_magic")):
            for arg in node.args[1:]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value:
                    names.extend(imported_names(shell, arg.value, depth + 1))
    seen = set()
    return [n for n in names if not (n in seen or seen.add(n))]


def _marker_environment():
    """The PEP 508 environment markers of this interpreter, computed as `packaging` does."""
    version = sys.implementation.version
    implementation_version = f"{version.major}.{version.minor}.{version.micro}"
    if version.releaselevel != "final":
        implementation_version += version.releaselevel[0] + str(version.serial)
    if hasattr(os, "uname"):
        uname = os.uname()
        machine, release, system, os_version = (uname.machine, uname.release, uname.sysname,
                                                uname.version)
    else:
        machine, release = platform.machine(), platform.release()
        system, os_version = platform.system(), platform.version()
    return {
        "implementation_name": sys.implementation.name,
        "implementation_version": implementation_version,
        "os_name": os.name,
        "platform_machine": machine,
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": release,
        "platform_system": system,
        "platform_version": os_version,
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def _abspaths(value):
    """A folder (or os.pathsep-separated folders) made absolute against the kernel's cwd."""
    return os.pathsep.join(os.path.abspath(p) for p in value.split(os.pathsep) if p)
