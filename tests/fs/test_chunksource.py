"""Where versions/ finds a chunk: the live file if unchanged, the outbox, else the node (once,
for every chunk still missing)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkstore.catalog import version_from_stat
from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore
from fs.chunksource import ChunkSource

KEYS = KeyRing.from_master(bytes(32))


def test_the_live_file_then_the_outbox_then_the_node(tmp_path: Path) -> None:
    parts = [os.urandom(CHUNK_SIZE), os.urandom(CHUNK_SIZE), os.urandom(100)]
    live = tmp_path / "file.bin"
    live.write_bytes(b"".join(parts))
    addresses = [chunk_address(KEYS, p) for p in parts]
    version = version_from_stat(1, str(live), live.stat(), 2, tuple(addresses))
    outbox = ChunkStore.open(tmp_path / "outbox", capacity=10**8)
    asked: list[list[bytes]] = []

    def node(wanted: list[bytes]) -> list[bytes]:
        asked.append(wanted)
        return [parts[addresses.index(a)] for a in wanted]

    source = ChunkSource(KEYS, 1, outbox, lambda path: path, node)
    assert source.read(version, [0, 1, 2]) == parts and asked == []  # all from the live file
    # The file changed since: chunk 1 from the outbox, chunk 2 from the node, 0 still live.
    outbox.put(1, addresses[1], seal_chunk(KEYS, addresses[1], parts[1]))
    with open(live, "r+b") as handle:
        handle.seek(CHUNK_SIZE)
        handle.write(os.urandom(CHUNK_SIZE + 100))
    assert source.read(version, [0, 1, 2]) == parts
    assert asked == [[addresses[2]]]  # one call, only for what is nowhere here
    live.unlink()
    assert source.read(version, [2, 1]) == [parts[2], parts[1]]
    assert asked[-1] == [addresses[2]]

    def node_down(wanted: list[bytes]) -> list[bytes]:
        raise OSError(5, "no lanvault node is running")

    with pytest.raises(OSError, match="no lanvault node"):
        ChunkSource(KEYS, 1, outbox, lambda path: path, node_down).read(version, [0])
    outbox.close()
