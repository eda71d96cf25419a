"""Version cuts: only changed chunks are read, a cut is one instant however the file is written
meanwhile, and tree changes are committed in order."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

from chunkstore.catalogbase import TREE_DIR
from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import CHUNK_SIZE, split_bytes
from chunkstore.envelope import chunk_address, open_chunk
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore
from fs.capture import VersionCutter
from fs.dirty import DirtyFile

KEYS = KeyRing.from_master(bytes(range(32)))


@pytest.fixture
async def cutter(tmp_path: Path, nursery: trio.Nursery) -> VersionCutter:
    catalog = CatalogDB(tmp_path / "catalog.sqlite3")
    outbox = ChunkStore.open(tmp_path / "outbox", capacity=1 << 40)
    (tmp_path / "src").mkdir()
    made = VersionCutter(KEYS, catalog, outbox, 1, str(tmp_path / "src"), lambda _p: 2)
    await nursery.start(made.run)
    return made


def addresses_of(data: bytes) -> list[bytes]:
    return [chunk_address(KEYS, c) for c in split_bytes(data)]


def assert_recoverable(cutter: VersionCutter, chunks: list[bytes]) -> None:
    for address in chunks:  # every chunk is in the outbox, sealed, and opens
        open_chunk(KEYS, address, cutter.outbox.get(1, address))


async def cut(cutter: VersionCutter, path: Path, changes: DirtyFile) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        job = await cutter.cut(path.name, fd, changes)
    finally:
        os.close(fd)
    version = await job.result()
    assert list(version.chunks) == addresses_of(path.read_bytes())  # never a stale address
    return list(version.chunks)


def everything(size: int) -> DirtyFile:
    changes = DirtyFile()
    changes.write(0, max(size, 1))
    return changes


async def test_only_dirty_chunks_are_read(cutter: VersionCutter, tmp_path: Path) -> None:
    path = tmp_path / "src" / "big.bin"
    data = bytearray(os.urandom(20 * CHUNK_SIZE + 100))
    path.write_bytes(data)
    first = await cut(cutter, path, everything(len(data)))
    assert_recoverable(cutter, first)
    assert cutter.bytes_read == len(data)
    data[5 * CHUNK_SIZE + 7 : 5 * CHUNK_SIZE + 20] = b"z" * 13
    path.write_bytes(data)
    changes = DirtyFile()
    changes.write(5 * CHUNK_SIZE + 7, 13)
    cutter.bytes_read = 0
    second = await cut(cutter, path, changes)
    assert cutter.bytes_read == CHUNK_SIZE
    assert sum(a != b for a, b in zip(first, second, strict=True)) == 1


@pytest.mark.parametrize("seed", range(8))
async def test_random_edits_always_match_a_full_rechunk(
    cutter: VersionCutter, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    path = tmp_path / "src" / "f.bin"
    data = bytearray(rng.randbytes(rng.randint(0, 5 * CHUNK_SIZE)))
    path.write_bytes(data)
    await cut(cutter, path, everything(len(data)))
    for _ in range(12):
        changes = DirtyFile()
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            if action < 0.6:  # write, possibly past the end (sparse)
                offset = rng.randint(0, len(data) + CHUNK_SIZE)
                blob = rng.randbytes(rng.randint(1, 2 * CHUNK_SIZE))
                if offset > len(data):
                    data.extend(bytes(offset - len(data)))
                data[offset : offset + len(blob)] = blob
                changes.write(offset, len(blob))
            else:  # truncate, shrinking or growing
                size = rng.choice([0, CHUNK_SIZE, rng.randint(0, len(data) + CHUNK_SIZE)])
                if size < len(data):
                    del data[size:]
                else:
                    data.extend(bytes(size - len(data)))
                changes.truncate(size)
        path.write_bytes(data)
        await cut(cutter, path, changes)


@pytest.mark.parametrize("seed", range(6))
async def test_a_cut_is_one_instant_whatever_is_written_meanwhile(
    cutter: VersionCutter, tmp_path: Path, seed: int
) -> None:
    """Writes and truncations racing a cut never leak into it (they copy chunks aside)."""
    rng = random.Random(seed)
    path = tmp_path / "src" / "busy.bin"
    original = rng.randbytes(rng.randint(30, 60) * CHUNK_SIZE + rng.randint(0, CHUNK_SIZE))
    path.write_bytes(original)
    inode = os.stat(path).st_ino
    lock = trio.Lock()
    fd = os.open(path, os.O_RDWR)
    try:
        async with lock:  # as the mount does: the cut starts with the file's lock held
            job = await cutter.cut(path.name, fd, everything(len(original)), lock, inode)
        size = len(original)
        for _ in range(40):
            async with lock:
                if rng.random() < 0.15:
                    size = rng.randint(0, len(original) + CHUNK_SIZE)
                    cutter.before_truncate(inode, size)
                    os.ftruncate(fd, size)
                else:
                    offset = rng.randint(0, size + 1000)
                    blob = rng.randbytes(rng.randint(1, 3 * CHUNK_SIZE))
                    cutter.before_write(inode, offset, len(blob))
                    os.pwrite(fd, blob, offset)
                    size = max(size, offset + len(blob))
            await trio.sleep(rng.choice([0, 0, 0.001]))  # let the cut read a little
        version = await job.result()
    finally:
        os.close(fd)
    assert list(version.chunks) == addresses_of(original), f"torn cut (seed {seed})"
    assert version.size == len(original)
    assert_recoverable(cutter, list(version.chunks))
    assert not cutter.busy(inode)


async def test_a_cut_right_after_another_builds_on_it(
    cutter: VersionCutter, tmp_path: Path
) -> None:
    """The second cut of a file, begun while the first is still in flight, reuses the first's
    chunks, not the older committed version's."""
    path = tmp_path / "src" / "twice.bin"
    data = bytearray(os.urandom(40 * CHUNK_SIZE))
    path.write_bytes(data)
    await cut(cutter, path, everything(len(data)))
    inode = os.stat(path).st_ino
    lock = trio.Lock()
    fd = os.open(path, os.O_RDWR)
    try:
        jobs = []
        for no in (5, 7):
            async with lock:
                blob = os.urandom(100)
                cutter.before_write(inode, no * CHUNK_SIZE, len(blob))
                os.pwrite(fd, blob, no * CHUNK_SIZE)
                data[no * CHUNK_SIZE : no * CHUNK_SIZE + 100] = blob
                changes = DirtyFile()
                changes.write(no * CHUNK_SIZE, len(blob))
                jobs.append(await cutter.cut(path.name, fd, changes, lock, inode))
        first, second = [await job.result() for job in jobs]
    finally:
        os.close(fd)
    assert list(second.chunks) == addresses_of(bytes(data))
    assert first.chunks[5] == second.chunks[5] != first.chunks[7]


async def test_tree_changes_are_committed_in_order(cutter: VersionCutter, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "docs").mkdir()
    cutter.made("docs", os.stat(src / "docs"))
    path = src / "docs" / "a.txt"
    path.write_bytes(os.urandom(3 * CHUNK_SIZE))
    fd = os.open(path, os.O_RDONLY)
    try:
        job = await cutter.cut("docs/a.txt", fd, everything(3 * CHUNK_SIZE))
    finally:
        os.close(fd)
    # Renamed before its version is written: the rename must still apply to it.
    os.rename(src / "docs", src / "papers")
    cutter.renamed("docs", "papers")
    await cutter.barrier()
    version = await job.result()
    seq = cutter.latest_seq()
    entries = {p: e for p, e in cutter.catalog.tree_walk(cutter.source_root, "", seq)}
    assert set(entries) == {"papers", "papers/a.txt"}
    assert entries["papers"].kind == TREE_DIR
    moved = cutter.catalog.version_by_id(entries["papers/a.txt"].file_id)
    assert moved is not None and moved.chunks == version.chunks
    # Many small cuts in a row share one commit (one snapshot), not one each.
    before = len(cutter.catalog.snapshots())
    for n in range(20):
        small = src / f"small{n}"
        small.write_bytes(b"x" * n)
        fd = os.open(small, os.O_RDONLY)
        try:
            await cutter.cut(small.name, fd, everything(n))
        finally:
            os.close(fd)
    await cutter.barrier()
    assert len(cutter.catalog.snapshots()) - before < 20


def test_degree_from_xattrs_is_inherited(tmp_path: Path) -> None:
    from chunkstore.catalog import DEGREE_XATTR
    from fs.capture import degree_from_xattrs

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    assert degree_from_xattrs(str(tmp_path), "a/b/f", 2) == 2
    os.setxattr(tmp_path / "a", DEGREE_XATTR, b"4")
    assert degree_from_xattrs(str(tmp_path), "a/b/f", 2) == 4
    os.setxattr(tmp_path / "a" / "b" / "f", DEGREE_XATTR, b"1")
    assert degree_from_xattrs(str(tmp_path), "a/b/f", 2) == 1
    os.setxattr(tmp_path / "a" / "b", DEGREE_XATTR, b"not a number")
    assert degree_from_xattrs(str(tmp_path), "a/b/other", 2) == 4
