"""Sending an owner's sealed chunks until each has its degree: one PUTCHUNKS per holder for a
whole batch, then per-chunk retries down the placement order (``Replication``); or, for a chunk
kept with a K-of-N code, its N shares each to a computer of its own (``send_coded``). Backups,
their resumption and the catalog copy send through here."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from chunkstore.catalogdb import CatalogDB
from chunkstore.keys import KeyRing
from chunkstore.shares import (
    Code,
    Share,
    ShareError,
    encode,
    is_safe,
    items_of,
    parse,
    rebuild,
    share_address,
    verify,
)

from .catalogio import CatalogIO
from .node import Node
from .offload import in_thread
from .report import Progress

log = logging.getLogger(__name__)
SHARE_ROUNDS = 3  # placement rounds for a share whose first holder did not take it
RETRIES_IN_FLIGHT = 16  # chunks whose missing shares are retried at once


class Uploader:
    def __init__(
        self,
        node: Node,
        keys: KeyRing,
        catalog: CatalogDB,
        io: CatalogIO,
        deletes_lock: trio.Lock,
    ):
        self.node = node
        self.keys = keys
        self.catalog = catalog
        self.io = io
        self.owner_id = node.node_id
        self.deletes_lock = deletes_lock  # a revive waits for owed deletes being sent

    async def live_holders(self, addresses: list[bytes], degree: int) -> dict[bytes, set[int]]:
        """The catalog's holders of what ``degree`` keeps of each chunk (the chunk itself, or
        its shares), by item address, without the nodes that are gone."""
        items = [i for a in addresses for i in items_of(a, degree)]
        known = await self.io.read(self.catalog.holders_many, items)
        gone = self.node.membership.is_gone
        return {a: {h for h in hs if not gone(h)} for a, hs in known.items()}

    async def keep(
        self,
        chunks: list[tuple[bytes, bytes]],
        degree: int,
        live: dict[bytes, set[int]],
        report: Progress,
    ) -> tuple[list[tuple[bytes, int]], list[str]]:
        """Bring each (address, envelope) to what ``degree`` asks, copies or a code's shares;
        ``live`` (from ``live_holders``) grows as holders acknowledge. Returns the new (item
        address, holder) pairs and a line per chunk still short."""
        todo = [(a, e) for a, e in chunks if not is_safe(a, degree, live)]
        if not todo:
            return [], []
        code = Code.of_degree(degree)
        if code is not None:
            return await self.send_coded(todo, code, live, report)
        return await self.send([(a, e, live.setdefault(a, set())) for a, e in todo], degree, report)

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
        await self._revive([address for address, _e, _h in items])
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

    async def send_coded(
        self,
        items: list[tuple[bytes, bytes]],
        code: Code,
        live: dict[bytes, set[int]],
        report: Progress,
    ) -> tuple[list[tuple[bytes, int]], list[str]]:
        """Bring each (address, envelope) to all N shares of ``code`` on the holders.

        ``live`` maps a share's address to the live nodes holding it (it grows as shares are
        acknowledged). A chunk's missing shares are made from its envelope and each goes to a
        node of a computer that holds none of the chunk's shares (a second share on one
        computer only when the network has too few), one PUTCHUNKS per holder for the whole
        batch, then per-share retries down the placement order. Returns the new (share
        address, holder) pairs and a line per chunk still short."""
        await self._revive([share_address(a, i) for a, _e in items for i in range(code.n)])
        todo = []
        for address, envelope in items:
            missing = [i for i in range(code.n) if not live.get(share_address(address, i))]
            if missing:
                todo.append((address, envelope, missing))
        if not todo:
            return [], []
        before = {
            share_address(a, i): set(live.get(share_address(a, i), ()))
            for a, _e, _m in todo
            for i in range(code.n)
        }
        blobs = await in_thread(
            lambda: [encode(e, a, code, self.keys.share_key) for a, e, _m in todo],
            limiter=self.node.cpu_limiter,
        )
        for index, (address, _e, missing) in enumerate(todo):
            if len(missing) < code.n:  # some shares are out there: made from this envelope?
                blobs[index] = await self._same_family(address, code, live, blobs[index])
        todo = [t for t, b in zip(todo, blobs, strict=True) if b]
        blobs = [b for b in blobs if b]
        replication = self.node.replication
        view = replication.view(self.owner_id)

        def family(address: bytes) -> set[int]:
            return {h for i in range(code.n) for h in live.get(share_address(address, i), ())}

        # Placement for each whole family, in the chunk's own order (ranking hashes every
        # candidate per chunk: a worker thread for a batch, as for copies).
        families = [(a, family(a)) for a, _e, _m in todo]
        if len(families) < 64:
            plans = view.plan(code.n, families)
        else:
            plans = await in_thread(view.plan, code.n, families)
        by_target: dict[int, list[tuple[bytes, bytes]]] = {}
        waiting: list[tuple[bytes, int, bytes]] = []  # (chunk address, number, share)
        for (address, _e, missing), shares, targets in zip(todo, blobs, plans, strict=True):
            for slot, number in enumerate(missing):
                share = shares[number]
                if slot < len(targets):
                    by_target.setdefault(targets[slot], []).append(
                        (share_address(address, number), share)
                    )
                waiting.append((address, number, share))

        async def to_target(target: int, batch: list[tuple[bytes, bytes]]) -> None:
            ok = await replication.put_batch(target, self.owner_id, 1, batch)
            report.bytes_sent += sum(len(share) for _a, share in batch)
            for (share_addr, _s), stored in zip(batch, ok, strict=True):
                if stored:
                    live.setdefault(share_addr, set()).add(target)

        async with trio.open_nursery() as nursery:
            for target, batch in by_target.items():
                nursery.start_soon(to_target, target, batch)
        by_chunk: dict[bytes, list[tuple[int, bytes]]] = {}
        for address, number, share in waiting:
            if not live.get(share_address(address, number)):
                by_chunk.setdefault(address, []).append((number, share))
        slots = trio.CapacityLimiter(RETRIES_IN_FLIGHT)

        async def retry(address: bytes, left: list[tuple[int, bytes]]) -> None:
            # One chunk's shares one after the other: two at once could pick one node.
            async with slots:
                for number, share in left:
                    await self._place_share(address, number, share, live, family, report)

        async with trio.open_nursery() as nursery:
            for address, left in by_chunk.items():
                nursery.start_soon(retry, address, left)
        learned = [(a, h) for a, had in before.items() for h in live.get(a, set()) - had]
        failures = []
        for address, _e in items:
            present = sum(1 for i in range(code.n) if live.get(share_address(address, i)))
            if present < code.n:
                failures.append(
                    f"chunk {address.hex()[:12]}… has {present} of {code.n} shares ({code})"
                    f" ({len(self.node.membership.up_ids())} peers up)"
                )
        return learned, failures

    async def _revive(self, addresses: list[bytes]) -> None:
        """Deleted content is wanted again: no owed delete may remove the new copies or
        shares about to be sent."""
        if await self.io.read(self.catalog.any_tombstoned, addresses):
            async with self.deletes_lock:
                await self.io.call(self.catalog.revive, addresses)

    async def _place_share(
        self,
        address: bytes,
        number: int,
        share: bytes,
        live: dict[bytes, set[int]],
        family: Callable[[bytes], set[int]],
        report: Progress,
    ) -> None:
        """One share to a node of a computer holding none of its chunk's shares, down the
        placement order, ``SHARE_ROUNDS`` plans at most."""
        replication = self.node.replication
        share_addr = share_address(address, number)
        tried: set[int] = set()
        for round_no in range(SHARE_ROUNDS):
            if live.get(share_addr):
                return
            holding = family(address)
            [targets] = replication.view(self.owner_id).plan(
                len(holding) + 1, [(share_addr, holding)], tried, final=round_no == SHARE_ROUNDS - 1
            )
            for target in targets:
                tried.add(target)
                if await replication.put_copy(target, self.owner_id, share_addr, 1, share):
                    live.setdefault(share_addr, set()).add(target)
                    report.bytes_sent += len(share)
                    return

    async def _same_family(
        self, address: bytes, code: Code, live: dict[bytes, set[int]], made: list[bytes]
    ) -> list[bytes]:
        """The shares to send for a chunk some of whose shares are already out there: ``made``
        if they are of the same family (the same envelope: sealed deterministically, they
        are), else the family out there made whole again from K of its shares; none (the
        chunk stays short, said as such) when neither can be had."""
        mine = parse(made[0]).family
        found: list[Share] = []
        for number in range(code.n):
            s = share_address(address, number)
            for holder in sorted(live.get(s, ())):
                got, _failed = await self.node.replication.get_envelopes(holder, self.owner_id, [s])
                try:
                    found.append(verify(got[s], s, share_key=self.keys.share_key))
                    break
                except (KeyError, ShareError):
                    continue
            if found and found[0].family == mine:
                return made
            if len(found) >= code.k:
                try:
                    return await in_thread(rebuild, found, list(range(code.n)))
                except ShareError as exc:
                    log.warning("chunk %s…: %s", address.hex()[:12], exc)
                    break
        if found:
            log.warning(
                "chunk %s…: its shares out there are of another sealing and fewer than %d of"
                " them answer: it stays short",
                address.hex()[:12],
                code.k,
            )
        else:  # none of its holders answered: nothing to check the new shares against yet
            log.info(
                "chunk %s…: no holder of its shares answered; it stays short", address.hex()[:12]
            )
        return []
