"""Relay replication on a cluster of real nodes (virtual time): the owner sends each byte once
and the holders pass the chunks down their chain; a copy downstream counts only by its
holder's own word; a chain that breaks (a holder that does not forward, a dead one, a full
one) costs the owner the missing copies, sent by itself, never a copy it does not have."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing

from chunkstore.chunking import CHUNK_SIZE
from node.messages import RelayChunks

from .cluster import Cluster, open_cluster
from .test_cluster import assert_at_degree

SIZE = 60 * CHUNK_SIZE  # random: nothing compresses, nothing repeats


def copies_held(cluster: Cluster, owner: int = 1) -> Counter[bytes]:
    """Ground truth: how many stores hold each of ``owner``'s chunks."""
    held: Counter[bytes] = Counter()
    for member in cluster.members.values():
        if member.scope.cancel_called:
            continue  # killed: its store is closed, and no copy there counts
        held.update(c.address for c in member.store.chunks(owner))
    return held


def assert_counts_are_true(cluster: Cluster, owner: int = 1) -> None:
    """The holders the owner's catalog names for each chunk are exactly those whose stores
    hold it: no copy counted that is not there."""
    catalog = cluster.members[owner].owner.catalog
    for version, _complete in catalog.latest_versions(""):
        for address in version.chunks:
            named = catalog.holders(address)
            really = {
                n
                for n, m in cluster.members.items()
                if not m.scope.cancel_called and m.store.has(owner, address)
            }
            assert named <= really, (address.hex()[:12], named, really)


async def back_up(cluster: Cluster, tmp_path: Path, degree: int) -> tuple[int, bytes, Path]:
    """Back up SIZE random bytes from node 1 at ``degree``: (bytes node 1 sent, data, path)."""
    data = os.urandom(SIZE)
    path = tmp_path / f"data-{degree}.bin"
    path.write_bytes(data)
    before = cluster.hub.sent[1]
    report = await cluster.members[1].owner.backup_path(path, degree=degree)
    assert not report.pending, report.pending
    return cluster.hub.sent[1] - before, data, path


@pytest.mark.parametrize("degree", [1, 2, 3])
async def test_the_owner_sends_each_byte_once_at_any_degree(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, degree: int
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        sent, data, path = await back_up(cluster, tmp_path, degree)
        assert sent <= 1.05 * len(data), f"degree {degree}: sent {sent / len(data):.3f}x"
        await assert_at_degree(cluster, 1, degree)
        assert min(copies_held(cluster).values()) >= degree
        assert_counts_are_true(cluster)
        out = tmp_path / "out.bin"
        await cluster.members[1].owner.restorer.restore_path(path, out)
        assert out.read_bytes() == data


async def test_without_relaying_the_owner_sends_every_copy_itself(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The measurement above can fail: with relaying off it is the degree."""
    async with open_cluster(tmp_path / "c", 5) as cluster:
        cluster.members[1].node.config.relay = False
        sent, data, _path = await back_up(cluster, tmp_path, 3)
        assert sent >= 2.95 * len(data)
        await assert_at_degree(cluster, 1, 3)


async def test_a_holder_that_acknowledges_without_forwarding_gains_the_owner_nothing_false(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Every holder stores its own copy and passes nothing on (a broken or hostile relay):
    the owner finds the copies downstream missing when it asks their holders, and makes them
    itself."""
    async with open_cluster(tmp_path / "c", 5) as cluster:
        for node_id in range(2, 6):
            cluster.members[node_id].node.holder.relay = None
        sent, data, _path = await back_up(cluster, tmp_path, 3)
        await assert_at_degree(cluster, 1, 3)
        assert_counts_are_true(cluster)
        assert sent >= 2.9 * len(data)  # the chains did nothing: every copy came from node 1


async def test_a_relay_that_lies_about_the_next_holder_is_not_believed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A relay that answers for the chain without forwarding (its answer says nothing about
    the others; the owner asks them) changes no count."""
    async with open_cluster(tmp_path / "c", 4) as cluster:
        forwarded: list[RelayChunks] = []

        async def swallow(message: RelayChunks) -> None:
            forwarded.append(message)  # claims to be done at once; passes nothing on

        for node_id in range(2, 5):
            cluster.members[node_id].node.holder.relay = swallow
        await back_up(cluster, tmp_path, 2)
        assert forwarded  # the chains were tried
        await assert_at_degree(cluster, 1, 2)
        assert_counts_are_true(cluster)


async def test_a_dead_holder_in_the_middle_of_chains_costs_only_its_copies(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        cluster.kill(3)  # not yet noticed: placement still names it in chains
        _sent, data, path = await back_up(cluster, tmp_path, 3)
        assert min(copies_held(cluster).values()) >= 3  # on the four others
        assert_counts_are_true(cluster)  # node 3 named for nothing
        out = tmp_path / "out.bin"
        await cluster.members[1].owner.restorer.restore_path(path, out)
        assert out.read_bytes() == data


async def test_a_full_holder_passes_the_chunks_on_and_the_owner_fills_its_copies(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        cluster.members[2].store.set_capacity(1)  # room for nothing
        sent, data, _path = await back_up(cluster, tmp_path, 3)
        await assert_at_degree(cluster, 1, 3)
        assert_counts_are_true(cluster)
        assert cluster.members[2].store.chunks(1) == []
        # Its chains went on past it: far less than three copies' worth came from node 1.
        assert sent < 2 * len(data)
