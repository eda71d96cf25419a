"""What a restore or a backup says when it cannot do what was asked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio.testing

from node.report import BackupError, RestoreError

from .cluster import backed_up, eventually, open_cluster


async def test_a_restore_before_the_first_backup_names_the_oldest_moment_kept(
    autojump_clock: trio.testing.MockClock,
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


async def test_a_degree_the_network_cannot_give_fails_at_once_saying_why(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    async with open_cluster(tmp_path / "c", 3) as cluster:
        cluster.members[3].store.set_capacity(0)  # node 3 lends nothing
        owner = cluster.members[1].owner
        peers = owner.node.membership.peers

        def both_told() -> bool:  # node 2 said what it lends, and node 3 said 0 B
            said = {p.node_id: p.capacity for p in peers() if p.capacity_known}
            return said.get(3) == 0 and said.get(2, 0) > 0

        await eventually(both_told, 60)
        with pytest.raises(BackupError) as caught:
            await owner.backup_path(src, degree=2)
        assert str(caught.value) == (
            "degree 2 needs 2 other nodes lending space and 1 does (node 2); node 3 lends 0 B:"
            " give a lower --degree, or more space (lanvault node --quota) or computers"
        )
        # Refused before anything was read, sent or recorded.
        assert owner.catalog.latest_versions("") == []
        assert cluster.members[2].store.chunk_count() == 0
        report = await owner.backup_path(src, degree=1)  # what the network can give works
        assert report.files_done == 1


async def test_a_file_nobody_holds_does_not_stop_the_others_and_is_named(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Every copy of one file's chunk is gone: the restore brings back every other file,
    then fails naming that file (and saying how many came back), instead of stopping at it."""
    async with backed_up(tmp_path, 4, seed=12) as (cluster, owner):
        src = tmp_path / "src"
        lost = src / "file4.bin"  # two chunks, none shared with another file
        version = next(v for v, _ in owner.catalog.latest_versions(str(lost)))
        for n in (2, 3, 4):
            for address in version.chunks:
                cluster.members[n].store.delete(1, address)
        out = tmp_path / "out"
        with pytest.raises(RestoreError) as caught:
            await owner.restorer.restore_path(src, out)
        said = str(caught.value)
        assert said.startswith("1 of 7 files could not be restored (6 were): ")
        assert f"{out / 'file4.bin'}: no reachable holder has a valid copy" in said
        for path in sorted(src.iterdir()):
            if path != lost:
                assert (out / path.name).read_bytes() == path.read_bytes()
        assert not (out / "file4.bin").exists()
