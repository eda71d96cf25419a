"""Sending an owner's sealed chunks until each has its degree: one PUTCHUNKS per holder for a
whole batch, then per-chunk retries down the placement order (``Replication``). Backups, their
resumption and the catalog copy send through here."""

from __future__ import annotations

import trio

from chunkstore.catalogdb import CatalogDB

from .catalogio import CatalogIO
from .node import Node
from .report import Progress


class Uploader:
    def __init__(self, node: Node, catalog: CatalogDB, io: CatalogIO, deletes_lock: trio.Lock):
        self.node = node
        self.catalog = catalog
        self.io = io
        self.owner_id = node.node_id
        self.deletes_lock = deletes_lock  # a revive waits for owed deletes being sent

    async def send(
        self, items: list[tuple[bytes, bytes, set[int]]], degree: int, report: Progress
    ) -> tuple[list[tuple[bytes, int]], list[str]]:
        """Bring each (address, envelope, holders) to ``degree`` copies.

        First one PUTCHUNKS per target holder for the whole batch, then, for any chunk still
        short, per-chunk retries with backoff moving down the placement order. ``holders`` sets
        grow as copies are acknowledged. Returns the new (address, holder) pairs and the
        chunks that stayed short.
        """
        addresses = [address for address, _e, _h in items]
        if await self.io.read(self.catalog.any_tombstoned, addresses):
            # Deleted content is wanted again: no owed delete may remove the new copies.
            async with self.deletes_lock:
                await self.io.call(self.catalog.revive, addresses)
        before = [set(holders) for _a, _e, holders in items]
        by_target: dict[int, list[int]] = {}
        plans = self.node.replication.plan_many(
            self.owner_id, degree, [(a, h) for a, _e, h in items]
        )
        for index, targets in enumerate(plans):
            for target in targets:
                by_target.setdefault(target, []).append(index)

        async def to_target(target: int, indexes: list[int]) -> None:
            ok = await self.node.replication.put_batch(
                target, self.owner_id, degree, [(items[i][0], items[i][1]) for i in indexes]
            )
            for index, stored in zip(indexes, ok, strict=True):
                if stored:
                    items[index][2].add(target)

        async with trio.open_nursery() as nursery:
            for target, indexes in by_target.items():
                nursery.start_soon(to_target, target, indexes)

        learned: list[tuple[bytes, int]] = []
        failures: list[str] = []

        async def finish(index: int) -> None:
            address, envelope, holders = items[index]
            if len(holders) < degree:
                await self.node.replication.replicate(
                    self.owner_id, address, degree, envelope, holders
                )
            new = holders - before[index]
            report.bytes_sent += len(envelope) * len(new)
            learned.extend((address, h) for h in new)
            if len(holders) < degree:
                failures.append(
                    f"chunk {address.hex()[:12]}… has {len(holders)} of {degree} copies"
                    f" ({len(self.node.membership.up_ids())} peers up)"
                )

        for index, (address, envelope, holders) in enumerate(items):
            if len(holders) >= degree:  # the usual case: no task needed
                new = holders - before[index]
                report.bytes_sent += len(envelope) * len(new)
                learned.extend((address, h) for h in new)
        async with trio.open_nursery() as nursery:
            for index, (_address, _envelope, holders) in enumerate(items):
                if len(holders) < degree:
                    nursery.start_soon(finish, index)
        return learned, failures
