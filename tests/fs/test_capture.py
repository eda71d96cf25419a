"""Version cuts re-read only what changed, and always equal a full re-chunking of the file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import CHUNK_SIZE, split_bytes
from chunkstore.envelope import chunk_address, open_chunk
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore
from fs.capture import VersionCutter
from fs.dirty import DirtyFile

KEYS = KeyRing.from_master(bytes(range(32)))


@pytest.fixture
def cutter(tmp_path: Path) -> VersionCutter:
    catalog = CatalogDB(tmp_path / "catalog.sqlite3")
    outbox = ChunkStore.open(tmp_path / "outbox", capacity=1 << 40)
    return VersionCutter(KEYS, catalog, outbox, 1, str(tmp_path / "src"), lambda _p: 2)


async def cut(cutter: VersionCutter, path: Path, changes: DirtyFile) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        version = await cutter.cut(path.name, fd, changes)
    finally:
        os.close(fd)
    expected = [chunk_address(KEYS, c) for c in split_bytes(path.read_bytes())]
    assert list(version.chunks) == expected  # never a stale address
    for address in version.chunks:  # every chunk is recoverable from the outbox
        if cutter.outbox.has(1, address):
            open_chunk(KEYS, address, cutter.outbox.get(1, address))
    return list(version.chunks)


def everything(size: int) -> DirtyFile:
    changes = DirtyFile()
    changes.write(0, max(size, 1))
    return changes


async def test_only_dirty_chunks_are_read(cutter: VersionCutter, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    path = tmp_path / "src" / "big.bin"
    data = bytearray(os.urandom(20 * CHUNK_SIZE + 100))
    path.write_bytes(data)
    first = await cut(cutter, path, everything(len(data)))
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
    (tmp_path / "src").mkdir()
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


def test_degree_from_xattrs_is_inherited(tmp_path: Path) -> None:
    from fs.capture import DEGREE_XATTR, degree_from_xattrs

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    assert degree_from_xattrs(str(tmp_path), "a/b/f", 2) == 2
    os.setxattr(tmp_path / "a", DEGREE_XATTR, b"4")
    assert degree_from_xattrs(str(tmp_path), "a/b/f", 2) == 4
    os.setxattr(tmp_path / "a" / "b" / "f", DEGREE_XATTR, b"1")
    assert degree_from_xattrs(str(tmp_path), "a/b/f", 2) == 1
    os.setxattr(tmp_path / "a" / "b", DEGREE_XATTR, b"not a number")
    assert degree_from_xattrs(str(tmp_path), "a/b/other", 2) == 4
