"""Where data comes from: one class per `source_type`, behind one small base and one registry.

A source does two things: `check()` before any work (a local source that is missing fails
here, before anything is copied or downloaded), and `stage(target, ctx)`, which puts the content
at a temporary path next to `target` and returns it. The caller verifies the staged content and
renames it into place; a source never writes under the target's own name.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar
from urllib.parse import unquote, urlparse

from auditor.backpack.data import DataEntry, DataPolicy

from .download import ByteProgress, Cancelled, DownloadError, download, pause
from .results import DataError


@dataclass
class StageContext:
    policy: DataPolicy
    progress: ByteProgress | None = None
    cancel: threading.Event | None = None
    fresh: bool = False  # ignore any partial download and start over
    #: Where partial downloads outlive the run folder (flo-run BP: SCRATCH/downloads), so the
    #: next run resumes them; None: beside the target (a `fetch --run-dir` folder is kept).
    partials: Path | None = None


@dataclass
class Staged:
    path: Path
    resumed: bool = False  # continued a partial download: a bad checksum earns one fresh try


def temp_name(target: Path, tag: str = "tmp") -> Path:
    """A hidden sibling of `target`: same filesystem (rename is atomic), never its name."""
    return target.parent / f".{target.name}.flo-{tag}-{uuid.uuid4().hex[:8]}"


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class Source:
    """Base class: bookkeeping shared by every source type."""

    kind: ClassVar[str] = ""
    remote: ClassVar[bool] = False

    def __init__(self, entry: DataEntry, backpack: Path) -> None:
        self.entry = entry
        self.backpack = backpack

    def fail(self, what: str) -> DataError:
        return DataError(f"data entry {self.entry.name!r} ({self.entry.source_type} "
                         f"{self.entry.source}): {what}", self.entry.name)

    def local_path(self) -> Path | None:
        """The content as a local path, for sources that have one (verify reads it there)."""
        return None

    def check(self) -> None:
        """Cheap existence check before any work; remote sources are checked by fetching."""
        path = self.local_path()
        if path is not None and not path.exists():
            raise self.fail(f"expected the source to exist, found no file or folder at {path}")

    def stage(self, target: Path, ctx: StageContext) -> Staged:
        raise NotImplementedError


# Linux's FICLONE ioctl: a copy-on-write clone of a whole file (btrfs, xfs, ...), instant.
_FICLONE = 0x40049409


def clone_or_copy(src: str, dst: str) -> None:
    """Copy `src` to `dst`: a copy-on-write clone where the filesystem can make one, else a
    plain copy. Never a hard link: a notebook that appends to or rewrites its input in the run
    folder must not change the original (or the backpack's copy)."""
    try:
        with open(src, "rb") as source, open(dst, "wb") as target:
            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
        shutil.copystat(src, dst)
    except OSError:  # no clones on this filesystem (ext4, tmpfs) or across filesystems
        shutil.copy2(src, dst)


class LocalSource(Source):
    """A file or folder on this machine, copied into the run folder (cloned where it can)."""

    def stage(self, target: Path, ctx: StageContext) -> Staged:
        source = self.local_path()
        assert source is not None
        self.check()
        tmp = temp_name(target)
        done = 0

        def copy(src: str, dst: str) -> None:
            nonlocal done
            if ctx.cancel is not None and ctx.cancel.is_set():
                raise Cancelled("cancelled")
            clone_or_copy(src, dst)
            done += os.stat(dst).st_size
            if ctx.progress:
                ctx.progress(done, self.entry.expected_size)

        try:
            if source.is_dir():
                shutil.copytree(source, tmp, copy_function=copy)
            else:
                copy(str(source), str(tmp))
        except BaseException:
            remove(tmp)
            raise
        return Staged(tmp)


class BackpackSource(LocalSource):
    """A path inside the backpack folder, e.g. data/measurements.csv."""

    kind = "backpack"

    def local_path(self) -> Path:
        relative = self.entry.source.removeprefix("backpack://")
        root = self.backpack.resolve()
        path = (root / relative).resolve()
        if os.path.isabs(relative) or not path.is_relative_to(root):
            raise self.fail("expected a path inside the backpack folder "
                            f"(like data/x.csv), found {relative!r}")
        return path


class FsSource(LocalSource):
    """A path on this machine's filesystem (absolute; relative is taken from the backpack)."""

    kind = "fs"

    def local_path(self) -> Path:
        path = Path(self.entry.source).expanduser()
        return path if path.is_absolute() else self.backpack / path


class FileUrlSource(LocalSource):
    """A file:// URL: a local path written as a URL."""

    kind = "file"

    def local_path(self) -> Path:
        parsed = urlparse(self.entry.source)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise self.fail("expected a file:///absolute/path URL")
        return Path(unquote(parsed.path))


class HttpSource(Source):
    """http:// and https://: downloaded into a hidden `.part` next to the target."""

    kind = "http"
    remote = True

    def stage(self, target: Path, ctx: StageContext) -> Staged:
        if ctx.partials is None:
            return self._download(target.parent / f".{target.name}.part", ctx)
        # One .part per URL in the shared folder, held under a lock by one run at a time; a
        # finished one is moved out (to a hidden name beside the target) before the lock goes.
        ctx.partials.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(self.entry.source.encode()).hexdigest()[:32]
        part = ctx.partials / f"{key}.part"
        with open(ctx.partials / f"{key}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            staged = self._download(part, ctx)
            mine = temp_name(target, "download")
            shutil.move(part, mine)  # a rename when the two share a filesystem
            return Staged(mine, staged.resumed)

    def _download(self, part: Path, ctx: StageContext) -> Staged:
        if ctx.fresh:
            part.unlink(missing_ok=True)
        try:
            done = download(self.entry.source, part, policy=ctx.policy,
                            expected_size=self.entry.expected_size, progress=ctx.progress,
                            cancel=ctx.cancel)
        except DownloadError as exc:
            if not exc.transient:
                part.unlink(missing_ok=True)
            raise self.fail(str(exc)) from None
        return Staged(part, resumed=done.resumed_from > 0)


class S3Source(Source):
    """s3://bucket/key (one object) or s3://bucket/prefix/ (a folder) through fsspec + s3fs.

    s3fs is optional: only needed when an entry uses s3. Where the service is and how to sign
    come from the entry's `storage_options` (handed to s3fs: endpoint_url, anon, ...) and the
    standard AWS environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...).
    Not resumable: a failed or cancelled attempt removes what it staged.
    """

    kind = "s3"
    remote = True

    def _filesystem(self):  # noqa: ANN202 (fsspec type, imported lazily)
        try:
            import fsspec
            import s3fs  # noqa: F401  (fsspec finds it by protocol)
        except ImportError:
            raise self.fail("s3 sources need s3fs: pip install s3fs") from None
        # A fresh instance: fsspec's cache would keep an endpoint or listing from earlier.
        return fsspec.filesystem("s3", skip_instance_cache=True,
                                 **(self.entry.storage_options or {}))

    def stage(self, target: Path, ctx: StageContext) -> Staged:
        fs = self._filesystem()
        tmp = temp_name(target)
        last: Exception | None = None
        for attempt in range(ctx.policy.attempts):
            try:
                if attempt:
                    pause(ctx.policy.backoff * 2 ** (attempt - 1), ctx.cancel)
                self._copy(fs, tmp, ctx)
                return Staged(tmp)
            except FileNotFoundError:
                remove(tmp)
                raise self.fail("expected the object (or a folder of objects) to exist, "
                                "found none") from None
            except PermissionError:
                remove(tmp)
                raise self.fail("access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                                "or AWS_PROFILE, or give storage_options: {anon: true} for a "
                                "public bucket") from None
            except BaseException as exc:
                remove(tmp)
                if not isinstance(exc, Exception) or isinstance(exc, (Cancelled, DataError)):
                    raise
                if type(exc).__name__ == "NoCredentialsError":  # botocore's, not imported here
                    raise self.fail("no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give "
                                    "storage_options: {anon: true} for a public bucket") from None
                last = exc  # s3fs raises botocore/aiohttp errors of many kinds
        raise self.fail(f"download failed after {ctx.policy.attempts} attempts: {last}")

    def _copy(self, fs, tmp: Path, ctx: StageContext) -> None:  # noqa: ANN001
        source = self.entry.source
        if not fs.isdir(source):
            _copy_stream(fs.open(source, "rb"), tmp, ctx, 0, self.entry.expected_size)
            return
        root = fs._strip_protocol(source).rstrip("/")
        keys = [k for k in fs.find(root) if not k.endswith("/")]
        if not keys:
            raise FileNotFoundError(source)
        tmp.mkdir()
        done = 0
        for key in sorted(keys):
            relative = PurePosixPath(key[len(root) + 1:])
            if not key.startswith(root + "/") or ".." in relative.parts:
                raise self.fail(f"object {key!r} would land outside the folder; expected keys "
                                f"under {root}/ without '..'")
            out = tmp.joinpath(*relative.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            done = _copy_stream(fs.open(key, "rb"), out, ctx, done, self.entry.expected_size)


def _copy_stream(stream, out: Path, ctx: StageContext, done: int,  # noqa: ANN001
                 total: int | None) -> int:
    """Copy one open object into `out` in 1 MiB chunks; returns the running byte count."""
    with stream as src, open(out, "wb") as sink:
        while chunk := src.read(1 << 20):
            if ctx.cancel is not None and ctx.cancel.is_set():
                raise Cancelled("cancelled")
            sink.write(chunk)
            done += len(chunk)
            if ctx.progress:
                ctx.progress(done, total)
    return done


SOURCES: dict[str, Callable[[DataEntry, Path], Source]] = {
    "backpack": BackpackSource, "fs": FsSource, "file": FileUrlSource,
    "http": HttpSource, "https": HttpSource, "s3": S3Source,
}


def get_source(entry: DataEntry, backpack: Path) -> Source:
    """The source object for an entry, found by its `source_type`."""
    try:
        return SOURCES[entry.source_type](entry, backpack)
    except KeyError:
        raise DataError(f"data entry {entry.name!r}: source_type {entry.source_type!r} is not "
                        f"supported; expected one of {', '.join(SOURCES)}", entry.name) from None
