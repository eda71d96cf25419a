"""Where the mount finds a chunk of one of its versions (for ``versions/``), cheapest first:
the live file, if that part of it is unchanged (its keyed address proves it); then the outbox,
where every chunk the mount cut waits until the node has sent it; then ``remote``, the node,
which fetches from the holders (one call for all that are missing, opened and verified there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio

from chunkstore.catalog import FileVersion
from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import chunk_address, open_chunk
from chunkstore.errors import ChunkstoreError
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore


class ChunkSource:
    def __init__(
        self,
        keys: KeyRing,
        owner_id: int,
        outbox: ChunkStore,
        real_path: Callable[[str], str],
        remote: Callable[[list[bytes]], list[bytes]],
    ) -> None:
        """``real_path`` turns a version's path into one that reaches the live file;
        ``remote(addresses)`` returns those chunks' bytes or raises ``OSError``."""
        self.keys = keys
        self.owner_id = owner_id
        self.outbox = outbox
        self.real_path = real_path
        self.remote = remote

    def local(self, version: FileVersion, no: int) -> bytes | None:
        """Chunk ``no`` of ``version`` from this computer, if it is here."""
        address = version.chunks[no]
        with contextlib.suppress(OSError):
            fd = os.open(self.real_path(version.path), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                data = os.pread(fd, CHUNK_SIZE, no * CHUNK_SIZE)
            finally:
                os.close(fd)
            if chunk_address(self.keys, data) == address:
                return data
        with contextlib.suppress(ChunkstoreError):
            return open_chunk(self.keys, address, self.outbox.get(self.owner_id, address))
        return None

    def read(self, version: FileVersion, nos: list[int]) -> list[bytes]:
        """Chunks ``nos`` of ``version``, in order (blocking: call it from a worker thread)."""
        found = {no: self.local(version, no) for no in nos}
        missing = [no for no, data in found.items() if data is None]
        if missing:
            found.update(
                zip(missing, self.remote([version.chunks[no] for no in missing]), strict=True)
            )
        return [d for d in (found[no] for no in nos) if d is not None]

    async def read_async(self, version: FileVersion, nos: list[int]) -> list[bytes]:
        return await trio.to_thread.run_sync(self.read, version, nos)
