"""What a lost computer needs to come back, kept by the peers: the owner's recovery kit and a
copy of its catalog.

* The **recovery kit** (``chunkstore/recovery.py``) is put on every node this one links to,
  as the ``recovery-kit`` blob (PUTMETA), again whenever a new link comes up.
* The **catalog** is copied (SQLite's online backup), split into 64,000-byte chunks,
  encrypted and stored on the peers at the owner's default degree like any file; unchanged
  chunks are not sent again. A **manifest** listing them, with a sequence number that only
  grows, is then put on every linked node as the ``catalog`` blob. This happens a moment after
  every commit of the mount (and at start), and before ``lanvault backup`` returns
  (``Safekeeping.secure``); the previous copy's chunks are deleted afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.errors import ChunkstoreError
from chunkstore.kitexchange import KitRequestor
from chunkstore.recovery import CatalogManifest, seal_manifest

from .messages import (
    SUPPORTED_VERSIONS,
    Error,
    GetMeta,
    Hello,
    Kit,
    KitChallenge,
    KitProof,
    KitRequest,
    Meta,
    ProtocolError,
    PutMeta,
)
from .offload import in_thread
from .report import Progress
from .transport import Channel, PeerUnavailable, RemoteError, connect_anonymous

if TYPE_CHECKING:
    from .owner import Owner

log = logging.getLogger(__name__)
KIT_NAME = "recovery-kit"
CATALOG_NAME = "catalog"
SETTLE = 2.0  # seconds after a change before the catalog is copied (commits come in bursts);
# while a backup runs (it pauses between files, and secures a copy naming it when it ends), a
# copy once the oldest change it lacks is MAX_BEHIND seconds old, or COPY_SHARE times as long
# as the last copy took if that is longer: each copy re-sends most of the catalog, and one
# after every file cost a backup 3-6 % of the owner's link (issue 17). `status` shows the lag.
MAX_BEHIND = 30.0
COPY_SHARE = 50.0
FIRST_COPY_DELAY = 10.0
KIT_EXCHANGE_TIMEOUT = 60.0  # seconds for a whole kit exchange with one peer (Argon2id included)
SLOW_COPY = 1.0  # seconds before a backup waiting for its catalog copy says so
COPY_BATCH = 15  # catalog chunks sealed and sent together (about 1 MB) ...
COPY_BATCHES_IN_FLIGHT = 4  # ... and this many such batches at once


class CatalogNotSafe(Exception):
    """The peers do not hold a catalog copy with the newest changes (yet)."""


@dataclass(slots=True)
class SafekeepingReport:
    catalog_seq: int = 0
    catalog_bytes: int = 0
    catalog_chunks: int = 0
    catalog_sent_bytes: int = 0
    last_catalog_backup: float = 0.0
    kit_holders: int = 0
    manifest_holders: int = 0


class Safekeeping:
    def __init__(
        self,
        owner: Owner,
        config_json: Callable[[], bytes],
        kit: tuple[int, bytes] | None,
        interval: float = 60.0,
    ) -> None:
        self.owner = owner
        self.config_json = config_json
        self.kit = kit  # (seq, blob); None when this node has no verifier to build one
        self.interval = interval
        self.manifest: tuple[int, bytes] | None = None
        self._sent: dict[tuple[int, str], int] = {}  # (peer, name) -> seq it holds
        self._fingerprint: tuple[int, ...] | None = None
        self._copying = trio.Lock()  # one copy at a time: the loop's or a backup's
        self._changes = 0  # catalog changes so far ...
        self._copied = 0  # ... and how many of them the newest copy on the peers holds
        self._behind_since: float | None = None  # when the oldest change not copied came
        self._since_mark: float | None = None  # when the first change a copy under way lacks came
        self._backups = 0  # backups under way: each secures a copy naming it when it ends
        self.changed = trio.Event()
        self.publish_wanted = trio.Event()
        self.report = SafekeepingReport()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._catalog_loop)
            nursery.start_soon(self._publish_loop)
            task_status.started()

    def catalog_changed(self) -> None:
        self._changes += 1
        now = trio.current_time()
        if self._behind_since is None:
            self._behind_since = now
        if self._since_mark is None:
            self._since_mark = now
        self.changed.set()

    @contextlib.contextmanager
    def backup_running(self) -> Iterator[None]:
        """A backup is under way: until it ends (and secures a copy itself), the catalog is
        copied every MAX_BEHIND seconds, not SETTLE seconds after each file. When it ends,
        failed or not, the loop goes back to copying SETTLE seconds after a change."""
        self._backups += 1
        try:
            yield
        finally:
            self._backups -= 1
            self.changed.set()  # the loop's wait is measured anew

    def behind(self) -> float | None:
        """Seconds since the oldest catalog change the peers' copy lacks (None: up to date)."""
        if self._behind_since is None:
            return None
        return trio.current_time() - self._behind_since

    def _holders(self) -> int:
        """Nodes holding the newest manifest and, if this node has one, its recovery kit."""
        report = self.report
        if self.kit is None:
            return report.manifest_holders
        return min(report.manifest_holders, report.kit_holders)

    def copies_wanted(self) -> int:
        """Copies of the catalog (its chunks, its manifest, the kit) to keep on the peers: the
        owner's default degree, or as many as there are other nodes lending space when that is
        fewer (a network of two computers keeps one, on the other: all it can; a backup does
        not wait for a second copy that cannot be made). None lending yet: the default."""
        lenders = self.owner.node.replication.lenders()
        if not lenders:
            return self.owner.default_degree
        return min(self.owner.default_degree, lenders)

    async def secure(self, timeout: float, waiting: Callable[[str], Awaitable[None]]) -> None:
        """Return once the peers hold a catalog copy with every change made so far, its
        chunks at the default degree and its manifest (and the recovery kit) on as many
        nodes; ``CatalogNotSafe`` after ``timeout`` seconds (the loop goes on trying).
        ``waiting`` hears why it waits."""
        mark = self._changes
        needed = self.copies_wanted()
        why = "its chunks are still being sent"

        async def say_if_slow() -> None:  # a copy normally takes well under a second
            await trio.sleep(SLOW_COPY)
            await waiting(f"waiting for the catalog copy to reach the peers: {why}")

        with trio.move_on_after(timeout):
            delay = 0.5
            while True:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(say_if_slow)
                        await self.backup_catalog()
                        nursery.cancel_scope.cancel()
                    if self._copied >= mark and self.manifest is None:
                        return  # the catalog is empty: there is nothing to keep
                    if self._copied >= mark and self._holders() < needed:
                        await self.publish()
                    needed = self.copies_wanted()  # the network may have grown meanwhile
                    if self._copied >= mark and self._holders() >= needed:
                        return
                    why = f"it is on {self._holders()} of {needed} nodes"
                except Exception as exc:  # peers down or full: wait and try again
                    while isinstance(exc, ExceptionGroup):  # the nursery's wrapping
                        exc = exc.exceptions[0]
                    why = str(exc)
                await waiting(f"waiting for the catalog copy to reach the peers: {why}")
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise CatalogNotSafe(
            f"the catalog copy that names this backup is not on the peers yet ({why});"
            " the node keeps trying"
        )

    # -- the catalog ---------------------------------------------------------------------

    async def _catalog_loop(self) -> None:
        await trio.sleep(FIRST_COPY_DELAY)  # let the links come up and placement know them
        took = 0.0  # seconds the last copy made took
        while True:
            started = trio.current_time()
            try:
                if await self.backup_catalog():
                    took = trio.current_time() - started
            except Exception as exc:  # peers down, quota: try again later
                log.info("catalog copy for the peers waits: %s", exc)
                await trio.sleep(SETTLE)  # not at once, however far behind the copy is
            with trio.move_on_after(self.interval):
                await self.changed.wait()
            await self._settle(max(MAX_BEHIND, COPY_SHARE * took))

    async def _settle(self, limit: float) -> None:
        """Return SETTLE seconds after the change that woke the loop (commits come in bursts);
        while a backup runs, once the oldest change the peers' copy lacks is ``limit``
        seconds old (or the backup ends: it secured its own copy, or failed)."""
        while self._backups:
            self.changed = trio.Event()
            wait = limit - (self.behind() or 0.0)
            if wait <= 0:
                return
            with trio.move_on_after(wait):
                await self.changed.wait()
        self.changed = trio.Event()
        await trio.sleep(SETTLE)

    async def backup_catalog(self, force: bool = False) -> bool:
        """Put a fresh copy of the catalog on the peers if it changed; True if one was made."""
        async with self._copying:
            mark = self._changes
            self._since_mark = None
            made = await self._backup_catalog(force)
            # The copy (or the one before, if nothing changed) holds every change up to mark;
            # the oldest it lacks is the first made since.
            self._copied = max(self._copied, mark)
            self._behind_since = None if self._copied == self._changes else self._since_mark
            return made

    async def _backup_catalog(self, force: bool) -> bool:
        owner = self.owner
        catalog = owner.catalog
        fingerprint = await owner.io.call(catalog.fingerprint)
        if fingerprint == self._fingerprint and self.manifest is not None and not force:
            return False
        if not any(fingerprint):
            return False  # nothing backed up yet: nothing a recovery could bring back
        tmp = Path(str(catalog.path) + ".peers-copy")
        try:
            await in_thread(catalog.copy_to, tmp)
            size = (await in_thread(os.stat, tmp)).st_size
            addresses = await in_thread(self._addresses, tmp, limiter=owner.node.cpu_limiter)
            degree = self.copies_wanted()
            known = await owner.io.call(catalog.holders_many, addresses)
            sent = 0
            wanted = [
                (no, a)
                for no, a in enumerate(addresses)
                if len({h for h in known[a] if not owner.node.membership.is_gone(h)}) < degree
            ]
            window = trio.Semaphore(COPY_BATCHES_IN_FLIGHT)
            errors: list[Exception] = []

            async def one_batch(batch: list[tuple[int, bytes]]) -> None:
                nonlocal sent
                try:
                    envelopes = await in_thread(
                        self._seal, tmp, batch, limiter=owner.node.cpu_limiter
                    )
                    items = [
                        (
                            address,
                            envelope,
                            {h for h in known[address] if not owner.node.membership.is_gone(h)},
                        )
                        for (_no, address), envelope in zip(batch, envelopes, strict=True)
                    ]
                    report = Progress()
                    learned, failures = await owner.uploader.send(items, degree, report)
                    if learned:
                        await owner.io.call(catalog.add_copy_holders, learned)
                    sent += report.bytes_sent
                    if failures:
                        raise RuntimeError(f"catalog copy: {failures[0]}")
                except Exception as exc:  # raised below, outside the nursery: no group
                    errors.append(exc)
                finally:
                    window.release()

            # Batches in flight together: each waits on its holders' fsyncs down the chain,
            # and a copy after a big backup changes a hundred chunks or more.
            async with trio.open_nursery() as nursery:
                for i in range(0, len(wanted), COPY_BATCH):
                    await window.acquire()
                    if errors:
                        window.release()
                        break
                    nursery.start_soon(one_batch, wanted[i : i + COPY_BATCH])
            if errors:
                raise errors[0]
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # small: not worth a thread
        previous_seq = await owner.io.call(catalog.get_setting, "catalog_seq")
        seq = max(previous_seq + 1, time.time_ns())
        manifest = CatalogManifest(
            owner.owner_id, seq, time.time_ns(), size, tuple(addresses), self.config_json()
        )
        blob = await in_thread(seal_manifest, owner.keys, manifest)
        self.manifest = (seq, blob)
        await owner.io.call(catalog.set_setting, "catalog_seq", seq)
        holders = await self.publish()
        obsolete = await owner.io.call(catalog.set_catalog_chunks, addresses)
        if obsolete and holders:
            await owner.io.call(catalog.schedule_deletes, obsolete, owner.deletes.known_nodes())
            owner.deletes.want()
        self._fingerprint = fingerprint
        self.report.catalog_seq = seq
        self.report.catalog_bytes = size
        self.report.catalog_chunks = len(addresses)
        self.report.catalog_sent_bytes += sent
        self.report.last_catalog_backup = time.time()
        log.info(
            "catalog copy %d on the peers: %d bytes in %d chunks (%d bytes sent), manifest on %d"
            " nodes",
            seq,
            size,
            len(addresses),
            sent,
            holders,
        )
        return True

    def _addresses(self, path: Path) -> list[bytes]:
        out = []
        with open(path, "rb") as handle:
            while True:
                data = handle.read(CHUNK_SIZE)
                out.append(chunk_address(self.owner.keys, data))
                if len(data) < CHUNK_SIZE:
                    return out  # the last chunk is shorter (empty for an exact multiple)

    def _seal(self, path: Path, batch: list[tuple[int, bytes]]) -> list[bytes]:
        out = []
        with open(path, "rb") as handle:
            for no, address in batch:
                handle.seek(no * CHUNK_SIZE)
                data = handle.read(CHUNK_SIZE)
                if chunk_address(self.owner.keys, data) != address:
                    raise RuntimeError("the catalog copy changed while it was read")
                out.append(seal_chunk(self.owner.keys, address, data))
        return out

    # -- putting blobs on the peers ------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception:
                log.exception("putting the recovery kit on the peers failed")
            with trio.move_on_after(self.interval):
                await self.publish_wanted.wait()
            self.publish_wanted = trio.Event()

    async def publish(self) -> int:
        """Put the kit and the newest manifest on every up peer lacking them; returns how many
        peers hold the newest manifest."""
        node = self.owner.node
        wanted = [(KIT_NAME, self.kit), (CATALOG_NAME, self.manifest)]

        async def put(peer: int, name: str, seq: int, blob: bytes) -> None:
            try:
                await node.pool.request(
                    peer,
                    functools.partial(
                        PutMeta, owner=self.owner.owner_id, name=name, seq=seq, blob=blob
                    ),
                    node.config.request_timeout,
                )
            except (PeerUnavailable, RemoteError) as exc:
                log.info("%s not put on node %d yet: %s", name, peer, exc)
                return
            self._sent[(peer, name)] = seq

        async with trio.open_nursery() as nursery:
            for peer in node.membership.up_ids():
                for name, item in wanted:
                    if item is not None and self._sent.get((peer, name)) != item[0]:
                        nursery.start_soon(put, peer, name, item[0], item[1])
        kit_seq = self.kit[0] if self.kit else -1
        manifest_seq = self.manifest[0] if self.manifest else -1
        self.report.kit_holders = sum(
            1 for (_p, n), s in self._sent.items() if n == KIT_NAME and s == kit_seq
        )
        self.report.manifest_holders = sum(
            1 for (_p, n), s in self._sent.items() if n == CATALOG_NAME and s == manifest_seq
        )
        return self.report.manifest_holders


async def newest_manifests(owner: Owner, name: str = CATALOG_NAME) -> list[tuple[int, int, bytes]]:
    """(seq, peer, blob) of ``name`` from every up peer, highest seq first (not yet checked)."""
    node = owner.node
    found: list[tuple[int, int, bytes]] = []

    async def ask(peer: int) -> None:
        try:
            answer = await node.pool.request(
                peer,
                functools.partial(GetMeta, owner=owner.owner_id, name=name),
                node.config.request_timeout,
            )
        except (PeerUnavailable, RemoteError):
            return
        if isinstance(answer, Meta):
            found.append((answer.seq, peer, answer.blob))

    async with trio.open_nursery() as nursery:
        for peer in node.membership.up_ids():
            nursery.start_soon(ask, peer)
    return sorted(found, reverse=True)


async def fetch_kit(
    address: str, owner: int, exchange: Callable[[KitChallenge], Awaitable[KitRequestor]]
) -> tuple[bytes, bytes]:
    """Ask the node at ``address`` for ``owner``'s recovery kit over an anonymous connection.

    ``exchange`` turns the holder's challenge into our side of the passphrase exchange (SPAKE2:
    ``chunkstore.kitexchange``). Returns the kit, opened with the exchange's key, and the
    server's certificate (DER), which the caller must check against the CA inside the kit.
    Raises ``PeerUnavailable`` or ``RemoteError`` (``FORBIDDEN``: the proof was refused).
    """
    auth, der = await connect_anonymous(address)
    channel = Channel(auth, Hello(SUPPORTED_VERSIONS, 0, "", ""))  # we tell a stranger nothing
    try:
        with trio.fail_after(KIT_EXCHANGE_TIMEOUT):
            await channel.handshake()
            await channel.send(KitRequest(1, owner))
            answer = await channel.receive()
            if isinstance(answer, Error):
                raise RemoteError(answer)
            if not isinstance(answer, KitChallenge):
                raise PeerUnavailable(f"{address} answered {type(answer).__name__}")
            ours = await exchange(answer)
            await channel.send(KitProof(2, owner, answer.nonce, ours.message, ours.confirm))
            answer = await channel.receive()
            if isinstance(answer, Error):
                raise RemoteError(answer)
            if not isinstance(answer, Kit):
                raise PeerUnavailable(f"{address} answered {type(answer).__name__}")
            try:
                return ours.open(answer.sealed), der
            except ChunkstoreError as exc:
                raise PeerUnavailable(f"{address} sent a kit that does not open: {exc}") from None
    except (trio.TooSlowError, trio.EndOfChannel, trio.BrokenResourceError, ProtocolError) as exc:
        raise PeerUnavailable(f"recovery exchange with {address} failed: {exc}") from None
    finally:
        await channel.aclose()
