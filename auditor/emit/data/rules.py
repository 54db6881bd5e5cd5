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
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from ...resolve import EnvIndex

# Never data: pseudo filesystems and the system itself (system files are software).
SYSTEM_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/", "/etc/", "/usr/", "/lib/", "/lib32/",
                   "/lib64/", "/libx32/", "/bin/", "/sbin/", "/var/lib/", "/var/cache/",
                   "/var/run/", "/snap/")
# Caches and tool configuration, relative to HOME, and their usual environment overrides.
HOME_TOOL_DIRS = (".cache", ".config", ".ipython", ".jupyter", ".local/share/jupyter",
                  ".matplotlib", ".keras", ".dask", ".conda", ".condarc", ".npm", ".pyenv",
                  ".local/lib", ".local/bin", ".python_history", ".bash_history")
# The kernel side records these from the kernel's environment (kernels/flo_interpreter.py).
TOOL_ENV_DIRS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "IPYTHONDIR",
                 "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                 "JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "NUMBA_CACHE_DIR",
                 "PYTHONPYCACHEPREFIX")
# Secrets: never listed, copied or hashed; flagged so the user provides them at run time.
SECRET_HOME_PATHS = (".ssh/", ".aws/credentials", ".aws/config", ".netrc", ".git-credentials",
                     ".kube/config", ".pgpass", ".docker/config.json", ".pypirc",
                     ".config/gcloud/", ".azure/", ".gnupg/", ".jupyter/runtime/")
SECRET_NAME_PATTERNS = ("*.pem", "*.key", "*.p12", "*.pfx", "*.keytab", "id_rsa*",
                        "id_dsa*", "id_ecdsa*", "id_ed25519*", ".env", ".env.*", "*.env",
                        "token", ".token", "*.token", "*_token", "*-token", "token.json",
                        "token.txt", "*passwd*", "*password*", "*secret*", "credentials",
                        "credentials.json", "jupyter_cookie_secret")
#: The patterns as one regex (fnmatch's own translation, ORed): one match a path.
_SECRET_NAME = re.compile("|".join(fnmatch.translate(p) for p in SECRET_NAME_PATTERNS))
# flo-backpack's own temporary folders (record, kernel connection file, downloads).
FLO_TEMP_PREFIXES = ("flo-audit-", "flo-kernel-", "flo-derive-", "flo-fetch-")

CODE_SUFFIXES = (".py", ".pyc", ".pyx", ".so", ".ipynb")
PORTS = {"http": 80, "https": 443}
SECRET_NOTE = "read by the notebook, not packed: provide it at run time"
SIGNED_URL_NOTE = ("credentials removed from the URL the notebook read: supply a fresh signed "
                   "URL or the credentials at run time")
UNREAD_URL_NOTE = "requested but not read: not in data.yml"

# The value the kernel side writes in place of a credential found in a URL
# (kernels/flo_net.py, REDACTED): the record never holds the credential itself.
REDACTED = "FLO-REDACTED"
# Signing schemes whose other parameters mean nothing once the signature is gone.
_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_AZURE_SAS = frozenset(("sv", "ss", "srt", "sp", "se", "st", "spr", "sip", "sr", "si", "sdd",
                        "skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid",
                        "rscc", "rscd", "rsce", "rscl", "rsct"))
_LEGACY_SIGNED = frozenset(("expires", "awsaccesskeyid", "googleaccessid"))
ABSOLUTE_NOTE = "absolute path: make this portable"

Owned = Callable[[str, "str | None"], bool]


class DataRules:
    """Which paths can be data at all: the static part of rule 8, for one kernel's HOME."""

    def __init__(self, home: str | None = None, ignore: Iterable[str] = (),
                 environ: Mapping[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        self.home = (home or environ.get("HOME") or os.path.expanduser("~")).rstrip("/")
        tool_dirs = [os.path.join(self.home, d) for d in HOME_TOOL_DIRS]
        tool_dirs += [d for v in TOOL_ENV_DIRS for d in (environ.get(v) or "").split(os.pathsep)
                      if d.startswith("/") and d.rstrip("/")]
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
        return _SECRET_NAME.match(os.path.basename(path).lower()) is not None

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


def environment_owner(index: EnvIndex, notebook_dir: str) -> Owned:
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




def strip_credentials(url: str) -> tuple[str, list[str]]:
    """`url` without the credentials the kernel side redacted, nor the signing parameters that
    go with them (X-Amz-*, X-Goog-*, an Azure SAS); and the names of what was removed, in URL
    order ("password" for one before the host). Unchanged, [] when nothing was redacted."""
    if REDACTED not in url:
        return url, []
    parts = urlsplit(url)
    pairs = [item.partition("=") for item in parts.query.split("&") if item]
    redacted = {name.lower() for name, _, value in pairs if value == REDACTED}
    signed = tuple(p for p in _SIGNING_PREFIXES if any(n.startswith(p) for n in redacted))
    sas = "sig" in redacted
    legacy = "signature" in redacted

    def drop(name: str) -> bool:
        key = name.lower()
        return (key in redacted or key.startswith(signed) or (sas and key in _AZURE_SAS)
                or (legacy and key in _LEGACY_SIGNED))

    removed = [name for name, _, _ in pairs if drop(name)]
    query = "&".join(n + e + v for n, e, v in pairs if not drop(n))
    netloc = parts.netloc
    if "@" in netloc and REDACTED in netloc.rpartition("@")[0]:
        netloc = netloc.rpartition("@")[0].split(":", 1)[0] + "@" + netloc.rpartition("@")[2]
        removed.insert(0, "password")
    fragment = "" if REDACTED in parts.fragment else parts.fragment
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment)), removed
