"""Getting our chunks back from their holders: verified plaintexts, batched per holder, with
failover between holders and retries for what a batch did not bring.

Used by restores, by ``check --read-data`` and by a recovery; it only reads (a holder it learns
of is added to the catalog).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import trio

from chunkstore.catalogdb import CatalogDB
from chunkstore.envelope import open_chunk
from chunkstore.errors import EnvelopeError
from chunkstore.keys import KeyRing
from chunkstore.shares import Code, share_address

from .fetch_coded import CodedFetch
from .messages import Chunk, GetChunk
from .node import Node
from .offload import in_thread
from .report import RestoreError
from .transport import PeerUnavailable, RemoteError

log = logging.getLogger(__name__)
T = TypeVar("T")
# A batch's missing chunks are asked for again in batches (other holders first, 0.25 s, 0.5 s
# apart) before one at a time, at most this many at once: a reset link fails a whole batch.
BATCH_ROUNDS = 3
SLOW_FETCHES = 16


class DbRunner(Protocol):
    """Runs a catalog call on the owner's one database thread."""

    def __call__(self, fn: Callable[..., T], *args: object) -> Awaitable[T]: ...


class Fetcher:
    def __init__(self, node: Node, keys: KeyRing, catalog: CatalogDB, db: DbRunner) -> None:
        self.node = node
        self.keys = keys
        self.catalog = catalog
        self._db = db
        self.owner_id = node.node_id
        self.failed_requests = 0  # GETCHUNKS that failed (a reset, a timeout): a busy link
        self.share_pace: dict[int, float] = {}  # holder -> seconds per share lately

    async def fetch_chunk(
        self,
        address: bytes,
        rounds: int = 5,
        known: set[int] | None = None,
        sink: Callable[[bytes], T] | None = None,
    ) -> T | bytes:
        """Get and verify one chunk, failing over between holders.

        Known holders (up ones first) are tried, then every live peer is asked who holds it;
        the whole sequence is retried with backoff, since answers can be lost. The verified
        plaintext is returned, or, with ``sink``, handed to it on the same worker thread that
        opened it (one thread hop per chunk) and its result returned.
        """
        if not known:
            known = await self._db(self.catalog.holders, address)
            if not known:  # no copies known: a coded chunk's shares, if it is kept so
                coded, lost = await self.fetch_coded_any([address])
                if address in coded:
                    if sink is None:
                        return coded[address]
                    return await in_thread(sink, coded[address], limiter=self.node.cpu_limiter)
                if address in lost:
                    raise lost[address]
        delay = 0.5
        for round_no in range(rounds):
            if known is None or round_no > 0:
                known = await self._db(self.catalog.holders, address)
            ordered = sorted(known, key=lambda h: not self.node.membership.is_up(h))
            result = await self._try_holders(address, ordered, sink)
            if result is not None:
                return result
            found = (await self.node.replication.query_holders(self.owner_id, [address]))[address]
            if found - known:
                await self._db(self.catalog.add_holders, [(address, h) for h in found])
            result = await self._try_holders(address, sorted(found - known), sink)
            if result is not None:
                return result
            if round_no < rounds - 1:
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise RestoreError(f"no reachable holder has a valid copy of chunk {address.hex()[:16]}…")

    async def get_envelopes(
        self, holder: int, addresses: list[bytes], damaged: set[bytes] | None = None
    ) -> dict[bytes, bytes]:
        """The envelopes ``holder`` gave for our ``addresses`` (not yet verified); those it
        said its copy of is damaged are added to ``damaged``, if given."""
        found, failed = await self.node.replication.get_envelopes(
            holder, self.owner_id, addresses, damaged
        )
        self.failed_requests += failed
        return found

    async def fetch_many(self, addresses: list[bytes]) -> list[bytes]:
        """Verified plaintexts of our chunks at ``addresses``, fetched in parallel; the first
        chunk no holder had a valid copy of is a RestoreError."""
        found, missing = await self.fetch_found(addresses)
        if missing:
            raise next(iter(missing.values()))
        return [found[a] for a in addresses]

    async def fetch_found(
        self, addresses: list[bytes], holders: dict[bytes, set[int]] | None = None
    ) -> tuple[dict[bytes, bytes], dict[bytes, RestoreError]]:
        """(verified plaintexts, why each missing one is missing) of our chunks at ``addresses``.

        One GETCHUNKS per holder for what it holds (the batch spread over the holders); what
        did not come back valid is asked for again in batches, from other holders first
        (``BATCH_ROUNDS`` in all), then through ``fetch_chunk``'s failover and retries.
        ``holders`` are the catalog's holders of the chunks, if the caller has them already.
        """
        unique = list(dict.fromkeys(addresses))
        if holders is None or not all(a in holders for a in unique):
            holders = await self._db(self.catalog.holders_many, unique)
        found: dict[bytes, bytes] = {}
        missing: dict[bytes, RestoreError] = {}
        uncopied = [a for a in unique if not holders[a]]
        if uncopied:  # coded chunks (kept as shares, not copies) come from their shares
            found, missing = await self.fetch_coded_any(uncopied)
            unique = [a for a in unique if a not in found and a not in missing]
        leftovers: list[bytes] = []
        tried: dict[bytes, set[int]] = {}

        def open_many(items: list[tuple[bytes, bytes]]) -> tuple[dict[bytes, bytes], list[bytes]]:
            opened, failed = {}, []
            for address, envelope in items:
                try:
                    opened[address] = open_chunk(self.keys, address, envelope)
                except EnvelopeError:
                    failed.append(address)
            return opened, failed

        async def from_holder(holder: int, batch: list[bytes], missed: list[bytes]) -> None:
            got = await self.get_envelopes(holder, batch)
            missed.extend(a for a in batch if a not in got)
            items = list(got.items())
            opened, failed = await in_thread(open_many, items, limiter=self.node.cpu_limiter)
            found.update(opened)
            missed.extend(failed)

        todo = unique
        for round_no in range(BATCH_ROUNDS):
            if round_no:  # what a batch did not bring, again in batches, other holders first
                await trio.sleep(0.25 * 2 ** (round_no - 1))
            groups: dict[int, list[bytes]] = {}
            for address in todo:
                live = [h for h in holders[address] if self.node.membership.is_up(h)]
                if not live:
                    leftovers.append(address)
                    continue
                avoid = tried.setdefault(address, set())
                choice = min(live, key=lambda h: (h in avoid, len(groups.get(h, ())), h))
                groups.setdefault(choice, []).append(address)
                avoid.add(choice)
            missed: list[bytes] = []
            async with trio.open_nursery() as nursery:
                for holder, wanted in groups.items():
                    nursery.start_soon(from_holder, holder, wanted, missed)
            todo = missed
            if not todo:
                break
        leftovers += todo

        slots = trio.CapacityLimiter(SLOW_FETCHES)

        async def slow(address: bytes) -> None:
            async with slots:
                try:
                    plain = await self.fetch_chunk(address)
                except RestoreError as exc:
                    missing[address] = exc
                    return
            assert isinstance(plain, bytes)
            found[address] = plain

        async with trio.open_nursery() as nursery:
            for address in leftovers:
                nursery.start_soon(slow, address)
        return found, missing

    async def fetch_coded(
        self,
        addresses: list[bytes],
        code: Code,
        known: dict[bytes, set[int]] | None = None,
    ) -> tuple[dict[bytes, bytes], dict[bytes, RestoreError]]:
        """(verified plaintexts, why each missing one is missing) of chunks kept with
        ``code``: K shares each from their holders (``fetch_coded.py``); ``known``: the
        catalog's holders of their shares, if the caller read them already."""

        async def learn(pairs: list[tuple[bytes, int]]) -> None:
            await self._db(self.catalog.add_holders, pairs)

        async def holders(shares: list[bytes]) -> dict[bytes, set[int]]:
            if known is not None and all(s in known for s in shares):
                return {s: set(known[s]) for s in shares}
            found: dict[bytes, set[int]] = await self._db(self.catalog.holders_many, shares)
            return found

        return await CodedFetch(
            self.node, self.keys, code, holders, learn, self.get_envelopes, self.share_pace
        ).fetch(addresses)

    async def share_holders(self, chunks: Sequence[bytes], code: Code) -> dict[bytes, set[int]]:
        """The catalog's holders of every share of these chunks (one read for a whole file)."""
        shares = [share_address(a, i) for a in dict.fromkeys(chunks) for i in range(code.n)]
        found: dict[bytes, set[int]] = await self._db(self.catalog.holders_many, shares)
        return found

    async def fetch_coded_any(
        self, addresses: list[bytes]
    ) -> tuple[dict[bytes, bytes], dict[bytes, RestoreError]]:
        """``fetch_coded`` for chunks whose code the catalog knows (those it does not are left
        out of both results: the caller looks for their copies)."""
        codes = await self._db(self.catalog.codes_of, addresses)
        by_code: dict[int, list[bytes]] = {}
        for address, degrees in codes.items():
            by_code.setdefault(max(degrees), []).append(address)
        found: dict[bytes, bytes] = {}
        missing: dict[bytes, RestoreError] = {}
        for degree, batch in by_code.items():
            code = Code.of_degree(degree)
            assert code is not None
            got, lost = await self.fetch_coded(batch, code)
            found.update(got)
            for address, error in lost.items():
                others = [d for d in codes[address] if d != degree]
                if others:  # kept with another code too: try its shares
                    other = Code.of_degree(others[0])
                    assert other is not None
                    again, _lost = await self.fetch_coded([address], other)
                    if address in again:
                        found[address] = again[address]
                        continue
                missing[address] = error
        return found, missing

    async def _try_holders(
        self, address: bytes, holders: list[int], sink: Callable[[bytes], T] | None
    ) -> T | bytes | None:
        def open_and_sink(envelope: bytes) -> T | bytes:
            plain = open_chunk(self.keys, address, envelope)
            return sink(plain) if sink is not None else plain

        for holder in holders:
            try:
                answer = await self.node.pool.request(
                    holder,
                    lambda r: GetChunk(r, self.owner_id, address),
                    self.node.config.request_timeout,
                )
                if not isinstance(answer, Chunk):
                    continue
                return await in_thread(
                    open_and_sink, answer.envelope, limiter=self.node.cpu_limiter
                )
            except (PeerUnavailable, RemoteError, EnvelopeError) as exc:
                log.info("chunk %s… from node %d: %s", address.hex()[:12], holder, exc)
        return None
