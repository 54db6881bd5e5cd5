"""pip/uv installs: `*.dist-info` (RECORD, INSTALLER, METADATA, direct_url.json) and `*.egg-info`.

Every directory on the kernel's sys.path is scanned, so user-site and PYTHONPATH installs count.
Editable installs own their source tree: the directories their `.pth` names, the package dirs an
`__editable__` finder maps, or failing both the project directory of direct_url.json.
"""

from __future__ import annotations

import ast
import csv
import json
import os

from .base import Distribution, Environment, Listing, Scanner, register


def read_headers(path: str) -> dict[str, list[str]]:
    """The RFC 822 header block of a METADATA / PKG-INFO file, as name -> values."""
    try:
        with open(path, encoding="utf-8", errors="replace") as src:
            text = src.read()
    except OSError:
        return {}
    headers: dict[str, list[str]] = {}
    last: list[str] | None = None
    for line in text.split("\n\n", 1)[0].splitlines():
        if line[:1] in (" ", "\t"):
            if last:
                last[-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            last = headers.setdefault(name.strip().lower(), [])
            last.append(value.strip())
    return headers


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as src:
            return src.read()
    except OSError:
        return ""


def _requires_txt(text: str) -> list[str]:
    """Convert an egg-info requires.txt ([extra:marker] sections) to Requires-Dist lines."""
    lines: list[str] = []
    marker = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            extra, _, cond = line[1:-1].partition(":")
            parts = [f"({cond})"] if cond else []
            if extra:
                parts.append(f'extra == "{extra}"')
            marker = " and ".join(parts)
            continue
        lines.append(f"{line}; {marker}" if marker else line)
    return lines


def _pth_dirs(pth: str) -> list[str]:
    """Directories a .pth file adds to sys.path (import lines are code, not paths)."""
    base = os.path.dirname(pth)
    dirs = []
    for line in _read_text(pth).splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "import ", "import\t")):
            dirs.append(os.path.normpath(os.path.join(base, line)))
    return dirs


def _finder_paths(finder: str) -> list[str]:
    """The package paths a setuptools `__editable___*_finder.py` maps (its MAPPING dict)."""
    try:
        tree = ast.parse(_read_text(finder))
    except SyntaxError:
        return []
    for node in tree.body:
        if not isinstance(node, (ast.AnnAssign, ast.Assign)):
            continue
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if len(node.targets) == 1 else None)
        if getattr(target, "id", None) == "MAPPING" and node.value is not None:
            try:
                mapping = ast.literal_eval(node.value)
            except ValueError:
                return []
            return [os.path.normpath(p) for p in mapping.values() if isinstance(p, str)]
    return []


def _record_paths(record: str) -> list[str]:
    try:
        with open(record, encoding="utf-8", errors="replace", newline="") as src:
            return [row[0] for row in csv.reader(src) if row and row[0]]
    except OSError:
        return []


def dist_info_listing(site: str, path: str) -> Listing | None:
    """One `*.dist-info` dir; None when it has no usable METADATA."""
    headers = read_headers(os.path.join(path, "METADATA"))
    if not headers.get("name") or not headers.get("version"):
        return None
    direct_url = None
    text = _read_text(os.path.join(path, "direct_url.json"))
    if text:
        try:
            direct_url = json.loads(text)
        except ValueError:
            direct_url = None
    dist = Distribution(
        name=headers["name"][0], version=headers["version"][0], kind="pip",
        installer=_read_text(os.path.join(path, "INSTALLER")).strip(), location=path,
        requires=tuple(headers.get("requires-dist", ())), direct_url=direct_url,
    )
    files = _record_paths(os.path.join(path, "RECORD"))
    roots: list[str] = []
    if dist.editable:
        for rel in files:
            full = os.path.normpath(os.path.join(site, rel))
            if rel.endswith(".pth"):
                roots += _pth_dirs(full)
            elif os.path.basename(rel).startswith("__editable__") and rel.endswith("finder.py"):
                roots += _finder_paths(full)
        # The finder's own module is the dist's machinery, not a source root.
        roots = [r for r in roots if os.path.normpath(r) != os.path.normpath(site)]
        if not roots:
            roots.append(dist.source_dir() or path)
    return Listing(dist, base=site, files=files, metadata_dir=path, roots=roots)


def egg_info_listing(site: str, path: str) -> Listing | None:
    """One `*.egg-info` dir or file, best effort: installed-files.txt, else top_level.txt."""
    is_dir = os.path.isdir(path)
    headers = read_headers(os.path.join(path, "PKG-INFO") if is_dir else path)
    if not headers.get("name") or not headers.get("version"):
        return None
    requires = _requires_txt(_read_text(os.path.join(path, "requires.txt"))) if is_dir else []
    dist = Distribution(
        name=headers["name"][0], version=headers["version"][0], kind="pip",
        installer=_read_text(os.path.join(path, "INSTALLER")).strip() if is_dir else "",
        location=path, requires=tuple(requires), direct_url=None,
    )
    files: list[str] = []
    roots: list[str] = []
    if is_dir:
        rel_dir = os.path.basename(path)
        listed = _read_text(os.path.join(path, "installed-files.txt")).splitlines()
        files = [os.path.normpath(os.path.join(rel_dir, line)) for line in listed if line.strip()]
        if not files:
            for top in _read_text(os.path.join(path, "top_level.txt")).split():
                roots += [os.path.join(site, top), os.path.join(site, top + ".py")]
    return Listing(dist, base=site, files=files, metadata_dir=path if is_dir else None,
                   roots=roots)


@register
class PipScanner(Scanner):
    """Distributions installed by pip, uv and other wheel installers, on any sys.path dir."""

    name = "pip"

    def scan(self, env: Environment) -> list[Listing]:
        listings: list[Listing] = []
        seen: set[str] = set()
        for site in env.paths:
            try:
                names = sorted(os.listdir(site))
            except OSError:  # missing dir or a zip file
                continue
            for name in names:
                if not name.endswith((".dist-info", ".egg-info")):
                    continue
                path = os.path.join(site, name)
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                if name.endswith(".dist-info"):
                    listing = dist_info_listing(site, path)
                else:
                    listing = egg_info_listing(site, path)
                if listing:
                    listings.append(listing)
        return listings
