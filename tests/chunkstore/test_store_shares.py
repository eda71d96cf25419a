"""A holder's store keeps shares of coded chunks as items of their own and knows them for
shares (their family's size and siblings), without reading them again; a bad share is never
stored."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from chunkstore.errors import CorruptChunkError, InvalidIdError
from chunkstore.keys import KeyRing
from chunkstore.pipeline import prepare_chunk
from chunkstore.shares import Code, ShareRef, encode, parse, share_address
from chunkstore.store import ChunkStore, PutItem


def test_a_share_is_stored_and_known_for_one(tmp_path: Path, keys: KeyRing) -> None:
    chunk = prepare_chunk(keys, os.urandom(20_000))
    blobs = encode(chunk.envelope, chunk.address, Code(3, 5), keys.share_key)
    with ChunkStore.open(tmp_path / "s", capacity=1_000_000) as store:
        items = [PutItem(7, share_address(chunk.address, i), blobs[i]) for i in (1, 4)]
        assert store.put_many([*items, PutItem(7, chunk.address, chunk.envelope, 2)]) == [True] * 3
        assert store.get(7, share_address(chunk.address, 4)) == blobs[4]
    with ChunkStore.open(tmp_path / "s") as store:
        shares = {c.address: c.share for c in store.chunks()}
        assert shares[chunk.address] is None  # a whole envelope
        ref = shares[share_address(chunk.address, 4)]
        assert ref == ShareRef(chunk.address, 3, 5, 4)
        assert ref.siblings() == [share_address(chunk.address, i) for i in range(5)]
        assert ShareRef.from_bytes(ref.to_bytes()) == ref
        # The store's own checksum finds a rotten share as it finds a rotten envelope.
        assert parse(store.get(7, ref.address)).number == 4


def test_a_bad_share_is_refused_before_anything_is_written(tmp_path: Path, keys: KeyRing) -> None:
    chunk = prepare_chunk(keys, os.urandom(5_000))
    blob = bytearray(encode(chunk.envelope, chunk.address, Code(2, 3), keys.share_key)[0])
    blob[-1] ^= 0x40
    with ChunkStore.open(tmp_path / "s", capacity=1_000_000) as store:
        with pytest.raises(InvalidIdError, match=r"bad share.*does not match its digest"):
            store.put(1, share_address(chunk.address, 0), bytes(blob))
        assert store.chunk_count() == 0 and store.used_bytes == 0


def test_an_index_from_before_shares_gains_the_column(tmp_path: Path, keys: KeyRing) -> None:
    chunk = prepare_chunk(keys, os.urandom(3_000))
    with ChunkStore.open(tmp_path / "s", capacity=1_000_000) as store:
        store.put(1, chunk.address, chunk.envelope)
    # As an older lanvault left it: no share column.
    db = sqlite3.connect(tmp_path / "s" / "index.sqlite3")
    db.execute("ALTER TABLE chunks DROP COLUMN share")
    db.commit()
    db.close()
    with ChunkStore.open(tmp_path / "s") as store:
        [held] = store.chunks()
        assert held.share is None and store.get(1, chunk.address) == chunk.envelope
        blobs = encode(chunk.envelope, chunk.address, Code(2, 3), keys.share_key)
        store.put(1, share_address(chunk.address, 2), blobs[2])
        assert {c.share for c in store.chunks()} == {None, ShareRef(chunk.address, 2, 3, 2)}


def test_rot_in_a_stored_share_is_found_by_the_store(tmp_path: Path, keys: KeyRing) -> None:
    chunk = prepare_chunk(keys, os.urandom(5_000))
    blob = encode(chunk.envelope, chunk.address, Code(2, 3), keys.share_key)[1]
    address = share_address(chunk.address, 1)
    with ChunkStore.open(tmp_path / "s", capacity=1_000_000) as store:
        store.put(1, address, blob)
    [segment] = (tmp_path / "s" / "segments").iterdir()
    data = bytearray(segment.read_bytes())
    data[-3] ^= 1
    segment.write_bytes(bytes(data))
    with ChunkStore.open(tmp_path / "s") as store, pytest.raises(CorruptChunkError):
        store.get(1, address)
