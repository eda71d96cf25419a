"""versions/ read-ahead: a sequential reader is served from whole batches fetched ahead of it."""

from __future__ import annotations

import hashlib

import trio

from chunkstore.catalog import FileVersion
from chunkstore.chunking import CHUNK_SIZE
from fs import versions as versions_module
from fs.versions import FETCH_BATCH, READ_AHEAD, VersionsView


def make_version(chunks: int) -> FileVersion:
    addresses = tuple(hashlib.sha256(b"%d" % n).digest() for n in range(chunks))
    return FileVersion(
        path="big.bin",
        file_id=b"\x01" * 32,
        size=chunks * CHUNK_SIZE - 1000,
        mode=0o100644,
        uid=0,
        gid=0,
        mtime_ns=0,
        ctime_ns=0,
        degree=2,
        chunks=addresses,
        owner=1,
    )


def chunk_bytes(no: int) -> bytes:
    return bytes([no % 251]) * CHUNK_SIZE


async def test_sequential_reads_fetch_whole_batches() -> None:
    chunks = 3 * READ_AHEAD + 7  # the end of the file is not a whole batch
    version = make_version(chunks)
    batches: list[list[int]] = []

    async def read_chunks(v: FileVersion, nos: list[int]) -> list[bytes]:
        batches.append(nos)
        await trio.sleep(0.001)
        return [chunk_bytes(n) for n in nos]

    view = VersionsView(None, "/", read_chunks, 0, 0)  # type: ignore[arg-type]
    view.version = lambda inode: version  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        offset, got = 0, []
        while offset < version.size:
            data = await view.read(5, offset, 128 * 1024)  # the kernel's read size
            got.append(data)
            offset += len(data)
        nursery.cancel_scope.cancel()
    whole = b"".join(got)
    assert len(whole) == version.size
    assert all(
        whole[n * CHUNK_SIZE : (n + 1) * CHUNK_SIZE]
        == chunk_bytes(n)[: version.size - n * CHUNK_SIZE]
        for n in range(chunks)
    )
    fetched = [n for batch in batches for n in batch]
    assert sorted(fetched) == list(range(chunks)), "each chunk fetched exactly once"
    small = [b for b in batches if len(b) < FETCH_BATCH]
    # Only the reader's first chunk (before the window exists) and the file's tail may be short.
    assert len(small) <= 3, [len(b) for b in batches]
    assert len(batches) <= chunks // FETCH_BATCH + 3


async def test_a_random_reader_fetches_only_what_it_reads() -> None:
    version = make_version(200)
    batches: list[list[int]] = []

    async def read_chunks(v: FileVersion, nos: list[int]) -> list[bytes]:
        batches.append(nos)
        return [chunk_bytes(n) for n in nos]

    view = VersionsView(None, "/", read_chunks, 0, 0)  # type: ignore[arg-type]
    view.version = lambda inode: version  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        for no in (150, 40, 90):
            data = await view.read(5, no * CHUNK_SIZE + 10, 100)
            assert data == chunk_bytes(no)[10:110]
        nursery.cancel_scope.cancel()
    assert sorted(n for b in batches for n in b) == [40, 90, 150]
    assert versions_module.CACHE_CHUNKS > READ_AHEAD  # the window fits in the cache
