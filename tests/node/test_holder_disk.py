"""A holder on a disk that fills: whole batches refused, one log line when it fills and one
when it has room again (never one per batch)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

from chunkstore.errors import DiskFullError
from chunkstore.keys import KeyRing
from chunkstore.pipeline import prepare_chunk
from chunkstore.store import ChunkStore, PutItem
from node.holder import HolderService


def full(holder: HolderService) -> bool:
    return holder.disk_full


async def test_a_full_disk_is_one_line_not_one_per_batch(
    tmp_path: Path, keys: KeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    await trio.run_process(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)])
    try:
        (disk / "other").write_bytes(b"x" * 2_000_000)
        with ChunkStore.open(disk / "store", capacity=10**12) as store:
            holder = HolderService(store, trio.CapacityLimiter(2), dict, print, print)

            def batch(n: int) -> list[PutItem]:
                chunks = [prepare_chunk(keys, os.urandom(60_000)) for _ in range(n)]
                return [PutItem(1, c.address, c.envelope) for c in chunks]

            caplog.set_level(logging.INFO, logger="node.holder")
            async with trio.open_nursery() as nursery:
                await nursery.start(holder.run_writer)
                refused = 0
                for _ in range(40):  # far more than the ~2 MB the disk has for chunks
                    results = await holder.put_batch(batch(4))
                    refused += sum(isinstance(r, DiskFullError) for r in results)
                    assert all(r is True or isinstance(r, DiskFullError) for r in results)
                assert refused > 100 and full(holder)
                (disk / "other").unlink()  # the user makes room
                assert all(r is True for r in await holder.put_batch(batch(4)))
                assert not full(holder)
                nursery.cancel_scope.cancel()
        lines = [r.getMessage() for r in caplog.records if r.name == "node.holder"]
        assert len([m for m in lines if "disk is full" in m]) == 1, lines
        assert len([m for m in lines if "has room again: taking" in m]) == 1, lines
        assert len(lines) == 2, lines
    finally:
        await trio.run_process(["umount", "-l", str(disk)], check=False)
