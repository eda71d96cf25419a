"""The catalog's copy on the peers, made of many batches sent several at once (issue 17)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from chunkstore.envelope import open_chunk
from chunkstore.recovery import open_manifest
from node import safekeeping
from node.safekeeping import Safekeeping

from .cluster import backed_up


async def nothing_heard(message: str) -> None:
    raise AssertionError(f"the copy waited: {message}")


async def test_a_catalog_copy_of_many_batches_reaches_the_peers_whole(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every chunk the manifest names is on as many holders as the copy wants, and the
    chunks read back from them in the manifest's order are the catalog: nothing lost or
    put out of order by batches finishing in any order."""
    monkeypatch.setattr(safekeeping, "COPY_BATCH", 1)
    monkeypatch.setattr(safekeeping, "COPY_BATCHES_IN_FLIGHT", 3)
    async with backed_up(tmp_path, 4, seed=21) as (cluster, owner):
        for n in range(20_000):  # rows enough for several rounds of batches in flight
            owner.catalog.set_setting(f"padding-{n:05d}", n)
        keeping = Safekeeping(owner, lambda: b"{}", None)
        await keeping.secure(30, nothing_heard)
        assert keeping.manifest is not None
        seq, blob = keeping.manifest
        manifest = open_manifest(owner.keys, blob, owner.owner_id, seq)
        assert len(manifest.chunks) > 2 * 3  # one chunk a batch, 3 at once: 3 rounds or more
        wanted = keeping.copies_wanted()
        assert wanted == 2
        data = bytearray()
        for address in manifest.chunks:
            holders = [
                n for n in (2, 3, 4) if cluster.members[n].store.has(owner.owner_id, address)
            ]
            assert len(holders) >= wanted, address.hex()
            envelope = cluster.members[holders[0]].store.get(owner.owner_id, address)
            data += open_chunk(owner.keys, address, envelope)
        assert len(data) == manifest.size
        copy = tmp_path / "from-the-peers.sqlite3"
        copy.write_bytes(bytes(data))
        db = sqlite3.connect(copy)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            padding = db.execute(
                "SELECT COUNT(*), SUM(value) FROM settings WHERE name LIKE 'padding-%'"
            ).fetchone()
            versions = db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]
        finally:
            db.close()
        assert padding == (20_000, sum(range(20_000)))
        assert versions == len(owner.catalog.live_paths(str(tmp_path / "src")))
