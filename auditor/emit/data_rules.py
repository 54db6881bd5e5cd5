"""Which paths can be data at all, which are secrets, and which endpoints are remote.

The static part of DESIGN.md rule 8, for one kernel's HOME: the drafter (data.py) applies it
to what the run touched.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Never data: pseudo filesystems and the system itself (system files are software).
SYSTEM_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/", "/etc/", "/usr/", "/lib/", "/lib32/",
                   "/lib64/", "/libx32/", "/bin/", "/sbin/", "/var/lib/", "/var/cache/",
                   "/var/run/", "/snap/")
# Caches and tool configuration, relative to HOME, and their usual environment overrides.
HOME_TOOL_DIRS = (".cache", ".config", ".ipython", ".jupyter", ".local/share/jupyter",
                  ".matplotlib", ".keras", ".dask", ".conda", ".condarc", ".npm", ".pyenv",
                  ".local/lib", ".local/bin", ".python_history", ".bash_history")
TOOL_ENV_DIRS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "IPYTHONDIR",
                 "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                 "NUMBA_CACHE_DIR", "PYTHONPYCACHEPREFIX")
# Secrets: never listed, copied or hashed; flagged so the user provides them at run time.
SECRET_HOME_PATHS = (".ssh/", ".aws/credentials", ".aws/config", ".netrc", ".git-credentials",
                     ".kube/config", ".pgpass", ".docker/config.json", ".pypirc",
                     ".config/gcloud/", ".azure/", ".gnupg/", ".jupyter/runtime/")
SECRET_NAME_PATTERNS = ("*.pem", "*.key", "*.p12", "*.pfx", "*.keytab", "id_rsa*",
                        "id_dsa*", "id_ecdsa*", "id_ed25519*", ".env", ".env.*", "*.env",
                        "token", ".token", "*.token", "*_token", "*-token", "token.json",
                        "token.txt", "*passwd*", "*password*", "*secret*", "credentials",
                        "credentials.json", "jupyter_cookie_secret")
# flo-backpack's own temporary folders (record, kernel connection file, downloads).
FLO_TEMP_PREFIXES = ("flo-audit-", "flo-kernel-", "flo-derive-", "flo-fetch-")

CODE_SUFFIXES = (".py", ".pyc", ".pyx", ".so", ".ipynb")
PORTS = {"http": 80, "https": 443}
SECRET_NOTE = "read by the notebook, not packed: provide it at run time"
ABSOLUTE_NOTE = "absolute path: make this portable"

Owned = Callable[[str, "str | None"], bool]


class DataRules:
    """Which paths can be data at all: the static part of rule 8, for one kernel's HOME."""

    def __init__(self, home: str | None = None, ignore: Iterable[str] = (),
                 environ: Mapping[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        self.home = (home or environ.get("HOME") or os.path.expanduser("~")).rstrip("/")
        tool_dirs = [os.path.join(self.home, d) for d in HOME_TOOL_DIRS]
        tool_dirs += [environ[v] for v in TOOL_ENV_DIRS if environ.get(v)]
        self.system = tuple(p.rstrip("/") + "/" for p in ignore) + SYSTEM_PREFIXES
        self.tools = tuple(p.rstrip("/") + "/" for p in tool_dirs)
        self.tools_exact = frozenset(p.rstrip("/") for p in tool_dirs)
        temp_dirs = {tempfile.gettempdir().rstrip("/"), "/tmp", "/var/tmp"}
        self.temp = tuple(sorted(t + "/" for t in temp_dirs))
        self._flo_temp = re.compile("|".join(re.escape(t) + "(?:" + "|".join(FLO_TEMP_PREFIXES)
                                             + ")" for t in self.temp))

    def is_secret(self, path: str) -> bool:
        rel = path[len(self.home) + 1:] if path.startswith(self.home + "/") else None
        if rel is not None and any(rel == s.rstrip("/") or rel.startswith(s)
                                   for s in SECRET_HOME_PATHS):
            return True
        name = os.path.basename(path).lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_NAME_PATTERNS)

    def is_system(self, path: str) -> bool:
        """The system, pseudo filesystems, flo-backpack's own code and temporary folders."""
        return path.startswith(self.system) or bool(self._flo_temp.match(path))

    def is_tool_state(self, path: str) -> bool:
        """Caches and tool configuration (checked after secrets: ~/.config holds some)."""
        return (path.startswith(self.tools) or path in self.tools_exact
                or "/__pycache__/" in path or path.endswith(".pyc"))

    def never_data(self, path: str) -> bool:
        return self.is_system(path) or self.is_tool_state(path)

    def is_temp(self, path: str) -> bool:
        return path.startswith(self.temp)


def environment_owner(index: Any, notebook_dir: str) -> Owned:
    """`owned(path, real)` from an EnvIndex: a distribution or the stdlib owns the path, or it
    lies inside the environment. Data in the notebook's folder that an editable project
    happens to contain is not owned (the resolver makes the same exception)."""
    root = os.path.normpath(notebook_dir).rstrip("/") + "/"

    def owned(path: str, real: str | None) -> bool:
        found = index.owner(path, real)
        if found is not None:
            return not (found.editable and path.startswith(root)
                        and not path.endswith(CODE_SUFFIXES))
        return bool(index.in_environment(path) or (real and index.in_environment(real)))
    return owned


def is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback or (mapped or address).is_unspecified)


def normalize_url(url: str) -> str | None:
    """Scheme and host lower-cased, default port and fragment dropped; None if not a URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != PORTS.get(scheme):
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


