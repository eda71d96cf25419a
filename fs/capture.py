"""Cutting versions of files written through the mount.

When a written file is closed or fsync'd, ``VersionCutter.cut`` runs while writes to that file are
held back. It re-reads only the chunks that changed (the others keep their addresses from the
previous version), addresses and seals them, and puts the envelopes into the *outbox*: a local
chunk store, so that the version no longer depends on the file (it may be overwritten a moment
later) and survives a crash. Then it records the version in the catalog as not yet complete; the
node daemon sends the outbox's chunks to their holders and marks the version complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import trio

from chunkstore.catalog import FileVersion
from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import CHUNK_SIZE, chunk_count
from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.fileid import content_digest, file_id
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore, PutItem

from .dirty import DirtyFile

BATCH = 15


class VersionCutter:
    def __init__(
        self,
        keys: KeyRing,
        catalog: CatalogDB,
        outbox: ChunkStore,
        owner: int,
        source_root: str,
        degree_for: Callable[[str], int],
        on_version: Callable[[FileVersion], None] | None = None,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.outbox = outbox
        self.owner = owner
        self.source_root = source_root.rstrip("/")
        self.degree_for = degree_for
        self.on_version = on_version
        self.limiter = trio.CapacityLimiter(2)
        self.bytes_read = 0

    def catalog_path(self, relative: str) -> str:
        return f"{self.source_root}/{relative}"

    def _seal_batch(self, fd: int, numbers: list[int], degree: int) -> list[tuple[int, bytes]]:
        """Read, address and seal chunks; put them in the outbox durably; return their addresses."""
        items: list[PutItem] = []
        out: list[tuple[int, bytes]] = []
        for no in numbers:
            data = os.pread(fd, CHUNK_SIZE, no * CHUNK_SIZE)
            self.bytes_read += len(data)
            address = chunk_address(self.keys, data)
            items.append(PutItem(self.owner, address, seal_chunk(self.keys, address, data), degree))
            out.append((no, address))
        self.outbox.put_many(items)
        return out

    async def cut(self, relative: str, fd: int, changes: DirtyFile) -> FileVersion:
        path = self.catalog_path(relative)
        st = os.fstat(fd)
        degree = self.degree_for(relative)
        previous = await trio.to_thread.run_sync(self.catalog.latest, path)
        count = chunk_count(st.st_size)
        addresses: list[bytes | None] = [None] * count
        if previous is not None:
            # A chunk keeps its address if it was not written and its bytes lie wholly below
            # the old size, the new size and any size the file was truncated to meanwhile
            # (growing or shrinking changes the last chunk; a truncation zeroes what follows).
            limit = min(previous.size, st.st_size)
            if changes.truncated_to is not None:
                limit = min(limit, changes.truncated_to)
            same_end = previous.size == st.st_size == limit
            for no in range(count):
                if no in changes.chunks:
                    continue
                if (no + 1) * CHUNK_SIZE <= limit or (same_end and no == count - 1):
                    addresses[no] = previous.chunks[no]
        wanted = [no for no, address in enumerate(addresses) if address is None]
        for start in range(0, len(wanted), BATCH):
            batch = wanted[start : start + BATCH]
            for no, address in await trio.to_thread.run_sync(
                self._seal_batch, fd, batch, degree, limiter=self.limiter
            ):
                addresses[no] = address
        final = [a for a in addresses if a is not None]
        version = FileVersion(
            path=path,
            file_id=file_id(self.owner, path, st.st_size, st.st_mtime_ns, content_digest(final)),
            size=st.st_size,
            mode=st.st_mode,
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            degree=degree,
            chunks=tuple(final),
            owner=self.owner,
        )
        await trio.to_thread.run_sync(self.catalog.add_version, version, time.time_ns())
        if self.on_version is not None:
            self.on_version(version)
        return version
