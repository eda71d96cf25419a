"""A connection that stays silent is closed; members' links, which carry heartbeats, are not."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from node.messages import PROTOCOL_VERSION, Hello
from node.node import IDLE_TIMEOUT
from node.transport import Channel

from .cluster import open_cluster


async def test_a_silent_connection_is_closed_and_members_stay_linked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_cluster(tmp_path / "c", 2) as cluster:
        auth = await cluster.hub.network_for(9).connect(cluster.address(1))
        channel = Channel(auth, Hello((PROTOCOL_VERSION,), 9, "idle-host", "mem:9"))
        await channel.handshake()
        opened = trio.current_time()
        with (
            trio.fail_after(10 * IDLE_TIMEOUT),
            pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)),
        ):
            await channel.receive()  # nothing is sent: the node must close it
        assert trio.current_time() - opened >= IDLE_TIMEOUT
        await channel.aclose()
        # Two idle periods later the members, which heartbeat, are still linked both ways.
        await trio.sleep(2 * IDLE_TIMEOUT)
        assert 2 in cluster.members[1].node.membership.up_ids()
        assert 1 in cluster.members[2].node.membership.up_ids()
        assert 2 in cluster.members[1].node.pool.linked()
