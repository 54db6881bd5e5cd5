"""The data part of the audit's report: the "data" object of summary.json (shown by
auditor/summary_view.py).

Secrets (files, and credentials removed from URLs) and absolute-path inputs carry the note
that tells the user what to do; outputs, intermediates and URLs requested but not read are
listed (never as inputs); scratch files are only counted. A URL the run served itself is
listed as "served by the run: not fetched"; a UDP connect (a local-IP probe) is not reported.
"""

from __future__ import annotations

from typing import Any

from ...backpack.layout import DATA
from .collect import DataDraft
from .rules import ABSOLUTE_NOTE, SECRET_NOTE, SIGNED_URL_NOTE, UNREAD_URL_NOTE

SERVED_URL_NOTE = ("served by the run: not fetched (a process of the run accepted connections on "
                   "its port; the files it served are inputs)")


def data_summary(draft: DataDraft) -> dict[str, Any]:
    """The "data" object of summary.json."""
    return {
        "file": DATA,
        "inputs": [e.to_yaml_dict() for e in draft.inputs],
        "outputs": list(draft.outputs),
        "intermediates": list(draft.intermediates),
        "scratch_files": draft.scratch,
        "secrets": [{"path": p, "note": SECRET_NOTE} for p in draft.secrets],
        "absolute_inputs": [{"path": p, "note": ABSOLUTE_NOTE} for p in draft.absolute],
        "signed_urls": [{"url": e.source, "removed": list(e.credentials or ()),
                         "note": SIGNED_URL_NOTE} for e in draft.signed_urls],
        "unread_urls": [{"url": url, "why": why, "note": UNREAD_URL_NOTE}
                        for url, why in draft.unread_urls],
        "served_urls": [{"url": url, "note": SERVED_URL_NOTE} for url in draft.served_urls],
        "remote_connections": list(draft.remote),
        "warnings": list(draft.warnings),
    }
