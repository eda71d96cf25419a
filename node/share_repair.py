"""Repair of erasure-coded chunks: a chunk's N shares brought back from any K of them, by a
holder, without keys (``chunkstore/shares.py``).

A pass groups the shares this node holds by chunk and asks every live peer which of each
chunk's N share addresses it holds. A share number is present when a live holder says so, or
when a holder now down but not yet gone was seen with it by the last pass (down is not gone).
All N present: nothing to do. Fewer, but holders down and not yet gone could make up the N:
the pass waits. Otherwise the lowest id among the chunk's live share holders rebuilds the
missing numbers, if the owner still wants the chunk (asked by the chunk's address, as for a
copy): it fetches shares from their holders until it has K, checks each against the family of
the share it holds itself (which came from the owner; a holder's word is not trusted), rebuilds
the missing shares (refused if they do not match the family's digests) and places each on a
computer holding none of the chunk's shares. With fewer than K present nothing can be rebuilt
now: the pass counts the chunk as out of reach (a holder down may bring shares back).
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from chunkstore.errors import ChunkNotFoundError
from chunkstore.shares import Share, ShareError, ShareRef, parse, rebuild, verify
from chunkstore.store import ChunkStore, StoredChunk

from .membership import Membership
from .offload import in_thread
from .replication import Replication

log = logging.getLogger(__name__)
PLACE_ROUNDS = 3  # placement tries for each rebuilt share in one pass (the next pass tries again)

Wanted = Callable[[dict[int, list[bytes]]], Awaitable[dict[int, set[bytes] | None]]]


class ShareDecision(enum.Enum):
    COMPLETE = "all N shares present"
    WAIT = "shares missing, but holders down and not yet gone may bring them back"
    REBUILD = "shares missing: rebuild them from any K"
    OUT_OF_REACH = "fewer than K shares present: nothing can be rebuilt now"


def share_decision(k: int, n: int, present: set[int], unsure: int) -> ShareDecision:
    """The repair policy for one coded chunk: ``present`` share numbers (on live holders, or
    remembered on holders down and not yet gone), ``unsure`` nodes down and not yet gone,
    not among those, that the pass could not ask (each may hold one share).
    ``lanvault simulate`` runs this same function for codes over simulated years."""
    if len(present) >= n:
        return ShareDecision.COMPLETE
    if len(present) + unsure >= n:
        return ShareDecision.WAIT
    if len(present) < k:
        return ShareDecision.OUT_OF_REACH
    return ShareDecision.REBUILD


@dataclass(slots=True)
class ShareReport:
    chunks: int = 0  # coded chunks this node holds a share of
    below: int = 0  # of those, with shares missing
    made: int = 0  # shares rebuilt and stored on a new holder
    failed: int = 0  # shares this node should have rebuilt and could not (yet)
    out_of_reach: int = 0  # chunks with fewer than K shares present
    unwanted: int = 0  # deleted by their owner: never rebuilt
    unconfirmed: int = 0  # their owner is up but did not say whether it still wants them


@dataclass(slots=True)
class _Family:
    owner: int
    ref: ShareRef  # of the share held here
    holders: dict[int, set[int]]  # share number -> nodes holding it (live, or remembered)
    live: dict[int, set[int]]  # share number -> live nodes holding it (this one included)


class ShareRepairer:
    def __init__(
        self,
        node_id: int,
        store: ChunkStore,
        membership: Membership,
        replication: Replication,
        disk_limiter: trio.CapacityLimiter,
        wanted: Wanted,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.membership = membership
        self.replication = replication
        self.disk_limiter = disk_limiter
        self.wanted = wanted
        # (owner, share address) -> nodes seen holding it by the last pass
        self._seen: dict[tuple[int, bytes], set[int]] = {}

    async def repair_pass(
        self, held: list[StoredChunk], unsure: set[int], pace: Callable[[int], Awaitable[None]]
    ) -> ShareReport:
        """One pass over the shares in ``held``; ``pace(bytes)`` after each share sent (the
        repair's rate bound)."""
        report = ShareReport()
        by_owner: dict[int, dict[bytes, ShareRef]] = defaultdict(dict)
        for chunk in held:
            if chunk.share is not None:
                by_owner[chunk.owner].setdefault(chunk.share.chunk_address, chunk.share)
        previous, self._seen = self._seen, {}
        todo: list[_Family] = []
        for owner, refs in by_owner.items():
            addresses = [a for ref in refs.values() for a in ref.siblings()]
            found = await self.replication.query_holders(owner, addresses, unsure)
            held_here = {c.address for c in held if c.owner == owner}
            for ref in refs.values():
                report.chunks += 1
                family = _Family(owner, ref, {}, {})
                for number, address in enumerate(ref.siblings()):
                    live = found[address] | ({self.node_id} if address in held_here else set())
                    remembered = {
                        p
                        for p in previous.get((owner, address), set())
                        if not self.membership.is_up(p) and not self.membership.is_gone(p)
                    }
                    if live | remembered:
                        family.holders[number] = live | remembered
                        self._seen[(owner, address)] = live | remembered
                    if live:
                        family.live[number] = live
                # Down nodes already counted by a share they were seen with are not counted
                # again as maybe holding one.
                counted = {node for nodes in family.holders.values() for node in nodes}
                decision = share_decision(
                    ref.k, ref.n, set(family.holders), len(unsure - {owner} - counted)
                )
                if decision is ShareDecision.COMPLETE:
                    continue
                report.below += 1
                if decision is ShareDecision.OUT_OF_REACH:
                    report.out_of_reach += 1
                    continue
                lowest = min(node for nodes in family.live.values() for node in nodes)
                if decision is ShareDecision.REBUILD and lowest == self.node_id:
                    todo.append(family)
        todo = await self._still_wanted(todo, report)
        todo.sort(key=lambda f: len(f.holders) - f.ref.k)  # the fewest spare shares first
        for family in todo:
            await self._rebuild(family, report, pace)
        return report

    async def _still_wanted(self, todo: list[_Family], report: ShareReport) -> list[_Family]:
        asked: dict[int, list[bytes]] = defaultdict(list)
        for family in todo:
            if family.owner != self.node_id and self.membership.is_up(family.owner):
                asked[family.owner].append(family.ref.chunk_address)
        answers = await self.wanted(dict(asked)) if asked else {}
        kept = []
        for family in todo:
            if family.owner not in answers:
                kept.append(family)  # the owner is down: rebuild, as for copies
                continue
            answer = answers[family.owner]
            if answer is None:
                report.unconfirmed += 1
            elif family.ref.chunk_address in answer:
                kept.append(family)
            else:
                report.unwanted += 1
        return kept

    async def _gather(self, family: _Family) -> list[Share] | None:
        """K verified shares of the chunk: this node's own first, then its siblings' from
        their live holders, each checked against the family of this node's own."""
        ref, owner = family.ref, family.owner
        try:
            blob = await in_thread(self.store.get, owner, ref.address, limiter=self.disk_limiter)
        except ChunkNotFoundError:
            return None  # deleted here meanwhile
        except Exception as exc:  # a bad copy here (the scrub drops it), or the disk: this
            # chunk is not rebuilt from here now; the pass goes on with the others
            log.warning("cannot read a share to repair its chunk: %s", exc)
            return []
        try:
            mine = parse(blob)
        except ShareError as exc:  # not a share after all: nothing to rebuild from here
            log.warning("a share held here cannot be read back as one: %s", exc)
            return []
        got = [mine]
        for number, nodes in sorted(family.live.items()):
            if len(got) >= ref.k:
                break
            if number == ref.number:
                continue
            address = ref.siblings()[number]
            for node in sorted(nodes - {self.node_id}):
                found, _failed = await self.replication.get_envelopes(node, owner, [address])
                if address not in found:
                    continue
                try:
                    got.append(verify(found[address], address, family=mine.family))
                    break
                except ShareError as exc:
                    log.warning("share %d of a chunk from node %d refused: %s", number, node, exc)
        return got if len(got) >= ref.k else []

    async def _rebuild(
        self, family: _Family, report: ShareReport, pace: Callable[[int], Awaitable[None]]
    ) -> None:
        ref = family.ref
        missing = [i for i in range(ref.n) if i not in family.holders]
        shares = await self._gather(family)
        if shares is None:
            return
        if not shares:
            report.failed += len(missing)
            return
        try:
            blobs = await in_thread(rebuild, shares, missing)
        except ShareError as exc:
            log.warning("shares of a chunk of node %d not rebuilt: %s", family.owner, exc)
            report.failed += len(missing)
            return
        holding = {node for nodes in family.holders.values() for node in nodes}
        for number, blob in zip(missing, blobs, strict=True):
            address = ref.siblings()[number]
            target = await self._place(family.owner, address, blob, holding)
            if target is None:
                report.failed += 1
                continue
            holding.add(target)
            family.holders[number] = {target}
            self._seen[(family.owner, address)] = {target}
            report.made += 1
            await pace(len(blob))

    async def _place(
        self, owner: int, address: bytes, blob: bytes, holding: set[int]
    ) -> int | None:
        """Store one rebuilt share on a node that holds none of the chunk's shares, on a
        computer that holds none either while there is one; the node that took it."""
        tried: set[int] = set()
        for round_no in range(PLACE_ROUNDS):
            view = self.replication.view(owner)
            [targets] = view.plan(
                len(holding) + 1, [(address, holding)], tried, final=round_no == PLACE_ROUNDS - 1
            )
            for target in targets:
                tried.add(target)
                if await self.replication.put_copy(target, owner, address, 1, blob):
                    return target
        return None
