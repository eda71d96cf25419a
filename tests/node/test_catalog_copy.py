"""The catalog's copy on the peers, made of many batches sent several at once (issue 17)."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from chunkstore.catalog import FileVersion
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


async def test_a_small_change_sends_a_few_chunks_of_a_big_catalog_not_a_quarter_of_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Each copy's own bookkeeping (its chunks' holders, their list, the deletes of the old
    ones) lived in the catalog: holder rows at random places of a big table, so every copy
    changed chunks all over the next one. A save through a mount with a 100,000-file catalog
    sent 6-7 MB. Now the chunks a copy sends are about those the change itself touched (here
    2 of 111 chunks a copy, against 14 with the holder rows in the catalog)."""
    async with backed_up(tmp_path, 4, seed=22) as (_cluster, owner):
        rng = random.Random(22)
        now = time.time_ns()
        fake = [
            FileVersion(
                path=f"/data/f{n:05d}",
                file_id=rng.randbytes(32),
                size=100,
                mode=0o100644,
                uid=0,
                gid=0,
                mtime_ns=now,
                ctime_ns=now,
                degree=2,
                chunks=(rng.randbytes(32),),
                owner=owner.owner_id,
            )
            for n in range(20_000)
        ]
        holders = [(v.chunks[0], node) for v in fake for node in rng.sample((2, 3, 4), 2)]
        owner.catalog.add_complete_versions(fake, now, holders, now)
        keeping = Safekeeping(owner, lambda: b"{}", None)
        await keeping.secure(30, nothing_heard)
        sent: list[int] = []
        for n in range(6):  # one file gone at a time, as a mount's saves come one by one
            assert owner.catalog.record_absent([f"/data/f{n:05d}"], time.time_ns()) == 1
            keeping.catalog_changed()
            before = keeping.report.catalog_sent_bytes
            await keeping.secure(30, nothing_heard)
            sent.append(keeping.report.catalog_sent_bytes - before)
            await trio.sleep(5)  # the old copy's chunks deleted, as between saves
        size = keeping.report.catalog_bytes
        assert keeping.report.catalog_chunks > 100  # a catalog of some size
        # Steady state (the first copies settle what the fake rows left): each copy sends
        # about as many chunks as one small change touches, under 1/15 of the catalog.
        assert max(sent[2:]) < size / 15, (sent, size)
