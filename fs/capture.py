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
import stat
import time
from collections.abc import Callable

import trio

from chunkstore.catalog import FileVersion, version_from_stat
from chunkstore.catalogdb import TREE_DIR, TREE_FILE, TREE_GONE, TREE_SYMLINK, CatalogDB, TreeEvent
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
        version = version_from_stat(self.owner, path, st, degree, final)
        await trio.to_thread.run_sync(self.catalog.add_version, version, time.time_ns())
        await self._record(
            [self._event(relative, TREE_FILE, version.file_id, st.st_mode, st.st_mtime_ns)]
        )
        if self.on_version is not None:
            self.on_version(version)
        return version

    # -- the tree's structure ----------------------------------------------------------------

    @staticmethod
    def _event(
        relative: str,
        kind: int,
        file_id: bytes = b"",
        mode: int = 0,
        mtime_ns: int = 0,
        target: str = "",
    ) -> TreeEvent:
        parent, _, name = relative.rpartition("/")
        return TreeEvent(parent, name, kind, file_id, mode, mtime_ns, target)

    async def _record(self, events: list[TreeEvent]) -> None:
        if events:
            await trio.to_thread.run_sync(
                self.catalog.record_tree, self.source_root, events, time.time_ns()
            )

    def latest_seq(self) -> int:
        rows = self.catalog.snapshots(self.source_root)
        return rows[-1][0] if rows else 0

    async def made(self, relative: str, st: os.stat_result, target: str = "") -> None:
        """A folder or symlink appeared (files are recorded when their version is cut)."""
        if stat.S_ISDIR(st.st_mode):
            await self._record(
                [self._event(relative, TREE_DIR, mode=st.st_mode, mtime_ns=st.st_mtime_ns)]
            )
        elif stat.S_ISLNK(st.st_mode):
            await self._record(
                [
                    self._event(
                        relative,
                        TREE_SYMLINK,
                        mode=st.st_mode,
                        mtime_ns=st.st_mtime_ns,
                        target=target,
                    )
                ]
            )

    async def removed(self, relative: str) -> None:
        await self._record([self._event(relative, TREE_GONE)])

    def _renamed_events(self, old: str, new: str) -> list[TreeEvent]:
        """Events moving ``old`` (and, for a folder, everything under it) to ``new``."""
        seq = self.latest_seq()
        parent, _, name = old.rpartition("/")
        entry = self.catalog.tree_entry(self.source_root, parent, name, seq) if seq else None
        events = [self._event(old, TREE_GONE)]
        if entry is None:
            return events
        pending = [(old, new, entry)]
        while pending:
            src, dst, item = pending.pop()
            file_id = item.file_id
            if item.kind == TREE_FILE:
                version = self.catalog.version_by_id(item.file_id)
                if version is not None:
                    # Same chunks under a new name: a new version, no data read or sent.
                    moved = FileVersion(
                        path=self.catalog_path(dst),
                        file_id=file_id_for(self.owner, self.catalog_path(dst), version),
                        size=version.size,
                        mode=version.mode,
                        uid=version.uid,
                        gid=version.gid,
                        mtime_ns=version.mtime_ns,
                        ctime_ns=version.ctime_ns,
                        degree=version.degree,
                        chunks=version.chunks,
                        owner=self.owner,
                    )
                    self.catalog.add_version(moved, time.time_ns())
                    file_id = moved.file_id
            events.append(
                self._event(dst, item.kind, file_id, item.mode, item.mtime_ns, item.target)
            )
            if item.kind == TREE_DIR:
                for child in self.catalog.tree_children(self.source_root, src, seq):
                    pending.append((f"{src}/{child.name}", f"{dst}/{child.name}", child))
        return events

    async def renamed(self, old: str, new: str) -> None:
        events = await trio.to_thread.run_sync(self._renamed_events, old, new)
        await self._record(events)


def file_id_for(owner: int, path: str, version: FileVersion) -> bytes:
    return file_id(owner, path, version.size, version.mtime_ns, content_digest(version.chunks))


DEGREE_XATTR = "user.lanvault.degree"


def degree_from_xattrs(real_root: str, relative: str, default: int) -> int:
    """The file's ``user.lanvault.degree``, else the nearest folder's above it, else ``default``."""
    parts = relative.split("/") if relative else []
    for depth in range(len(parts), -1, -1):
        path = "/".join([real_root, *parts[:depth]])
        try:
            value = os.getxattr(path, DEGREE_XATTR, follow_symlinks=False)
        except OSError:
            continue
        text = value.decode("ascii", "replace").strip()
        if text.isdigit() and 1 <= int(text) <= 9:
            return int(text)
    return default
