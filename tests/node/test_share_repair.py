"""Holders bring an erasure-coded chunk's shares back from any K of them, without keys
(node/share_repair.py), on real nodes and stores over the in-memory network, in virtual time.

The shares are put on the holders directly, as the owner's backup will send them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio
import trio.testing

from chunkstore.envelope import open_chunk
from chunkstore.errors import ChunkNotFoundError, CorruptChunkError
from chunkstore.keys import KeyRing
from chunkstore.pipeline import PreparedChunk, prepare_chunk
from chunkstore.shares import Code, decode, encode, parse, share_address
from node.reclaim import reclaim
from node.repair import RepairReport
from node.share_repair import ShareDecision, share_decision

from .cluster import Cluster, eventually, open_cluster

OWNER = 1
KEYS = KeyRing.from_master(OWNER.to_bytes(32, "big"))  # the cluster's node 1's keys


def spread(cluster: Cluster, code: Code, holders: list[int]) -> tuple[PreparedChunk, list[bytes]]:
    """A chunk of node 1's, its shares put one per holder (share i on ``holders[i]``)."""
    chunk = prepare_chunk(KEYS, os.urandom(64_000))
    blobs = encode(chunk.envelope, chunk.address, code, KEYS.share_key)
    for number, (node, blob) in enumerate(zip(holders, blobs, strict=True)):
        cluster.members[node].store.put(OWNER, share_address(chunk.address, number), blob)
    return chunk, blobs


def holders_of(cluster: Cluster, address: bytes, among: Iterable[int]) -> dict[int, bytes]:
    found = {}
    for node in among:
        member = cluster.members[node]
        if member.scope.cancel_called:
            continue
        with contextlib.suppress(ChunkNotFoundError):
            found[node] = member.store.get(OWNER, address)
    return found


def reports(cluster: Cluster, nodes: Iterable[int]) -> list[RepairReport]:
    return [cluster.members[n].node.repairer.last for n in nodes]


def test_the_policy() -> None:
    assert share_decision(2, 4, {0, 1, 2, 3}, unsure=0) is ShareDecision.COMPLETE
    assert share_decision(2, 4, {0, 1, 2}, unsure=1) is ShareDecision.WAIT
    assert share_decision(2, 4, {0, 2}, unsure=0) is ShareDecision.REBUILD
    assert share_decision(2, 4, {3}, unsure=0) is ShareDecision.OUT_OF_REACH
    assert share_decision(3, 10, {0, 1, 2}, unsure=6) is ShareDecision.REBUILD


async def test_a_lost_share_is_rebuilt_on_another_computer_after_its_holder_is_gone(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        chunk, blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        # The owner's computer is dead too: a holder needs no key to repair.
        cluster.kill(OWNER)
        cluster.kill(3)
        lost = share_address(chunk.address, 1)
        await trio.sleep(12)  # node 3 is down (4 s), not gone (20 s): its share may come back
        assert holders_of(cluster, lost, range(2, 7)) == {}
        await eventually(lambda: holders_of(cluster, lost, range(2, 7)), 60)
        # Byte for byte the share the owner made, on the one node that held none ...
        assert holders_of(cluster, lost, range(2, 7)) == {6: blobs[1]}
        # ... made by the lowest live holder, once.
        assert [r.shares.made for r in reports(cluster, (2, 4, 5, 6))] == [1, 0, 0, 0]
        # The chunk comes back from the new share and any other, with the owner's key.
        envelope = decode([parse(blobs[1]), parse(blobs[3])])
        assert open_chunk(KEYS, chunk.address, envelope)
        await trio.sleep(10)  # later passes find the chunk whole: nothing more is made
        assert sum(r.shares.below for r in reports(cluster, (2, 4, 5, 6))) == 0


async def test_a_holder_that_lies_about_its_share_is_not_believed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        chunk, blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        # Node 4 (share 2, the first node 2 asks) swaps in a share of its own making: it is
        # consistent alone, filed at the right address, but not of the owner's family.
        forger = KeyRing.from_master(os.urandom(32))
        forged = encode(os.urandom(64_078), chunk.address, Code(2, 4), forger.share_key)[2]
        store = cluster.members[4].store
        store.delete_many(OWNER, [share_address(chunk.address, 2)])
        store.put(OWNER, share_address(chunk.address, 2), forged)
        cluster.kill(OWNER)
        cluster.kill(3)
        lost = share_address(chunk.address, 1)
        await eventually(lambda: holders_of(cluster, lost, range(2, 7)), 80)
        assert holders_of(cluster, lost, range(2, 7)) == {6: blobs[1]}  # from shares 0 and 3


async def test_what_the_owner_deleted_is_not_rebuilt_and_what_it_wants_is(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        kept, kept_blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        deleted, _blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        asked: list[bytes] = []

        async def wanted(owner: int, addresses: tuple[bytes, ...]) -> set[bytes] | None:
            asked.extend(addresses)  # the holders ask by the chunk's address, not a share's
            return {a for a in addresses if a == kept.address}

        cluster.members[OWNER].node.holder.wanted = wanted
        cluster.kill(3)
        await eventually(
            lambda: holders_of(cluster, share_address(kept.address, 1), range(2, 7)), 60
        )
        assert holders_of(cluster, share_address(kept.address, 1), range(2, 7)) == {
            6: kept_blobs[1]
        }
        assert holders_of(cluster, share_address(deleted.address, 1), range(2, 7)) == {}
        assert set(asked) == {kept.address, deleted.address}
        assert cluster.members[2].node.repairer.last.shares.unwanted == 1


async def test_fewer_than_k_shares_cannot_be_rebuilt_and_are_counted(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        chunk, _blobs = spread(cluster, Code(3, 4), [2, 3, 4, 5])
        cluster.kill(OWNER)
        cluster.kill(3)
        cluster.kill(4)
        await eventually(lambda: cluster.members[2].node.repairer.last.shares.out_of_reach, 60)
        assert all(
            holders_of(cluster, share_address(chunk.address, i), (2, 5, 6))
            == ({2: _blobs[0]} if i == 0 else {5: _blobs[3]} if i == 3 else {})
            for i in range(4)
        )
        assert sum(r.shares.made for r in reports(cluster, (2, 5, 6))) == 0


async def test_a_holder_lending_less_moves_its_share_to_a_computer_with_none(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        chunk, blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        report = await reclaim(cluster.members[2].node, 0)
        moved = share_address(chunk.address, 0)
        assert report.dropped == 1 and report.kept == 0
        assert holders_of(cluster, moved, range(2, 7)) == {6: blobs[0]}  # not 3, 4 or 5


async def test_a_share_no_computer_without_one_can_take_is_kept(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        chunk, blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        report = await reclaim(cluster.members[2].node, 0)
        assert report.dropped == 0 and report.kept == 1
        for number, node in enumerate((2, 3, 4, 5)):
            assert holders_of(cluster, share_address(chunk.address, number), range(2, 6)) == {
                node: blobs[number]
            }


async def test_a_share_that_cannot_be_read_here_does_not_stop_the_others_repair(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        rotten, _rotten_blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        fine, fine_blobs = spread(cluster, Code(2, 4), [2, 3, 4, 5])
        store = cluster.members[2].store  # the lowest holder: it repairs both
        real_get = store.get

        def get(owner: int, address: bytes) -> bytes:
            if address == share_address(rotten.address, 0):
                raise CorruptChunkError("its checksum does not match")
            return real_get(owner, address)

        monkeypatch.setattr(store, "get", get)
        cluster.kill(OWNER)
        cluster.kill(3)
        await eventually(
            lambda: holders_of(cluster, share_address(fine.address, 1), range(2, 7)), 60
        )
        assert holders_of(cluster, share_address(fine.address, 1), range(2, 7)) == {
            6: fine_blobs[1]
        }
        assert cluster.members[2].node.repairer.last.shares.failed >= 1  # counted, not raised
