"""How metric processes count each other and hold shards: real files and real flocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.metric.shards import Members, try_lock


def test_members_count_the_live_and_forget_the_dead(tmp_path: Path) -> None:
    first, second = Members(tmp_path), Members(tmp_path)
    assert first.live() == second.live() == 2
    # A process that dies holds no lock: its file is counted out and removed.
    code = "from pathlib import Path; from services.metric.shards import Members; Members(Path(%r))"
    subprocess.run([sys.executable, "-c", code % str(tmp_path)], check=True)
    assert len(list(tmp_path.glob("*.member"))) == 3
    assert first.live() == 2
    assert len(list(tmp_path.glob("*.member"))) == 2
    second.leave()
    assert first.live() == 1


def test_a_shard_lock_is_held_once_and_freed_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3.lock"
    held = try_lock(path)
    assert held is not None
    assert try_lock(path) is None  # another holder (an open file of its own) is refused
    held.close()
    again = try_lock(path)
    assert again is not None
    again.close()
