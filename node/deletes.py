"""Forgetting what the owner backed up: ``delete`` of a path, the retention policy (prune),
and the deletes owed to holders (tombstones), sent now to those up and later to the others.

The catalog records the deletes owed before any is sent (a crash in between only delays them);
a holder's DELETED answer clears them. Pruning and deleting hold the owner's lock alone, so a
backup never counts on a chunk being dropped.
"""

from __future__ import annotations

import functools
import logging
import stat
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import trio

from chunkstore import crashpoints
from chunkstore.catalogdb import CatalogDB
from chunkstore.retention import RetentionPolicy

from .catalogio import CatalogIO
from .messages import Delete, Deleted
from .node import Node
from .report import BackupError
from .transport import PeerUnavailable, RemoteError

log = logging.getLogger(__name__)
DELETE_BATCH = 4096  # addresses per DELETE
TOMBSTONE_INTERVAL = 5.0  # seconds between tries of owed deletes when nothing asks sooner


class Deletes:
    def __init__(
        self,
        node: Node,
        catalog: CatalogDB,
        io: CatalogIO,
        exclusive: Callable[[], AbstractAsyncContextManager[None]],
        catalog_changed: Callable[[], None],
    ) -> None:
        self.node = node
        self.catalog = catalog
        self.io = io
        self.owner_id = node.node_id
        self._exclusive = exclusive
        self._catalog_changed = catalog_changed
        self._wanted = trio.Event()
        self.lock = trio.Lock()  # held while owed deletes are sent (a revive waits for it)
        self.last_prune: dict[str, object] = {}
        node.on_online.append(lambda _peer: self.want())

    def want(self) -> None:
        """Send the owed deletes soon (a holder came back, or new ones were recorded)."""
        self._wanted.set()

    def known_nodes(self) -> set[int]:
        """Every node that may hold a copy of ours (deletes are owed by each)."""
        nodes = {p.node_id for p in self.node.membership.peers()}
        nodes.discard(self.owner_id)
        return nodes

    async def delete_path(self, path: Path) -> dict[str, int]:
        """Forget every version under ``path`` and remove their chunks from every holder.

        Holders that are offline get the delete when they are back (tombstones).
        """
        key = str(path)
        latest = [v for v, _ in await self.io.call(self.catalog.latest_versions, key)]
        paths = sorted({v.path for v in latest})
        if not paths:
            raise BackupError(f"{path}: nothing backed up under this path")
        async with self._exclusive():
            report = await self.io.call(self.catalog.delete_paths, paths, self.known_nodes())
        crashpoints.reached("delete.recorded")
        self._catalog_changed()
        pending = await self.flush()
        return {
            "files": sum(1 for v in latest if not stat.S_ISDIR(v.mode)),  # symlinks count
            "chunks": len(report.orphaned),
            "pending_holders": pending,
        }

    async def prune(self, policy: RetentionPolicy, dry_run: bool = False) -> dict[str, object]:
        """Apply the retention policy: drop old snapshots and versions, delete what they alone
        used from every holder. Never a leased, pending or newest version, never the newest
        snapshot of a tree."""
        now = time.time_ns()
        by_root: dict[str, list[tuple[int, int]]] = {}
        for seq, root, taken in await self.io.call(self.catalog.snapshots):
            by_root.setdefault(root, []).append((seq, taken))
        drop: list[int] = []
        for rows in by_root.values():
            keep = policy.keep([taken for _seq, taken in rows], now)
            drop += [seq for index, (seq, _t) in enumerate(rows) if index not in keep]
        by_path: dict[str, list[tuple[int, int]]] = {}
        for vid, path, created in await self.io.call(self.catalog.backup_versions):
            by_path.setdefault(path, []).append((vid, created))
        drop_ids: list[int] = []
        for rows in by_path.values():
            keep = policy.keep([created for _vid, created in rows], now)
            drop_ids += [vid for index, (vid, _c) in enumerate(rows) if index not in keep]
        async with self._exclusive():
            report = await self.io.call(
                self.catalog.prune, drop, drop_ids, self.known_nodes(), now, dry_run
            )
        if report.chunks_orphaned and not dry_run:
            crashpoints.reached("prune.recorded")
            self.want()
        if not dry_run and (report.snapshots_dropped or report.versions_dropped):
            self._catalog_changed()
        result: dict[str, object] = {
            "policy": policy.describe(),
            "dry_run": dry_run,
            "snapshots_dropped": report.snapshots_dropped,
            "versions_dropped": report.versions_dropped,
            "tree_events_dropped": report.events_dropped,
            "chunks_deleted": report.chunks_orphaned,
            "time": now / 1e9,
        }
        if not dry_run:
            self.last_prune = result
            if report.snapshots_dropped or report.versions_dropped:
                log.info(
                    "pruned %d snapshots and %d versions; %d chunks are deleted from holders",
                    report.snapshots_dropped,
                    report.versions_dropped,
                    report.chunks_orphaned,
                )
        return result

    async def prune_loop(self, policy: RetentionPolicy, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await self.prune(policy)
            except Exception:
                log.exception("pruning failed")

    async def flush(self) -> int:
        """Send owed deletes; returns how many holders still owe an acknowledgement."""
        async with self.lock:
            owed = await self.io.call(self.catalog.tombstones)
            waiting = 0
            for node_id, addresses in owed.items():
                if not self.node.membership.is_up(node_id) or not await self._send(
                    node_id, addresses
                ):
                    waiting += 1
            return waiting

    async def _send(self, node_id: int, addresses: list[bytes]) -> bool:
        for i in range(0, len(addresses), DELETE_BATCH):
            batch = tuple(addresses[i : i + DELETE_BATCH])
            try:
                answer = await self.node.pool.request(
                    node_id, functools.partial(Delete, owner=self.owner_id, addresses=batch), 30
                )
            except (PeerUnavailable, RemoteError) as exc:
                log.info("delete on node %d deferred: %s", node_id, exc)
                return False
            if isinstance(answer, Deleted):
                crashpoints.reached("delete.sent")
                await self.io.call(self.catalog.clear_tombstones, node_id, batch)
        return True

    async def run(self) -> None:
        """Send owed deletes whenever asked, and every few seconds while some are owed."""
        while True:
            with trio.move_on_after(TOMBSTONE_INTERVAL):
                await self._wanted.wait()
            self._wanted = trio.Event()
            try:
                await self.flush()
            except Exception:
                log.exception("sending owed deletes failed")
