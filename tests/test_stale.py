"""The sweep of folders a killed flo-audit or flo-run left: only folders with our owner file,
only when that owner (pid and start time, on this host) is gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from auditor.common import stale


def _owner(folder: Path) -> dict:
    return json.loads((folder / stale.OWNER_FILE).read_text())


def _set_owner(folder: Path, **fields: object) -> None:
    (folder / stale.OWNER_FILE).write_text(json.dumps({**_owner(folder), **fields}))


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_sweep_removes_only_folders_whose_owner_is_gone(tmp_path: Path) -> None:
    alive = stale.owned_folder("flo-audit-alive-", tmp_path)
    dead = stale.owned_folder("flo-audit-dead-", tmp_path)
    _set_owner(dead, pid=_dead_pid())
    reused = stale.owned_folder("flo-audit-reused-", tmp_path)  # our pid, another start time
    _set_owner(reused, started=_owner(reused)["started"] - 3600)
    elsewhere = stale.owned_folder("flo-audit-elsewhere-", tmp_path)  # another node's
    _set_owner(elsewhere, pid=_dead_pid(), host="some-other-node")
    unmarked = tmp_path / "flo-audit-unmarked"
    unmarked.mkdir()
    other_name = stale.owned_folder("mine-", tmp_path)
    _set_owner(other_name, pid=_dead_pid())
    kept = stale.owned_folder("flo-audit-kept-", tmp_path)
    _set_owner(kept, pid=_dead_pid())
    stale.release(kept)
    (dead / "trace.strace").write_text("x")

    removed = stale.sweep(tmp_path, stale.AUDIT_PREFIXES)

    assert sorted(removed) == sorted([dead, reused])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (alive, elsewhere, unmarked, other_name, kept))


def test_a_link_to_a_folder_is_never_followed(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    target = stale.owned_folder("flo-audit-target-", tmp_path / "elsewhere")
    _set_owner(target, pid=_dead_pid())
    (tmp_path / "flo-audit-link").symlink_to(target)
    assert stale.sweep(tmp_path, stale.AUDIT_PREFIXES) == []
    assert target.is_dir()
