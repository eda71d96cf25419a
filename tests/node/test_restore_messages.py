"""What a restore says when it cannot do what was asked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from node.report import RestoreError

from .cluster import open_cluster


async def test_a_restore_before_the_first_backup_names_the_oldest_moment_kept(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    async with open_cluster(tmp_path / "c", 3) as cluster:
        owner = cluster.members[1].owner
        before = time.time_ns()
        await owner.backup_path(src, degree=2)
        long_ago = before - 3600 * 10**9
        with pytest.raises(RestoreError) as caught:
            await owner.restorer.restore_path(src, tmp_path / "out", at_ns=long_ago)
        said = str(caught.value)
        assert "nothing was backed up under this path as early as" in said
        oldest = time.strftime("%Y-%m-%d %H:%M", time.localtime(before / 1e9))
        assert f"the oldest version kept is from {oldest}" in said
        with pytest.raises(RestoreError, match=r"nothing backed up under this path$"):
            await owner.restorer.restore_path(tmp_path / "elsewhere", tmp_path / "out")
