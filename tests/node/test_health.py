"""The health snapshot behind status: versions waiting for a degree this network cannot give
are said to wait in vain, with the reason (a mount's default degree 2 on two computers)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio.testing

from chunkstore.catalog import version_from_stat
from chunkstore.envelope import chunk_address
from lanvault import health
from node.safekeeping import Safekeeping

from .cluster import backed_up


async def test_pending_versions_that_cannot_complete_say_why(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with backed_up(tmp_path, 3, seed=21) as (cluster, owner):
        member = cluster.members[1]
        keeping = Safekeeping(owner, lambda: b"{}", None)

        async def snapshot() -> health.Health:
            return await health.take(
                member.node, owner, member.store, owner.catalog, keeping, own_degrees=False
            )

        assert (await snapshot()).pending_reason is None  # nothing pending
        # A version wanting 3 copies (a mount's degree, say) with only 2 other computers.
        path = tmp_path / "wants-three.bin"
        path.write_bytes(b"three")
        version = version_from_stat(
            1, str(path), os.stat(path), 3, [chunk_address(owner.keys, b"three")]
        )
        owner.catalog.add_complete_versions([], time.time_ns(), [], None, [version])
        now = await snapshot()
        assert now.catalog["pending_versions"] == 1 and now.catalog["pending_degree"] == 3
        assert now.pending_reason is not None
        assert now.pending_reason.startswith("degree 3 needs 3 other nodes lending space and 2 do")
