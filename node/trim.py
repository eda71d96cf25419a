"""Copies above a chunk's degree, trimmed by the chunk's owner.

A node that comes back after its copies were re-made elsewhere brings them back with it: the
chunks it held now have one copy too many, for ever unless someone drops it (the original
service's "no over-replication" rule). Only the owner knows each chunk's wanted degree (the
highest any live version asks, the default degree for the catalog copy's chunks), so the owner
decides: it asks every up peer what it holds, keeps ``degree`` holders chosen by
``placement.keepers`` (one per computer first, never its own computer while another will do)
and sends the others a DELETE. A single decision-maker: two holders never both drop their copy
on different views of who else has one. A member may lie about what it holds, so nothing is
deleted until every keeper has handed over its copy and the owner has opened it. A coded
chunk's share is wanted once: a share held twice loses one holder, the same way (the keeper's
share checked alone with the owner's key).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from chunkstore.catalogdb import CatalogDB
from chunkstore.keys import KeyRing
from chunkstore.shares import items_of

from .fetch import Fetcher
from .messages import Delete, Deleted
from .offload import in_thread
from .placement import keepers
from .verify import bad_envelopes

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)
TRIM_BATCH = 4096  # chunks asked about (and trimmed) at a time
TRIM_INTERVAL = 600.0  # seconds between passes over our chunks for copies above their degree
TRIM_SETTLE = 30.0  # after a node came back online, before such a pass


@dataclass(slots=True)
class TrimReport:
    checked: int = 0  # chunks whose holders were counted
    surplus: int = 0  # copies found above their chunk's degree
    dropped: int = 0  # of those, copies the holders confirmed deleted
    unproven: int = 0  # chunks left as they are: a keeper did not show a good copy


async def trim_surplus(
    node: Node,
    catalog: CatalogDB,
    owner: int,
    default_degree: int,
    exclusive: Callable[[], AbstractAsyncContextManager[None]],
    verified_at: Callable[[int, list[bytes]], Awaitable[set[bytes]]],
) -> TrimReport:
    """Bring every chunk of ``owner`` with more copies than its degree down to its degree.

    Each batch runs under ``exclusive()`` (no backup decides meanwhile that a copy about to go
    is enough); a holder that does not answer keeps its copy until the next pass.
    ``verified_at(holder, addresses)`` returns those of which ``holder`` gave a copy that
    opens: a chunk's extra copies go only once each of its keepers did.
    """
    wanted = dict(await in_thread(catalog.live_addresses))
    for address in await in_thread(catalog.catalog_chunks):
        wanted[address] = max(wanted.get(address, 0), default_degree)
    for address, degree in await in_thread(catalog.coded_chunks):
        for share in items_of(address, degree):  # each share wanted once (two repairers
            wanted[share] = 1  # racing may both have made it)
    addresses = sorted(wanted)
    report = TrimReport()
    for i in range(0, len(addresses), TRIM_BATCH):
        batch = addresses[i : i + TRIM_BATCH]
        async with exclusive():
            found = await node.replication.query_holders(owner, batch)
            excess: dict[int, list[bytes]] = defaultdict(list)
            kept: dict[int, list[bytes]] = defaultdict(list)  # keeper -> chunks to prove
            for address in batch:
                report.checked += 1
                holders = found[address]
                degree = wanted[address]
                if len(holders) <= degree:
                    continue
                keep = keepers(
                    owner.to_bytes(4, "big") + address,
                    holders,
                    degree,
                    node.membership.host_of,
                    node.config.host_id,
                )
                for holder in keep:
                    kept[holder].append(address)
                for holder in holders - keep:
                    excess[holder].append(address)
                    report.surplus += 1
            unproven: set[bytes] = set()
            for holder, addresses_kept in kept.items():
                shown = await verified_at(holder, addresses_kept)
                unproven.update(a for a in addresses_kept if a not in shown)
            report.unproven += len(unproven)
            for holder, extra_all in excess.items():
                extra = [a for a in extra_all if a not in unproven]
                if not extra:
                    continue
                answer = await node.pool.request_quietly(
                    holder,
                    functools.partial(Delete, owner=owner, addresses=tuple(extra)),
                    node.config.request_timeout,
                )
                if isinstance(answer, Deleted):
                    report.dropped += len(extra)
                    await in_thread(catalog.drop_holders, [(address, holder) for address in extra])
    if report.surplus:
        log.info(
            "trim: %d chunks checked, %d copies above their degree, %d dropped; %d chunks left"
            " as they are (a holder said it had a copy it did not show)",
            report.checked,
            report.surplus,
            report.dropped,
            report.unproven,
        )
    return report


class Trimmer:
    """The owner's trimming: a pass every ``TRIM_INTERVAL``, and soon after a node comes back
    online (it may bring copies that were re-made elsewhere meanwhile)."""

    def __init__(
        self,
        node: Node,
        catalog: CatalogDB,
        keys: KeyRing,
        fetcher: Fetcher,
        default_degree: int,
        exclusive: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        self.node = node
        self.catalog = catalog
        self.keys = keys
        self.fetcher = fetcher
        self.default_degree = default_degree
        self.exclusive = exclusive
        self._wanted = trio.Event()
        node.on_online.append(lambda _peer: self._wanted.set())

    async def once(self) -> TrimReport:
        """Drop copies of our chunks above their degree."""
        return await trim_surplus(
            self.node,
            self.catalog,
            self.node.node_id,
            self.default_degree,
            self.exclusive,
            self.verified_at,
        )

    async def verified_at(self, holder: int, addresses: list[bytes]) -> set[bytes]:
        """Those of ``addresses`` of which ``holder`` hands over a copy that opens."""
        got = await self.fetcher.get_envelopes(holder, addresses)
        bad = await in_thread(bad_envelopes, self.keys, got, limiter=self.node.cpu_limiter)
        return set(got) - set(bad)

    async def run(self) -> None:
        while True:
            with trio.move_on_after(TRIM_INTERVAL):
                await self._wanted.wait()
            self._wanted = trio.Event()
            await trio.sleep(TRIM_SETTLE)  # links come up, repairs in flight finish
            try:
                await self.once()
            except Exception:
                log.exception("trimming surplus copies failed")
