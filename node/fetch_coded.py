"""Getting erasure-coded chunks back: K of each chunk's N shares from their holders, each
verified alone with the owner's key (``chunkstore/shares.py``), decoded and opened.

A batch asks each holder once (GETCHUNKS of the share addresses it holds), each chunk's K
shares of the holders that would give them soonest (their queue in this batch times the
seconds a share took them lately), so that the batch is spread and the fastest do most; a chunk short of K good
shares is asked again from holders not yet asked for it; once none is left, every live peer is
asked which shares it holds (a holder's repair may have put one where the catalog does not
know) and those are tried; then the whole once more after a pause.
A share that fails its check is never used: the chunk comes back exactly as sealed, or not
at all (a RestoreError naming it).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

import trio

from chunkstore.envelope import open_chunk
from chunkstore.errors import EnvelopeError
from chunkstore.keys import KeyRing
from chunkstore.shares import Code, Share, ShareError, decode, share_address, verify

from .node import Node
from .offload import in_thread
from .report import RestoreError

log = logging.getLogger(__name__)
PARITY_COST = 1.5  # how much later a parity share may come than a data share and be chosen
PASSES = 2  # passes over every holder of every share (the second after a pause)


class CodedFetch:
    """One batch of coded chunks (all with one code) to fetch."""

    def __init__(
        self,
        node: Node,
        keys: KeyRing,
        code: Code,
        holders: Callable[[list[bytes]], Awaitable[dict[bytes, set[int]]]],
        learn: Callable[[list[tuple[bytes, int]]], Awaitable[None]],
        get_envelopes: Callable[[int, list[bytes]], Awaitable[dict[bytes, bytes]]],
        pace: dict[int, float] | None = None,
    ) -> None:
        self.node = node
        self.keys = keys
        self.code = code
        self._holders = holders  # the catalog's holders of share addresses
        self._learn = learn  # record (share address, holder) pairs found by asking
        self._get = get_envelopes
        # holder -> seconds a share took it lately (a moving average, kept by the caller
        # across batches): the K shares of a chunk are asked of the fastest holders.
        self.pace = pace if pace is not None else {}

    async def fetch(
        self, addresses: list[bytes]
    ) -> tuple[dict[bytes, bytes], dict[bytes, RestoreError]]:
        """(verified plaintexts, why each missing one is missing) of these chunks."""
        code = self.code
        unique = list(dict.fromkeys(addresses))
        share_of = {
            share_address(a, i): (a, i) for a in unique for i in range(code.n)
        }  # share address -> (chunk, number)
        holders = await self._holders(list(share_of))
        got: dict[bytes, dict[int, Share]] = defaultdict(dict)  # chunk -> number -> share
        tried: dict[bytes, set[int]] = defaultdict(set)  # share address -> holders asked
        found: dict[bytes, bytes] = {}
        todo = unique
        queried = False
        for attempt in range(PASSES):
            if attempt:  # every holder was asked once: again, after a pause (a busy link)
                await trio.sleep(0.5 * attempt)
                tried.clear()
            while todo:
                plan = self._spread(todo, holders, got, tried)
                if not plan and not queried:  # ask every live peer which shares it holds
                    queried = True
                    await self._ask_everyone(todo, holders)
                    plan = self._spread(todo, holders, got, tried)
                if not plan:
                    break
                async with trio.open_nursery() as nursery:
                    for holder, wanted in plan.items():
                        nursery.start_soon(self._from_holder, holder, wanted, share_of, got)
                ready = [a for a in todo if len(got[a]) >= code.k]
                opened = await in_thread(
                    self._open,
                    [(a, list(got[a].values())) for a in ready],
                    limiter=self.node.cpu_limiter,
                )
                found.update(opened)
                for address in ready:
                    if address not in opened:  # decoded to what does not open: never seen yet
                        got[address].clear()
                todo = [a for a in todo if a not in found]
            if not todo:
                break
        missing = {
            a: RestoreError(
                f"chunk {a.hex()[:16]}… ({code}): {len(got[a])} of the {code.k} shares it"
                " needs came back valid from the reachable holders"
            )
            for a in todo
        }
        return found, missing

    async def _ask_everyone(self, todo: list[bytes], holders: dict[bytes, set[int]]) -> None:
        """Learn from every live peer which of these chunks' shares it holds (a holder's
        repair may have put one where the catalog does not know), and record it."""
        asked = await self.node.replication.query_holders(
            self.node.node_id, [s for a in todo for s in _shares(a, self.code)]
        )
        new = [(s, h) for s, hs in asked.items() for h in hs - holders.get(s, set())]
        if new:
            await self._learn(new)
        for s, hs in asked.items():
            holders.setdefault(s, set()).update(hs)

    def _spread(
        self,
        todo: list[bytes],
        holders: dict[bytes, set[int]],
        got: dict[bytes, dict[int, Share]],
        tried: dict[bytes, set[int]],
    ) -> dict[int, list[bytes]]:
        """Share addresses by the up holder to ask: for each chunk the shares it still needs
        to reach K, from the holders with the least asked of them so far."""
        load: dict[int, list[bytes]] = {}
        up = self.node.membership.is_up
        known = [p for p in self.pace.values() if p > 0]
        usual = sorted(known)[len(known) // 2] if known else 1.0  # a holder not timed yet

        def cost(holder: int) -> float:
            """When a share asked of ``holder`` now would come: its queue times its pace."""
            return (len(load.get(holder, ())) + 1) * self.pace.get(holder, usual)

        for address in todo:
            need = self.code.k - len(got[address])
            options = []
            for number in range(self.code.n):
                if number in got[address]:
                    continue
                s = share_address(address, number)
                live = [h for h in holders.get(s, ()) if up(h) and h not in tried[s]]
                if live:
                    # A parity share costs a decode (~0.8 ms per MB here), a data share none:
                    # data shares first unless their holders are clearly slower.
                    options.append((s, live, 1.0 if number < self.code.k else PARITY_COST))
            # The shares whose holders would give them soonest, one holder per share.
            chosen: set[int] = set()
            ranked = sorted(options, key=lambda o: o[2] * min(cost(h) for h in o[1]))
            for s, live, _weight in ranked:
                if need <= 0:
                    break
                holder = min(live, key=lambda h: (h in chosen, cost(h), h))
                load.setdefault(holder, []).append(s)
                tried[s].add(holder)
                chosen.add(holder)
                need -= 1
        return load

    async def _from_holder(
        self,
        holder: int,
        wanted: list[bytes],
        share_of: dict[bytes, tuple[bytes, int]],
        got: dict[bytes, dict[int, Share]],
    ) -> None:
        started = trio.current_time()
        blobs = await self._get(holder, wanted)
        took = (trio.current_time() - started) / len(wanted)
        if not blobs:  # gave nothing: slow, as far as the next choice is concerned
            took = max(took, 10 * self.pace.get(holder, took))
        before = self.pace.get(holder)
        self.pace[holder] = took if before is None else 0.7 * before + 0.3 * took
        checked = await in_thread(  # hashing off the event loop, one hop per answer
            self._verify, holder, blobs, share_of, limiter=self.node.cpu_limiter
        )
        for address, number, share in checked:
            got[address][number] = share

    def _verify(
        self, holder: int, blobs: dict[bytes, bytes], share_of: dict[bytes, tuple[bytes, int]]
    ) -> list[tuple[bytes, int, Share]]:
        """The shares that pass the owner's check, as (chunk, number, share)."""
        key = self.keys.share_key
        good = []
        for s, blob in blobs.items():
            address, number = share_of[s]
            try:
                share = verify(blob, s, share_key=key)
            except ShareError as exc:
                log.warning(
                    "share %d of chunk %s… from node %d: %s",
                    number,
                    address.hex()[:12],
                    holder,
                    exc,
                )
                continue
            if share.family.chunk_address == address and share.family.k == self.code.k:
                good.append((address, number, share))
        return good

    def _open(self, ready: list[tuple[bytes, list[Share]]]) -> dict[bytes, bytes]:
        opened = {}
        for address, shares in ready:
            try:
                opened[address] = open_chunk(self.keys, address, decode(shares))
            except (ShareError, EnvelopeError) as exc:
                log.warning("chunk %s… from its shares: %s", address.hex()[:12], exc)
        return opened


def _shares(address: bytes, code: Code) -> list[bytes]:
    return [share_address(address, i) for i in range(code.n)]
