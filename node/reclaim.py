"""Lending less: a holder gives back space by moving chunks elsewhere, then dropping them.

A chunk is dropped only once enough other holders have a copy (its degree, not counting this
node; a share of a coded chunk, once another node has it, on a computer holding none of the
chunk's other shares), each shown: a holder that only answered QUERY that it has one must hand it over, the
same bytes as this node's (a member may lie); the copies it must make first are made a few at a time in parallel, and a chunk no
other computer can take (the others down or full) is kept, not waited on for ever: the
report says how many, and the node tries again at each repair pass until it is within its
quota. Chunks that arrive while it works (their puts admitted before the quota came down)
are dropped too: it goes on until the store is within the quota or only kept chunks are left.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from chunkstore import crashpoints
from chunkstore.store import StoredChunk

from .messages import Removed
from .offload import in_thread

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

RECLAIM_BATCH = 256  # chunks whose holders are asked about, and dropped, at a time
COPIES_IN_FLIGHT = 16  # copies made at once before dropping
COPY_ROUNDS = 3  # attempts per chunk (backing off 0.2 s, 0.4 s) before it is kept for now


@dataclass(slots=True)
class ReclaimReport:
    dropped: int = 0  # chunks dropped here (each has its degree elsewhere)
    copied: int = 0  # copies made elsewhere first
    freed_bytes: int = 0
    to_free_bytes: int = 0  # what had to go when it began
    kept: int = 0  # chunks kept over the quota: no other computer could take a copy now
    kept_bytes: int = 0
    peers_up: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "dropped": self.dropped,
            "copied": self.copied,
            "freed_bytes": self.freed_bytes,
            "kept": self.kept,
            "kept_bytes": self.kept_bytes,
            "peers_up": self.peers_up,
        }


async def reclaim(
    node: Node, capacity: int, progress: Callable[[ReclaimReport], None] | None = None
) -> ReclaimReport:
    """Lend at most ``capacity`` bytes: copy what must go elsewhere first, then drop it."""
    store = node.store
    await in_thread(store.set_capacity, capacity, limiter=node.disk_limiter)
    report = ReclaimReport(to_free_bytes=max(0, store.used_bytes - capacity))
    kept: dict[tuple[int, bytes], int] = {}  # chunk -> its length
    while store.used_bytes > capacity:
        chunks = await in_thread(store.chunks, limiter=node.disk_limiter)
        # The most replicated and the oldest go first: the cheapest to lose here.
        chunks.sort(key=lambda c: (c.degree, c.stored_at), reverse=True)
        excess = store.used_bytes - capacity
        victims: list[StoredChunk] = []
        for chunk in chunks:
            if excess <= 0:
                break
            if (chunk.owner, chunk.address) not in kept:
                victims.append(chunk)
                excess -= chunk.length
        if not victims:
            break  # what is left is kept chunks, or the owners' records
        for start in range(0, len(victims), RECLAIM_BATCH):
            await _move_batch(node, victims[start : start + RECLAIM_BATCH], report, kept)
            if progress is not None:
                progress(report)
    if report.dropped:
        await in_thread(store.compact, 0.0, limiter=node.disk_limiter)
    held = {(c.owner, c.address) for c in await in_thread(store.chunks)}
    still = [key for key in kept if key in held]
    report.kept = len(still)
    report.kept_bytes = sum(kept[key] for key in still)
    report.peers_up = sorted(node.membership.up_ids())
    if report.dropped or report.kept:
        log.info(
            "reclaim: dropped %d chunks (%d bytes), made %d copies first; %d chunks (%d bytes)"
            " kept over the quota: no other computer could take a copy (nodes up: %s)",
            report.dropped,
            report.freed_bytes,
            report.copied,
            report.kept,
            report.kept_bytes,
            ", ".join(map(str, report.peers_up)) or "none",
        )
    return report


async def _move_batch(
    node: Node,
    batch: list[StoredChunk],
    report: ReclaimReport,
    kept: dict[tuple[int, bytes], int],
) -> None:
    """Make the copies this batch's chunks still need elsewhere, then drop those that have
    them (one transaction per owner) and tell their other holders."""
    by_owner: dict[int, list[StoredChunk]] = {}
    for chunk in batch:
        by_owner.setdefault(chunk.owner, []).append(chunk)
    slots = trio.CapacityLimiter(COPIES_IN_FLIGHT)
    for owner, owned in by_owner.items():
        found = await node.replication.query_holders(owner, [c.address for c in owned])
        others = {c.address: found[c.address] - {node.node_id} for c in owned}
        avoid = await _siblings_held(node, owner, owned)
        claimed = {a: set(h) for a, h in others.items()}  # what HOLDING said, not yet shown
        ready: list[StoredChunk] = []

        async with trio.open_nursery() as nursery:
            for chunk in owned:
                nursery.start_soon(
                    _copy_first,
                    node,
                    chunk,
                    others[chunk.address],
                    avoid.get(chunk.address, set()),
                    ready,
                    kept,
                    report,
                    slots,
                )
        if ready:
            ready = await _shown(node, owner, ready, others, claimed, avoid, kept, report)
        if not ready:
            continue
        if report.copied:
            crashpoints.reached("reclaim.copied")
        removed = set(
            await in_thread(
                node.store.delete_many,
                owner,
                [c.address for c in ready],
                limiter=node.disk_limiter,
            )
        )
        gone = [c for c in ready if c.address in removed]
        report.dropped += len(gone)
        report.freed_bytes += sum(c.length for c in gone)
        async with trio.open_nursery() as nursery:
            for chunk in gone:
                notice = functools.partial(
                    Removed, owner=chunk.owner, address=chunk.address, degree=chunk.degree
                )
                for peer in others[chunk.address]:
                    nursery.start_soon(_tell, node, peer, notice, slots)


async def _shown(
    node: Node,
    owner: int,
    ready: list[StoredChunk],
    others: dict[bytes, set[int]],
    claimed: dict[bytes, set[int]],
    avoid: dict[bytes, set[int]],
    kept: dict[tuple[int, bytes], int],
    report: ReclaimReport,
) -> list[StoredChunk]:
    """Those of ``ready`` whose other copies are shown, not only claimed: a member may answer
    QUERY that it holds what it does not, and this node's copy must not go on its word. Each
    holder that only said so hands its copies over (GETCHUNKS) and they must be this node's
    bytes; one that does not is not counted, the copy is made elsewhere if it can be, and
    the chunk is kept if not. (A holder that answered STORED to a copy just made counts.)"""
    addresses = [c.address for c in ready]
    ours = await in_thread(node.store.get_many, owner, addresses, limiter=node.disk_limiter)
    mine = {a: e for a, e in zip(addresses, ours, strict=True) if isinstance(e, bytes)}
    by_holder: dict[int, list[bytes]] = {}
    for address in mine:
        for holder in claimed[address] & others[address]:
            by_holder.setdefault(holder, []).append(address)
    liars: dict[int, int] = {}

    async def show(holder: int, wanted: list[bytes]) -> None:
        got, _failed = await node.replication.get_envelopes(holder, owner, wanted)
        for address in wanted:
            if got.get(address) != mine[address]:
                others[address].discard(holder)
                liars[holder] = liars.get(holder, 0) + 1

    async with trio.open_nursery() as nursery:
        for holder, wanted in by_holder.items():
            nursery.start_soon(show, holder, wanted)
    for holder, count in sorted(liars.items()):
        log.warning(
            "reclaim: node %d did not hand over %d chunks it said it holds; not counted",
            holder,
            count,
        )
    shown: list[StoredChunk] = []
    for chunk in ready:
        envelope = mine.get(chunk.address)
        holders = others[chunk.address]
        if envelope is not None and len(holders) < chunk.degree:
            report.copied += await _copy(node, chunk, envelope, holders, avoid.get(chunk.address))
        if envelope is not None and len(holders) >= chunk.degree:
            shown.append(chunk)
        else:
            kept[(chunk.owner, chunk.address)] = chunk.length
    return shown


async def _copy_first(
    node: Node,
    chunk: StoredChunk,
    holders: set[int],
    avoid: set[int],
    ready: list[StoredChunk],
    kept: dict[tuple[int, bytes], int],
    report: ReclaimReport,
    slots: trio.CapacityLimiter,
) -> None:
    """Bring ``chunk``'s other ``holders`` up to its degree; then it is ready to drop."""
    async with slots:
        if len(holders) < chunk.degree:
            try:
                envelope = await in_thread(
                    node.store.get, chunk.owner, chunk.address, limiter=node.disk_limiter
                )
            except Exception as exc:  # a bad copy here: its other holders make it again
                log.info("reclaim: chunk not copied (%s)", exc)
                kept[(chunk.owner, chunk.address)] = chunk.length
                return
            report.copied += await _copy(node, chunk, envelope, holders, avoid)
        if len(holders) >= chunk.degree:
            ready.append(chunk)
        else:
            kept[(chunk.owner, chunk.address)] = chunk.length


async def _copy(
    node: Node, chunk: StoredChunk, envelope: bytes, holders: set[int], avoid: set[int] | None
) -> int:
    """Copies of ``chunk`` made elsewhere until ``holders`` reach its degree (a share: not on
    a computer of ``avoid``, its chunk's other shares' holders)."""
    return await node.replication.replicate(
        chunk.owner,
        chunk.address,
        chunk.degree,
        envelope,
        holders,
        rounds=COPY_ROUNDS,
        avoid=avoid or (),
    )


async def _siblings_held(node: Node, owner: int, owned: list[StoredChunk]) -> dict[bytes, set[int]]:
    """For each share among ``owned``: the other nodes holding its chunk's other shares (a
    share moved away must not go to a computer of theirs)."""
    shares = [c for c in owned if c.share is not None]
    if not shares:
        return {}
    wanted = [s for c in shares if c.share is not None for s in c.share.siblings()]
    found = await node.replication.query_holders(owner, wanted)
    avoid: dict[bytes, set[int]] = {}
    for chunk in shares:
        assert chunk.share is not None
        siblings = [s for s in chunk.share.siblings() if s != chunk.address]
        avoid[chunk.address] = set().union(*(found[s] for s in siblings)) - {node.node_id}
    return avoid


async def _tell(
    node: Node, peer: int, notice: functools.partial[Removed], slots: trio.CapacityLimiter
) -> None:
    async with slots:
        await node.pool.request_quietly(peer, notice, 5)
