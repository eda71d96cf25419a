"""Sending a file's content: its chunks read, addressed, sealed and sent to their degree
(``content``), or small files together, their versions committed in one transaction
(``smalls``). What reaches fewer holders than its degree is kept for later
(``Pending.keep_unsent``) and named in the lines returned."""

from __future__ import annotations

import functools
import os
import time

import trio

from chunkstore import crashpoints
from chunkstore.catalog import FileVersion, version_from_stat
from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import chunk_count
from chunkstore.keys import KeyRing
from chunkstore.pipeline import seal_chunks
from chunkstore.shares import Code, is_safe, shortfall

from .catalogio import CatalogIO
from .localtree import READ_BATCH, SEAL_BYTES, SmallRead, read_and_address, read_smalls, runs
from .node import Node
from .offload import in_thread
from .pending import Pending
from .report import Progress, ProgressFn
from .uploader import Uploader

IN_FLIGHT_CHUNKS = 256  # bounds memory (16 MiB of chunks) while keeping holders busy


class FileSender:
    def __init__(
        self,
        node: Node,
        keys: KeyRing,
        catalog: CatalogDB,
        io: CatalogIO,
        uploader: Uploader,
        pending: Pending,
    ) -> None:
        self.node = node
        self.keys = keys
        self.catalog = catalog
        self._db = io.call
        self._query = io.read
        self.uploader = uploader
        self.pending = pending

    async def smalls(
        self,
        files: list[tuple[str, os.stat_result, FileVersion | None]],
        degree: int,
        report: Progress,
        retry: list[str],
    ) -> tuple[list[str], int | None, bool]:
        """Small files read whole, their chunks sent together and their versions committed in
        one transaction; a file that changed while read goes to ``retry``. Returns a line per
        file that failed, when the complete versions were committed (None if none was), and
        whether some were recorded pending."""
        read: list[tuple[str, os.stat_result, FileVersion | None, SmallRead]] = []
        failures: list[str] = []
        results = await in_thread(  # one thread hop for the whole group
            read_smalls,
            self.keys,
            [(path, st) for path, st, _b in files],
            limiter=self.node.cpu_limiter,
        )
        for (path, st, before), got in zip(files, results, strict=True):
            if isinstance(got, OSError):
                failures.append(f"{path}: {got.strerror or got}")
                report.files_done += 1
                continue
            if got is None:
                retry.append(path)
            else:
                read.append((path, st, before, got))
        if not read:
            return failures, None, False
        plain: dict[bytes, bytes] = {}
        for *_x, (chunks, addresses, _xattrs) in read:
            plain.update(zip(addresses, chunks, strict=True))
        live = await self.uploader.live_holders(list(plain), degree)
        coded = Code.of_degree(degree) is not None
        to_send = [a for a in plain if not is_safe(a, degree, live)]
        report.chunks_skipped += len(plain) - len(to_send)
        learned: list[tuple[bytes, int]] = []
        for start, end in runs([len(plain[a]) for a in to_send], SEAL_BYTES):
            batch = to_send[start:end]
            envelopes = await in_thread(
                functools.partial(seal_chunks, deterministic=coded),
                self.keys,
                [(a, plain[a]) for a in batch],
                limiter=self.node.cpu_limiter,
            )
            items = list(zip(batch, envelopes, strict=True))
            new, short_lines = await self.uploader.keep(
                items, degree, live, report
            )  # ``live`` grows
            learned += new
            if short_lines:
                await self.pending.keep_unsent(items, degree, live, report)
        versions: list[FileVersion] = []
        pending: list[FileVersion] = []
        for path, st, before, (_chunks, addresses, xattrs) in read:
            report.files_done += 1
            version = version_from_stat(
                self.node.node_id, path, st, degree, addresses, xattrs=xattrs
            )
            report.bytes_read += st.st_size
            report.note(before, version)
            short = [a for a in addresses if not is_safe(a, degree, live)]
            if short:  # recorded all the same: pending until the missing copies are made
                pending.append(version)
                report.pending[path] = (
                    f"chunk {short[0].hex()[:12]}… has {shortfall(short[0], degree, live)}"
                    f" ({len(self.node.membership.up_ids())} peers up)"
                )
                continue
            versions.append(version)
            report.bytes_done += st.st_size
        now = time.time_ns()
        crashpoints.reached("backup.group")
        await self._db(
            self.catalog.add_complete_versions,
            versions,
            now,
            learned,
            now if versions else None,
            pending,
        )
        return failures, now if versions else None, bool(pending)

    async def content(
        self, path: str, size: int, degree: int, report: Progress, progress: ProgressFn | None
    ) -> tuple[list[bytes], list[str]]:
        """Read, address, seal and send every chunk of ``path``; return the addresses in order
        and a line per chunk that stayed short of its degree (kept for later, ``Pending.keep_unsent``)."""
        count = chunk_count(size)
        coded = Code.of_degree(degree) is not None
        addresses: list[bytes | None] = [None] * count
        budget = trio.Semaphore(IN_FLIGHT_CHUNKS)
        failures: list[str] = []
        unreadable: list[OSError] = []
        learned: list[tuple[bytes, int]] = []  # (address, holder) pairs not yet in the catalog

        async def send_batch(items: list[tuple[bytes, bytes]], live: dict[bytes, set[int]]) -> None:
            try:
                new, short = await self.uploader.keep(items, degree, live, report)
                learned.extend(new)
                failures.extend(short)
                if short:
                    await self.pending.keep_unsent(items, degree, live, report)
            finally:
                for _ in items:
                    budget.release()

        async def flush_learned() -> None:
            if learned:
                pending = learned[:]
                del learned[:]
                await self._db(self.catalog.add_holders, pending)

        async def produce(first: int, n: int) -> None:
            # One thread hop reads and addresses the batch, one seals what must be sent.
            try:
                plaintexts, batch_addresses = await in_thread(
                    read_and_address, self.keys, path, first, n, limiter=self.node.cpu_limiter
                )
            except OSError as exc:  # raised here it would leave the nursery as a group
                unreadable.append(exc)
                for _ in range(n):
                    budget.release()
                return
            live = await self.uploader.live_holders(batch_addresses, degree)
            to_send: list[tuple[bytes, bytes]] = []
            for offset, (plain, address) in enumerate(
                zip(plaintexts, batch_addresses, strict=True)
            ):
                addresses[first + offset] = address
                report.bytes_done += len(plain)
                if is_safe(address, degree, live):
                    report.chunks_skipped += 1
                    budget.release()
                else:
                    to_send.append((address, plain))
            if to_send:
                envelopes = await in_thread(
                    functools.partial(seal_chunks, deterministic=coded),
                    self.keys,
                    to_send,
                    limiter=self.node.cpu_limiter,
                )
                sealed = [
                    (address, envelope)
                    for (address, _plain), envelope in zip(to_send, envelopes, strict=True)
                ]
                del plaintexts, to_send  # the plaintexts need not wait for the holders
                await send_batch(sealed, live)
            if len(learned) >= 1024:  # record holders in batches, not one commit per chunk
                await flush_learned()
            if progress:
                progress(report)

        # Batches are produced concurrently (each waits for its budget in file order): one
        # batch at a time left a core idle while its chain of thread hops waited its turn.
        async with trio.open_nursery() as nursery:
            for first in range(0, count, READ_BATCH):
                n = min(READ_BATCH, count - first)
                for _ in range(n):
                    await budget.acquire()
                if unreadable:
                    for _ in range(n):
                        budget.release()
                    break
                nursery.start_soon(produce, first, n)
        await flush_learned()
        if unreadable:
            raise unreadable[0]
        return [a for a in addresses if a is not None], failures
