"""Which URLs the run actually read: the kernel side's `response` records (status, redirect
location) joined to the URLs it requested.

A URL counts as read when it answered 2xx, or redirected (3xx, any number of hops) to one
that did; it is then listed once, under the URL the notebook asked for: fetching follows
redirects, so the redirect's target is not listed beside it. A URL that answered 4xx/5xx, or
never answered (no connection), was not read, and is not listed.

`draft_remote` turns the URLs the run requested into data.yml entries (and lists the
connections no URL explains) for `DataCollector.draft`. A URL on a port that a process of the
run accepted connections on (a loopback HTTP server the notebook started) was served by the
run: it exists only while the notebook runs, so it is reported, never fetched; the files that
server read are inputs like any others.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...backpack.data import DataEntry
from ...record.hooks import HOOK_LOG, read_hook_log
from .draft import DataDraft, PathUse, entry_name
from .hashing import Progress, checksum_url
from .rules import PORTS, is_local, normalize_url, strip_credentials

#: (the URL's first use, its file name) -> (target relative to the notebook, unpack op or None)
SavedCopy = Callable[[PathUse, str], "tuple[str, str | None] | None"]

_MAX_HOPS = 20


class UrlOutcomes:
    """The responses seen per URL; `None` responses: not recorded (read everything as read)."""

    def __init__(self, responses: Iterable[Mapping[str, Any]] | None) -> None:
        self.recorded = responses is not None
        self.statuses: dict[str, list[tuple[int, str | None]]] = {}
        for record in responses or ():
            url = normalize_url(str(record.get("url") or ""))
            status = record.get("status")
            if url is None or not isinstance(status, int):
                continue
            location = normalize_url(str(record.get("location") or "")) or None
            self.statuses.setdefault(url, []).append((status, location))
        self.targets = {loc for answers in self.statuses.values()
                        for status, loc in answers if loc and 300 <= status < 400}

    def read(self, url: str) -> bool:
        """Whether `url` (normalized) was read: 2xx, or redirected to a URL that was."""
        if not self.recorded:
            return True
        return any(200 <= status < 300 for status, _ in self._answers_along(url))

    def followed(self, url: str, asked: Iterable[str]) -> bool:
        """Whether `url` is only the target of a redirect from another URL that was read."""
        return url in self.targets and any(
            other != url and self.read(other) and self._reaches(other, url) for other in asked)

    def why_not(self, url: str) -> str:
        """Why `url` does not count as read, for the report."""
        answers = self.statuses.get(url)
        if not answers:
            return "no answer (the connection failed or the request was never completed)"
        return "answered HTTP " + ", ".join(str(status) for status, _ in answers)

    def _reaches(self, start: str, target: str) -> bool:
        return any(location == target and 300 <= status < 400
                   for status, location in self._answers_along(start))

    def _answers_along(self, start: str) -> Iterator[tuple[int, str | None]]:
        """Every answer on the redirect chains from `start` (a bounded walk, loops cut)."""
        seen: set[str] = set()
        todo = [start]
        while todo and len(seen) < _MAX_HOPS:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            for status, location in self.statuses.get(current, ()):
                yield status, location
                if location and 300 <= status < 400:
                    todo.append(location)

def read_responses(record_dir: str | Path, kernel: Mapping[str, Any]) -> list[dict] | None:
    """The `response` records of a record's hooks.jsonl; None when the kernel side did not log
    responses (a record made before it did: every requested URL then counts as read)."""
    if not kernel.get("url_status"):
        return None
    if not (Path(record_dir) / HOOK_LOG).exists():
        return None  # (read_hook_log reads a missing log as empty)
    try:
        return list(read_hook_log(Path(record_dir), ("response",)))
    except OSError:
        return None


def draft_remote(draft: DataDraft, firsts: Mapping[str, PathUse | None],
                 connects: Mapping[str, str | None], outcomes: UrlOutcomes,
                 role_of: Callable[[int], str], names: set[str], progress: Progress | None,
                 checksum_remote: bool,
                 saved_copy: SavedCopy | None = None,
                 served: Collection[tuple[str, str]] = ()) -> None:
    """Add the URLs the run read to `draft` as inputs (unread ones, and connections to hosts
    no URL names, to its report lists). `firsts`: URL -> its first use that counts, or None;
    `connects`: "ip:port" -> the host name looked up for it; `saved_copy(use, name)`: where
    the notebook saved the download and how to unpack it, if it did; `served`: the
    (ip, port) pairs a process of the run accepted connections on."""
    reached: set[tuple[str, str]] = set()
    asked = {url for url, use in firsts.items() if use}
    listed: dict[str, DataEntry] = {}
    for url, use in sorted(firsts.items()):
        parts = urlsplit(url)
        if use is None or parts.scheme not in ("http", "https"):
            continue
        port = str(parts.port or PORTS[parts.scheme])
        reached.add(((parts.hostname or "").lower(), port))
        if _served_by_run(parts.hostname or "", port, served):
            draft.served_urls.append(strip_credentials(url)[0])
            continue
        if not outcomes.read(url):
            draft.unread_urls.append((strip_credentials(url)[0], outcomes.why_not(url)))
            continue
        source, credentials = strip_credentials(url)
        if outcomes.followed(url, asked):
            continue  # reached through a redirect
        if (same := listed.get(source)) is not None:  # the same URL, signed or not
            if credentials:
                same.credentials = sorted({*(same.credentials or ()), *credentials})
            continue
        base = parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.hostname or "download"
        entry = DataEntry(name=entry_name(base, names), source_type=parts.scheme,
                          source=source, target_location=base, read_by=role_of(use.pid),
                          first_cell=use.cell, credentials=credentials or None)
        if saved_copy is not None and (copy := saved_copy(use, base)) is not None:
            entry.target_location, unpack = copy
            if unpack:
                entry.post_fetch = {"operation": unpack}
        if checksum_remote and credentials:
            draft.warnings.append(f"{source}: not downloaded to checksum it (read with "
                                  "credentials that are not kept); listed without checksum")
        elif checksum_remote:
            try:
                entry.expected_size, entry.checksum = checksum_url(url, progress=progress)
            except (OSError, ValueError) as exc:
                draft.warnings.append(f"{url}: could not be downloaded to checksum it "
                                      f"({exc}); listed without checksum")
        listed[source] = entry
        draft.inputs.append(entry)
    for address, host in connects.items():
        ip, _, port = address.rpartition(":")
        ip = ip.strip("[]")
        if (is_local(ip) or (ip, port) in reached or ((host or "").lower(), port) in reached
                or (ip, port) in served):
            continue
        draft.remote.append(f"{host}:{port} ({ip})" if host else address)


def _served_by_run(host: str, port: str, served: Collection[tuple[str, str]]) -> bool:
    """Whether a process of the run accepted connections on `host`:`port` (a loopback name
    matches any local address the run served on that port)."""
    host = host.lower().strip("[]")
    return any(port == served_port and (ip == host or (is_local(host) and is_local(ip)))
               for ip, served_port in served)
