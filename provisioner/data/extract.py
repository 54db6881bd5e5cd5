"""post_fetch: unpack a verified archive next to it, refusing members that escape the folder.

Every member is checked before anything is written; the archive is unpacked into a hidden
temporary folder and its top-level items are then moved into place. A marker beside the
archive records what was unpacked, so a second fetch does not unpack again.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from .results import DataError
from .sources import remove


def _marker(archive: Path) -> Path:
    return archive.parent / f".{archive.name}.extracted"


def already_extracted(archive: Path) -> list[str] | None:
    """The top-level names a previous unpack of this very archive produced, if all still exist."""
    try:
        record = json.loads(_marker(archive).read_text(encoding="utf-8"))
        stat = archive.stat()
    except (OSError, ValueError):
        return None
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    names = record.get("members", [])
    return names if all((archive.parent / n).exists() for n in names) else None


def extract(archive: Path, operation: str, entry: str) -> list[str]:
    """Unpack `archive` (operation untar or unzip) into its own folder; returns top-level names."""
    dest = archive.parent
    if operation == "untar":
        try:
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                for member in members:
                    _check_tar_member(member, entry)
                staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.unpack-", dir=dest))
                try:
                    tar.extractall(staging, filter="data")
                except BaseException:
                    remove(staging)
                    raise
        except tarfile.TarError as exc:
            raise DataError(f"data entry {entry!r}: expected a tar archive at {archive.name}, "
                            f"found an unreadable one ({exc})", entry) from None
    elif operation == "unzip":
        try:
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _check_name(name, entry)
                staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.unpack-", dir=dest))
                try:
                    zf.extractall(staging)
                except BaseException:
                    remove(staging)
                    raise
        except zipfile.BadZipFile as exc:
            raise DataError(f"data entry {entry!r}: expected a zip archive at {archive.name}, "
                            f"found an unreadable one ({exc})", entry) from None
    else:
        raise DataError(f"data entry {entry!r}: post_fetch operation {operation!r}: expected "
                        "untar or unzip", entry)
    names = sorted(os.listdir(staging))
    try:
        for name in names:
            final = dest / name
            if final.resolve() == archive.resolve():
                continue
            if final.exists() or final.is_symlink():
                remove(final)
            os.rename(staging / name, final)
    finally:
        remove(staging)
    stat = archive.stat()
    _marker(archive).write_text(json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                            "members": names}), encoding="utf-8")
    return names


def _check_name(name: str, entry: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DataError(f"data entry {entry!r}: archive member {name!r} would land outside the "
                        "folder; refusing to unpack this archive", entry)


def _check_tar_member(member: tarfile.TarInfo, entry: str) -> None:
    _check_name(member.name, entry)
    if member.isdev() or member.isfifo():
        raise DataError(f"data entry {entry!r}: archive member {member.name!r} is a device "
                        "or pipe; refusing to unpack this archive", entry)
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
        parts = (base / link).parts
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if link.is_absolute() or depth < 0:
            raise DataError(f"data entry {entry!r}: archive member {member.name!r} links to "
                            f"{member.linkname!r}, outside the folder; refusing to unpack this "
                            "archive", entry)
