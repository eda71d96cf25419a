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

        First the batch down its chains of holders (``Replication.put_batch`` with a forward
        list; a chain's copies after the first are confirmed by QUERY), or one PUTCHUNKS per
        target holder when relaying is off; then, for any chunk still short, per-chunk retries
        with backoff moving down the placement order, sent by this node itself. ``holders`` sets
        grow as copies are acknowledged. Returns the new (address, holder) pairs and the
        chunks that stayed short.
        """
        addresses = [address for address, _e, _h in items]
        if await self.io.read(self.catalog.any_tombstoned, addresses):
            # Deleted content is wanted again: no owed delete may remove the new copies.
            async with self.deletes_lock:
                await self.io.call(self.catalog.revive, addresses)
        before = [set(holders) for _a, _e, holders in items]
        plans = await self.node.replication.plan_many_off_loop(
            self.owner_id, degree, [(a, h) for a, _e, h in items]
        )
        # With relaying, the chunks with the same targets go to the first, which passes them
        # down the chain: this node sends each byte once. Without, one batch per target.
        by_chain: dict[tuple[int, ...], list[int]] = {}
        for index, targets in enumerate(plans):
            if self.node.config.relay and targets:
                by_chain.setdefault(tuple(targets), []).append(index)
            else:
                for target in targets:
                    by_chain.setdefault((target,), []).append(index)

        missed: dict[int, set[int]] = {}  # chunk index -> the chain's holders that lack it

        async def down_chain(chain: tuple[int, ...], indexes: list[int]) -> None:
            replication = self.node.replication
            batch = [(items[i][0], items[i][1]) for i in indexes]
            ok = await replication.put_batch(chain[0], self.owner_id, degree, batch, chain[1:])
            report.bytes_sent += sum(len(envelope) for _a, envelope in batch)  # once, whatever
            for index, stored in zip(indexes, ok, strict=True):
                if stored:
                    items[index][2].add(chain[0])
                else:
                    missed.setdefault(index, set()).add(chain[0])
            # A copy further down counts only when its holder says so itself.
            addresses = [address for address, _e in batch]

            async def confirm(holder: int) -> None:
                held = await replication.held_by(holder, self.owner_id, addresses)
                for index in indexes:
                    if items[index][0] in held:
                        items[index][2].add(holder)
                    else:
                        missed.setdefault(index, set()).add(holder)

            async with trio.open_nursery() as nursery:
                for holder in chain[1:]:
                    nursery.start_soon(confirm, holder)

        async with trio.open_nursery() as nursery:
            for chain, indexes in by_chain.items():
                nursery.start_soon(down_chain, chain, indexes)

        learned: list[tuple[bytes, int]] = []
        failures: list[str] = []

        async def finish(index: int) -> None:
            address, envelope, holders = items[index]
            if len(holders) < degree:
                made = await self.node.replication.replicate(
                    self.owner_id, address, degree, envelope, holders, failed=missed.get(index, ())
                )
                report.bytes_sent += len(envelope) * made  # sent by this node, one by one
            learned.extend((address, h) for h in holders - before[index])
            if len(holders) < degree:
                failures.append(
                    f"chunk {address.hex()[:12]}… has {len(holders)} of {degree} copies"
                    f" ({len(self.node.membership.up_ids())} peers up)"
                )

        for index, (address, _envelope, holders) in enumerate(items):
            if len(holders) >= degree:  # the usual case: no task needed
                learned.extend((address, h) for h in holders - before[index])
        async with trio.open_nursery() as nursery:
            for index, (_address, _envelope, holders) in enumerate(items):
                if len(holders) < degree:
                    nursery.start_soon(finish, index)
        return learned, failures
