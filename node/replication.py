"""Copies of chunks on peers: which peers hold them (QUERY), where new copies go (placement,
spread over computers) and sending them (PUTCHUNKS in batches, PUTCHUNK with retries). Backup,
repair, reclaim, ``check`` and the catalog copy all send through here; nothing here decides
what to send or when.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import trio

from chunkstore.shares import Code, describe

from .membership import Membership, PeerInfo
from .messages import (
    MAX_BATCH,
    STORED_ALREADY,
    STORED_NEW,
    ChunksMany,
    ErrorCode,
    GetChunks,
    Holding,
    ProtocolError,
    PutChunk,
    PutChunks,
    Query,
    RelayChunks,
    Stored,
    StoredMany,
    put_batches,
)
from .offload import in_thread
from .placement import Candidate, choose_targets
from .pool import PeerPool
from .transport import PeerUnavailable, RemoteError

log = logging.getLogger(__name__)
QUERY_BATCH = 4096  # addresses per QUERY
REPLICATE_ROUNDS = 8  # rounds over the placement order before a copy is given up for now
BACKOFF_FIRST = 0.2  # seconds between rounds, doubling ...
BACKOFF_MAX = 5.0  # ... up to this, each with +-20 % jitter


class Replication:
    def __init__(
        self,
        node_id: int,
        host_id: str,
        membership: Membership,
        pool: PeerPool,
        request_timeout: float,
    ) -> None:
        self.node_id = node_id
        self.host_id = host_id
        self.membership = membership
        self.pool = pool
        self.request_timeout = request_timeout

    def _others(self) -> list[PeerInfo]:
        """The other nodes this one counts on: every one heard from since it started (with
        what it last said it lends), and those only heard of while not yet gone."""
        return [
            p
            for p in self.membership.peers()
            if p.last_seen > 0 or not self.membership.is_gone(p.node_id)
        ]

    def lenders(self) -> int | None:
        """How many other nodes lend space (None while one has not said what it lends)."""
        others = self._others()
        if any(not p.capacity_known for p in others):
            return None
        return sum(1 for p in others if p.capacity > 0)

    def short_of_holders(self, degree: int) -> str | None:
        """Why ``degree`` copies can never be made on this network as it stands (fewer other
        nodes lend space than the degree needs), in one line; None when they can, or when a
        known node has not said yet what it lends (it may: nothing is concluded).

        A node heard from since this one started counts with what it last said it lends, even
        silent for longer than the grace period: it may come back (a laptop away, or this very
        computer waking from sleep, when every peer looks gone until it is heard again). That
        is a wait, said as pending copies; only never hearing of enough lenders is "never"."""
        others = self._others()
        if any(not p.capacity_known for p in others):
            return None  # not heard from since this node started: its space is not known
        lending = [p for p in others if p.capacity > 0]
        code = Code.of_degree(degree)
        needed = degree if code is None else code.n
        if len(lending) >= needed:
            return None
        idle = [p for p in others if p.capacity <= 0]
        said = f"{describe(degree)} needs {needed} other nodes lending space and "
        said += f"{len(lending)} {'does' if len(lending) == 1 else 'do'}" + (
            f" (node{'' if len(lending) == 1 else 's'} {_ids(lending)})" if lending else ""
        )
        if idle:
            said += f"; node{'' if len(idle) == 1 else 's'} {_ids(idle)} lend{'s' if len(idle) == 1 else ''} 0 B"
        lower = "a lower --degree" if code is None else "a code of fewer shares (--code)"
        return said + f": give {lower}, or more space (lanvault node --quota) or computers"

    async def query_holders(
        self, owner: int, addresses: list[bytes], unanswered: set[int] | None = None
    ) -> dict[bytes, set[int]]:
        """Ask every live peer (but the owner's node) which of ``addresses`` of ``owner`` it
        holds; peers that did not answer are added to ``unanswered``."""
        result: dict[bytes, set[int]] = {a: set() for a in addresses}

        def held(peer: int, found: tuple[bytes, ...]) -> None:
            for address in found:
                if address in result:
                    result[address].add(peer)

        await self._query(owner, addresses, held, unanswered)
        return result

    async def degrees(self, owner: int, addresses: list[bytes]) -> dict[bytes, int]:
        """How many peers answer that they hold each of ``addresses`` of ``owner`` (counted,
        no set per chunk: ``state`` and ``status`` ask this for every chunk)."""
        counts: Counter[bytes] = Counter()

        def held(_peer: int, found: tuple[bytes, ...]) -> None:
            counts.update(set(found))  # in C, 100,000 at a time; a repeat counts once

        await self._query(owner, addresses, held, None)
        return {a: counts[a] for a in addresses}  # what was asked, nothing else

    async def _query(
        self,
        owner: int,
        addresses: list[bytes],
        held: Callable[[int, tuple[bytes, ...]], None],
        unanswered: set[int] | None,
    ) -> None:
        """QUERY every live peer but the owner's node, QUERY_BATCH addresses at a time, all at
        once; ``held(peer, addresses)`` for each answer; a peer that does not answer after
        three tries goes to ``unanswered``."""

        async def ask(peer: int, batch: list[bytes]) -> None:
            for attempt in range(3):  # queries are idempotent: retry lost ones
                answer = await self.pool.request_quietly(
                    peer, lambda r: Query(r, owner, tuple(batch)), self.request_timeout
                )
                if isinstance(answer, Holding):
                    held(peer, answer.addresses)
                    return
                await trio.sleep(0.2 * 2**attempt)
            if unanswered is not None:
                unanswered.add(peer)

        async with trio.open_nursery() as nursery:
            for peer in self.membership.up_ids():
                if peer == owner:
                    continue  # placement never puts a chunk on its owner's node: not asked
                for i in range(0, len(addresses), QUERY_BATCH):
                    nursery.start_soon(ask, peer, addresses[i : i + QUERY_BATCH])

    async def get_envelopes(
        self,
        holder: int,
        owner: int,
        addresses: list[bytes],
        damaged: set[bytes] | None = None,
    ) -> tuple[dict[bytes, bytes], int]:
        """The envelopes of ``owner``'s chunks ``holder`` gave for ``addresses`` (not verified),
        and how many requests failed; those it said its copy of is damaged are added to
        ``damaged``, if given.

        One GETCHUNKS per MAX_BATCH addresses, all at once; a request that fails gives none of
        its chunks (the caller looks elsewhere for what is missing).
        """
        found: dict[bytes, bytes] = {}
        failed = 0

        async def one_request(batch: list[bytes]) -> None:
            nonlocal failed
            try:
                answer = await self.pool.request(
                    holder,
                    functools.partial(GetChunks, owner=owner, addresses=tuple(batch)),
                    self.request_timeout,
                )
            except (PeerUnavailable, RemoteError) as exc:
                log.info("batch from node %d failed: %s", holder, exc)
                failed += 1
                return
            if not isinstance(answer, ChunksMany) or len(answer.codes) != len(batch):
                return
            for address, envelope, code in zip(batch, answer.envelopes, answer.codes, strict=True):
                if code == 0:
                    found[address] = envelope
                elif code == ErrorCode.CORRUPT and damaged is not None:
                    damaged.add(address)

        if len(addresses) <= MAX_BATCH:
            await one_request(addresses)
        else:
            async with trio.open_nursery() as nursery:
                for i in range(0, len(addresses), MAX_BATCH):
                    nursery.start_soon(one_request, addresses[i : i + MAX_BATCH])
        return found, failed

    async def put_copy(
        self, target: int, owner: int, address: bytes, degree: int, envelope: bytes
    ) -> bool:
        """Send one copy; True once the target acknowledged it durable."""
        try:
            answer = await self.pool.request(
                target,
                lambda r: PutChunk(r, owner, address, degree, envelope),
                self.request_timeout,
            )
        except (PeerUnavailable, RemoteError) as exc:
            log.info("copy to node %d failed: %s", target, exc)
            return False
        return isinstance(answer, Stored)

    def plan_targets(
        self,
        owner: int,
        address: bytes,
        degree: int,
        holders: set[int],
        tried: set[int],
        final: bool,
        avoid: Collection[int] = (),
    ) -> list[int]:
        """New holders for a chunk by placement, spread over computers (see ``replicate``)."""
        return self.view(owner).plan(degree, [(address, holders)], tried, final, avoid)[0]

    def plan_many(
        self,
        owner: int,
        degree: int,
        chunks: Sequence[tuple[bytes, set[int]]],
        tried: Collection[int] = (),
        final: bool = False,
    ) -> list[list[int]]:
        """``plan_targets`` for each (address, holders) of a batch; the view of the network
        (candidates, computers) is taken once for the whole batch."""
        return self.view(owner).plan(degree, chunks, tried, final)

    async def plan_many_off_loop(
        self, owner: int, degree: int, chunks: Sequence[tuple[bytes, set[int]]]
    ) -> list[list[int]]:
        """``plan_many`` with the hashing on a worker thread (a backup of small files ranks
        a chunk per file): the view is taken here, on the event loop, as it is now."""
        view = self.view(owner)
        if len(chunks) < 64:
            return view.plan(degree, chunks)
        return await in_thread(view.plan, degree, chunks)

    def view(self, owner: int) -> PlacementView:
        """The network as placement sees it now, for ``owner``'s chunks."""
        membership = self.membership
        hosts = {p.node_id: membership.host_of(p.node_id) for p in membership.peers()}
        return PlacementView(
            node_id=self.node_id,
            host_id=self.host_id,
            owner=owner,
            owner_host=self.host_id if owner == self.node_id else membership.host_of(owner),
            candidates=membership.candidates(),
            # Computers with a node that is not gone (down ones included: they may come back).
            live_hosts=[
                (p.node_id, hosts[p.node_id])
                for p in membership.peers()
                if not membership.is_gone(p.node_id)
            ],
            hosts=hosts,
        )

    async def put_batch(
        self,
        target: int,
        owner: int,
        degree: int,
        items: list[tuple[bytes, bytes]],
        forward: tuple[int, ...] = (),
    ) -> list[bool]:
        """Store chunks on ``target`` in as few PUTCHUNKS as its protocol version and the frame
        size allow, all sent at once; True where the target stored the chunk durably.

        With ``forward``, the target passes them on, once stored, to ``forward[0]``, which passes
        them to the next (RELAYCHUNKS, when the target speaks protocol version 3; an older one
        gets a plain PUTCHUNKS and the chain stops there). The answer comes once the chain is
        done, so each hop's wait is given a request timeout per holder after it. What the
        holders after ``target`` stored is not said here: ask them (``held_by``)."""
        stored = [False] * len(items)
        try:
            channel = (await self.pool.link(target)).channel
        except PeerUnavailable as exc:
            log.info("batch to node %d failed: %s", target, exc)
            return stored
        limit = channel.put_limit
        relayed = bool(forward) and channel.relays
        timeout = self.request_timeout * (1 + len(forward) if relayed else 1)

        async def one(start: int, end: int) -> None:
            chunks = tuple(items[start:end])
            make: Callable[[int], PutChunks | RelayChunks] = (
                functools.partial(
                    RelayChunks, owner=owner, degree=degree, forward=forward, chunks=chunks
                )
                if relayed
                else functools.partial(PutChunks, owner=owner, degree=degree, chunks=chunks)
            )
            try:
                answer = await self.pool.request(target, make, timeout)
            except (PeerUnavailable, RemoteError, ProtocolError) as exc:
                # ProtocolError: the link was dialled again meanwhile, to an older version.
                log.info("batch to node %d failed: %s", target, exc)
                return
            if isinstance(answer, StoredMany) and len(answer.results) == len(chunks):
                stored[start:end] = [r in (STORED_NEW, STORED_ALREADY) for r in answer.results]

        async with trio.open_nursery() as nursery:
            for start, end in put_batches([len(e) for _a, e in items], limit):
                nursery.start_soon(one, start, end)
        return stored

    async def relay(self, message: RelayChunks) -> None:
        """A holder's part in a chain: pass a RELAYCHUNKS it received on to the next holder it
        names, with the rest of the list. Nothing is answered for the next holders: the owner
        asks each one itself what it holds. Ids that are this node's or the owner's are
        skipped (placement never names them: a confused or hostile sender)."""
        chain = tuple(n for n in message.forward if n not in (self.node_id, message.owner))
        if chain:
            await self.put_batch(
                chain[0], message.owner, message.degree, list(message.chunks), chain[1:]
            )

    async def held_by(self, holder: int, owner: int, addresses: list[bytes]) -> set[bytes]:
        """Which of ``addresses`` of ``owner`` ``holder`` says it holds (QUERY; nothing if it
        does not answer): a copy made along a chain counts only by its holder's own word."""
        found: set[bytes] = set()

        async def ask(batch: list[bytes]) -> None:
            answer = await self.pool.request_quietly(
                holder, lambda r: Query(r, owner, tuple(batch)), self.request_timeout
            )
            if isinstance(answer, Holding):
                found.update(set(answer.addresses) & set(batch))

        async with trio.open_nursery() as nursery:
            for i in range(0, len(addresses), QUERY_BATCH):
                nursery.start_soon(ask, addresses[i : i + QUERY_BATCH])
        return found

    async def replicate(
        self,
        owner: int,
        address: bytes,
        degree: int,
        envelope: bytes,
        holders: set[int],
        rounds: int = REPLICATE_ROUNDS,
        failed: Collection[int] = (),
        avoid: Collection[int] = (),
    ) -> int:
        """Make copies until ``holders`` reaches ``degree``; returns how many were made.

        Each round tries the best placement targets not yet holding the chunk (the first
        round skips ``failed``, which has just failed to take it); a target that fails is
        skipped for the rest of the round and the next in placement order is used.
        Between rounds the sender backs off (0.2 s doubling to 5 s, with jitter). Copies go to
        computers that hold none yet (the owner's own computer included among those to avoid);
        a second copy on one computer is made only when the network has too few computers, or
        as a last resort when the missing computers stay unreachable. With no peer up at all it
        still waits the rounds out: right after a peer's link breaks the others can look down
        for a moment (the partition scenario saw it), and a backup must not give up on that.
        ``avoid``: nodes whose computers get no copy while another will do (the holders of a
        share's siblings: one computer lost must not take two shares of a chunk).
        """
        made = 0
        delay = BACKOFF_FIRST
        for round_no in range(rounds):
            # ``failed`` just refused or missed this chunk (down a chain): not asked at once.
            tried: set[int] = set(failed) if round_no == 0 else set()
            while len(holders) < degree:
                targets = self.plan_targets(
                    owner,
                    address,
                    degree,
                    holders,
                    tried,
                    final=round_no == rounds - 1,
                    avoid=avoid,
                )
                if not targets:
                    break
                results: dict[int, bool] = {}

                async def one(target: int, out: dict[int, bool]) -> None:
                    out[target] = await self.put_copy(target, owner, address, degree, envelope)

                async with trio.open_nursery() as nursery:
                    for target_id in targets:
                        tried.add(target_id)
                        nursery.start_soon(one, target_id, results)
                for target_id, ok in results.items():
                    if ok:
                        holders.add(target_id)
                        made += 1
            if len(holders) >= degree or round_no == rounds - 1:
                break
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX)
        return made


def _ids(peers: Sequence[PeerInfo]) -> str:
    return ", ".join(str(p.node_id) for p in peers)


@dataclass(frozen=True, slots=True)
class PlacementView:
    """What placement needs of the network, taken at one instant: planning a batch from it
    touches nothing else (so it may run on a worker thread)."""

    node_id: int
    host_id: str
    owner: int
    owner_host: str
    candidates: list[Candidate]
    live_hosts: list[tuple[int, str]]
    hosts: dict[int, str]  # node -> its computer, for the nodes known

    def host_of(self, node_id: int) -> str:
        return self.hosts.get(node_id) or f"node-{node_id}"

    def plan(
        self,
        degree: int,
        chunks: Sequence[tuple[bytes, set[int]]],
        tried: Collection[int] = (),
        final: bool = False,
        avoid: Collection[int] = (),
    ) -> list[list[int]]:
        """New holders for each (address, holders), by placement, spread over computers
        (and not on the computers of ``avoid`` while others will do)."""
        owner = self.owner
        key_prefix = owner.to_bytes(4, "big")
        plans: list[list[int]] = []
        shunned = {self.host_of(a) for a in avoid}
        for address, holders in chunks:
            busy = {self.host_of(h) for h in holders} | {self.owner_host} | shunned
            if self.node_id in holders:
                busy.add(self.host_id)
            skip = holders | {owner, self.node_id} | set(avoid)
            spare_hosts = {host for node, host in self.live_hosts if node not in skip} - busy
            strict = not final and len(spare_hosts) >= degree - len(holders)
            targets = choose_targets(
                key_prefix + address,
                self.candidates,
                owner,
                degree - len(holders),
                exclude=[*holders, *tried, *avoid, self.node_id],
                avoid_hosts=busy,
                allow_same_host=not strict,
            )
            plans.append([t.node_id for t in targets])
        return plans
