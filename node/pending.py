"""Versions recorded short of their degree (pending), brought to it: the missing copies are
made from the mount's outbox, the unsent store or the file itself while its content is the same,
then the version is marked complete and the kept chunks are dropped. A backup waits for this
on its own versions; the daemon runs it in the background whenever peers return."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio

from chunkstore.catalog import FileVersion
from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.errors import ChunkstoreError, QuotaExceededError
from chunkstore.keys import KeyRing
from chunkstore.shares import Code, describe, is_safe, items_of
from chunkstore.store import ChunkStore, PutItem

from .catalogio import CatalogIO
from .localtree import READ_BATCH
from .node import Node
from .offload import in_thread
from .report import EntryPending, Progress, ProgressFn
from .uploader import Uploader

log = logging.getLogger(__name__)
# A backup short of its degree keeps the chunks it could not send in a local store of this
# size; beyond it the node reads them again from the file (while that is unchanged).
UNSENT_BYTES = 1 << 30

Source = tuple[FileVersion, int]  # a version and the number of one of its chunks


class Pending:
    def __init__(
        self,
        node: Node,
        keys: KeyRing,
        catalog: CatalogDB,
        io: CatalogIO,
        uploader: Uploader,
        outbox: ChunkStore | None,
        unsent: ChunkStore | None,
        completed: Callable[[], Awaitable[None]],
    ) -> None:
        self.node = node
        self.keys = keys
        self.catalog = catalog
        self.io = io
        self.uploader = uploader
        self.owner_id = node.node_id
        self.outbox = outbox  # chunks a mount cut aside (None without a mount)
        self.unsent = unsent  # chunks a backup could not send (daemon only)
        self._completed = completed  # some version became complete
        self._wanted = trio.Event()
        node.on_online.append(lambda _peer: self.kick())  # pending backups go on

    async def ensure_version(
        self, version: FileVersion, report: Progress, progress: ProgressFn | None
    ) -> None:
        """Bring every chunk of a recorded version to its degree, then mark it complete."""
        done = await self.ensure_versions([version], report, progress)
        if not done:
            raise EntryPending(
                version.path, f"some chunks are not yet at {describe(version.degree)}"
            )

    async def ensure_versions(
        self, versions: list[FileVersion], report: Progress, progress: ProgressFn | None
    ) -> list[FileVersion]:
        """Bring recorded versions' chunks to their degree; mark complete those that made it.

        All the versions' missing chunks travel together, in batches of one PUTCHUNKS per
        holder, several batches at once (10,000 small files are a few hundred requests, not
        10,000). A missing copy is made from the outbox (chunks a mount cut aside), else from
        the file itself if that chunk still has the same content; otherwise its version stays
        pending. Completed versions are recorded in one transaction.
        """
        items = list(
            dict.fromkeys(i for v in versions for a in v.chunks for i in items_of(a, v.degree))
        )
        known = await self.io.read(self.catalog.holders_many, items)
        live = {
            a: {h for h in hs if not self.node.membership.is_gone(h)} for a, hs in known.items()
        }
        # (address, degree) -> every (version, chunk number) that has it: a chunk shared by
        # several versions (the empty chunk of every empty file and folder, a file copied) is
        # read from whichever of them still has it. Copies go to the highest degree any version
        # asks; a code's shares are kept apart from copies (a chunk may be both).
        short = [
            (version, no, address)
            for version in versions
            for no, address in enumerate(version.chunks)
            if not is_safe(address, version.degree, live)
        ]
        most: dict[bytes, int] = {}
        for version, _no, address in short:
            if Code.of_degree(version.degree) is None:
                most[address] = max(most.get(address, 0), version.degree)
        wanted: dict[tuple[bytes, int], list[Source]] = {}
        for version, no, address in short:
            coded = Code.of_degree(version.degree) is not None
            key = (address, version.degree if coded else most[address])
            wanted.setdefault(key, []).append((version, no))
        by_degree: dict[int, list[tuple[bytes, list[Source]]]] = {}
        for (address, degree), sources in wanted.items():
            by_degree.setdefault(degree, []).append((address, sources))
        window = trio.Semaphore(4)  # batches in flight: 240 chunks, about 15 MB

        async def one_batch(degree: int, batch: list[tuple[bytes, list[Source]]]) -> None:
            try:
                envelopes = await in_thread(
                    self.envelopes_for, batch, limiter=self.node.disk_limiter
                )
                chunks = [
                    (address, envelope)
                    for (address, _sources), envelope in zip(batch, envelopes, strict=True)
                    if envelope is not None
                ]
                if chunks:
                    learned, _short = await self.uploader.keep(chunks, degree, live, report)
                    if learned:
                        await self.io.call(self.catalog.add_holders, learned)
                if progress:
                    progress(report)
            finally:
                window.release()

        async with trio.open_nursery() as nursery:
            for degree, entries in by_degree.items():
                for i in range(0, len(entries), READ_BATCH):
                    await window.acquire()
                    nursery.start_soon(one_batch, degree, entries[i : i + READ_BATCH])
        complete = [v for v in versions if all(is_safe(a, v.degree, live) for a in v.chunks)]
        newly = 0  # versions pending until now (an unchanged file's complete one costs nothing)
        if complete:
            newly = await self.io.call(
                self.catalog.set_complete_many, [v.file_id for v in complete]
            )
        if newly:
            if self.outbox is not None or self.unsent is not None:
                await in_thread(self.release_outbox, complete)
            await self._completed()
        return complete

    def envelopes_for(self, batch: list[tuple[bytes, list[Source]]]) -> list[bytes | None]:
        return [self.envelope_for(address, sources) for address, sources in batch]

    def envelope_for(self, address: bytes, sources: list[Source]) -> bytes | None:
        """The chunk's envelope from the outbox or the unsent store, else sealed again from
        the first of ``sources`` whose file still has that content (None: none has); sealed
        deterministically for a coded version (its shares then match those sent before)."""
        for kept in (self.outbox, self.unsent):
            if kept is not None:
                try:
                    return kept.get(self.owner_id, address)
                except ChunkstoreError:
                    pass
        for version, no in sources:
            data = _read_chunk(version, no)
            if data is not None and chunk_address(self.keys, data) == address:
                coded = Code.of_degree(version.degree) is not None
                return seal_chunk(self.keys, address, data, deterministic=coded)
        return None  # the files moved on since: the copy is in the outbox or lost

    def release_outbox(self, versions: list[FileVersion]) -> None:
        """Drop outbox and unsent chunks of these (now safe) versions that no pending version
        needs."""
        released = {a for v in versions for a in v.chunks}
        done = sorted(released - self.catalog.pending_among(released))
        if self.outbox is not None:
            self.outbox.delete_many(self.owner_id, done)
        if self.unsent is not None and self.unsent.chunk_count():
            self.unsent.delete_many(self.owner_id, done)
            if self.unsent.garbage_bytes() > UNSENT_BYTES // 8:
                self.unsent.compact(0.5)

    async def keep_unsent(
        self,
        chunks: list[tuple[bytes, bytes]],
        degree: int,
        live: dict[bytes, set[int]],
        report: Progress,
    ) -> None:
        """Keep the envelopes of chunks still short of ``degree`` (durable before a pending
        version names them), so the node can finish the version when holders return even if
        the file changes meanwhile. Up to ``UNSENT_BYTES``: beyond that the node reads them
        from the file again, which works while the file is unchanged (``report`` counts
        those bytes, and the backup says so). A coded chunk is kept whole (its shares are
        made from it)."""
        kept_degree = degree if Code.of_degree(degree) is None else 1
        short = [
            PutItem(self.owner_id, a, e, kept_degree)
            for a, e in chunks
            if not is_safe(a, degree, live)
        ]
        unsent = self.unsent
        if not short:
            return
        size = sum(len(item.envelope) for item in short)
        if unsent is None:
            report.bytes_not_kept += size
            return

        def keep() -> bool:
            if unsent.free_bytes >= size:
                with contextlib.suppress(QuotaExceededError):  # another batch took the room
                    unsent.put_many(short)
                    return True
            return False

        if not await in_thread(keep, limiter=self.node.disk_limiter):
            report.bytes_not_kept += size

    def kick(self) -> None:
        """Look at pending versions now (a mount just cut one)."""
        self._wanted.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(10):
                await self._wanted.wait()
            self._wanted = trio.Event()
            try:
                await self._resume_pending()
            except OSError as exc:  # the disk: said plainly, tried again next time
                log.warning("sending pending backups failed: %s", exc)
            except Exception:  # anything else is a bug, but must not take the daemon down
                log.exception("sending pending backups failed")

    async def _resume_pending(self) -> None:
        pending = await self.io.call(self.catalog.incomplete_versions)
        waiting = 0
        for i in range(0, len(pending), 2000):  # bounded memory for a huge backlog
            batch = pending[i : i + 2000]
            done = await self.ensure_versions(batch, Progress(), None)
            waiting += len(batch) - len(done)
        if waiting:  # one line for the whole backlog, not one per batch of it
            log.info("%d pending versions still wait for copies", waiting)


def _read_chunk(version: FileVersion, no: int) -> bytes | None:
    if no * CHUNK_SIZE >= version.size:
        return b""  # an empty file's or a folder's one chunk: nothing to read
    try:
        with open(version.path, "rb") as handle:
            handle.seek(no * CHUNK_SIZE)
            return handle.read(CHUNK_SIZE)
    except OSError:
        return None
