"""Repair: bringing the chunks this node holds back to their degree.

A pass asks every live peer which of this node's chunks it holds (``Replication``), and of
the live holders of a chunk below its degree only the lowest id makes the missing copies, the
weakest chunks first, at a bounded rate. Copies on peers down but not yet gone still count
(remembered from the last pass): down is not gone. A chunk whose owner is up is copied only if
the owner still wants it (WANTED), so a chunk deleted while this node was down is not copied
back onto the others. ``Node`` runs the passes (``Node._repair_loop``).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import trio

from chunkstore import crashpoints
from chunkstore.errors import ChunkNotFoundError
from chunkstore.store import ChunkStore, StoredChunk

from .membership import Membership
from .messages import Holding, Wanted
from .offload import in_thread
from .pool import PeerPool
from .replication import QUERY_BATCH, Replication
from .share_repair import ShareRepairer, ShareReport

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RepairReport:
    checked: int = 0
    below_degree: int = 0
    copies_made: int = 0
    failed: int = 0
    unwanted: int = 0  # deleted by their owner (its DELETE is on the way): never copied again
    unconfirmed: int = 0  # their owner is up but did not say whether it still wants them
    vanished: int = 0  # deleted here while the pass ran
    shares: ShareReport = field(default_factory=ShareReport)  # coded chunks (share_repair.py)


class Repair(enum.Enum):
    AT_DEGREE = "at degree"
    WAIT = "below degree, but holders down and not yet gone may bring it back"
    REPAIR = "below degree: make the missing copies now"


def repair_decision(degree: int, live: set[int], remembered: set[int], unsure: set[int]) -> Repair:
    """The repair policy for one chunk, as a pass sees it: copies on ``live`` holders (up,
    answering) and on ``remembered`` ones (down, not yet gone, seen holding it) count; while
    the holders that are down and not yet gone (``unsure``) could still make up the degree the
    pass waits: down is not gone (``--gone-after``). The lowest live holder repairs (not here).
    ``lanvault simulate`` runs this same function over simulated years."""
    holders = live | remembered
    if len(holders) >= degree:
        return Repair.AT_DEGREE
    if len(holders | unsure) >= degree:
        return Repair.WAIT
    return Repair.REPAIR


class Repairer:
    def __init__(
        self,
        node_id: int,
        store: ChunkStore,
        membership: Membership,
        pool: PeerPool,
        replication: Replication,
        disk_limiter: trio.CapacityLimiter,
        request_timeout: float,
        repair_rate: float,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.membership = membership
        self.pool = pool
        self.replication = replication
        self.disk_limiter = disk_limiter
        self.request_timeout = request_timeout
        self.repair_rate = repair_rate  # bytes per second spent re-creating copies
        self.last = RepairReport()
        # (owner, address) -> holders seen by the last pass (rebuilt by each pass)
        self._holders_seen: dict[tuple[int, bytes], set[int]] = {}
        self._lock = trio.Lock()
        self.shares = ShareRepairer(
            node_id, store, membership, replication, disk_limiter, self.ask_wanted
        )

    async def once(self) -> RepairReport:
        """Find chunks this node holds that are below their degree and re-create copies.

        Of the live holders of a chunk, only the lowest id repairs it, so holders do not race.
        Copies on peers that are down but not yet gone still count (from the last pass).
        """
        async with self._lock:
            self.last = await self.repair_pass()
            return self.last

    async def repair_pass(self) -> RepairReport:
        report = RepairReport()
        held = await in_thread(self.store.chunks, limiter=self.disk_limiter)
        chunks = [c for c in held if c.share is None]  # copies; shares are share_repair's
        by_owner: dict[int, list[StoredChunk]] = defaultdict(list)
        for chunk in chunks:
            by_owner[chunk.owner].append(chunk)
        deficits: list[tuple[int, StoredChunk, set[int]]] = []
        # Nodes down but not gone, or not answering, may hold copies this pass cannot see (it
        # may be the first since those chunks came, so none are remembered): down is not gone.
        unsure = {
            p.node_id
            for p in self.membership.peers()
            if not self.membership.is_up(p.node_id) and not self.membership.is_gone(p.node_id)
        }
        # Rebuilt from this pass's chunks only: a chunk deleted since the last pass is forgotten.
        previous, self._holders_seen = self._holders_seen, {}
        for owner, owned in by_owner.items():
            found = await self.replication.query_holders(owner, [c.address for c in owned], unsure)
            for chunk in owned:
                report.checked += 1
                live = found[chunk.address] | {self.node_id}
                key = (owner, chunk.address)
                remembered = {
                    p
                    for p in previous.get(key, set())
                    if not self.membership.is_up(p) and not self.membership.is_gone(p)
                }
                self._holders_seen[key] = live | remembered
                holders = live | remembered
                decision = repair_decision(chunk.degree, live, remembered, unsure - {owner})
                if decision is Repair.AT_DEGREE:
                    continue
                report.below_degree += 1
                if decision is Repair.REPAIR and min(live) == self.node_id:
                    deficits.append((len(holders), chunk, holders))
        deficits = await self._still_wanted(deficits, report)
        deficits.sort(key=lambda d: d[0])  # weakest first
        budget_start = trio.current_time()
        sent_bytes = 0

        async def pace(sent: int) -> None:
            """Bounded rate: never spend more than repair_rate bytes per second on copies."""
            nonlocal sent_bytes
            sent_bytes += sent
            ahead = sent_bytes / self.repair_rate - (trio.current_time() - budget_start)
            if ahead > 0:
                await trio.sleep(ahead)

        for _count, chunk, holders in deficits:
            missing = chunk.degree - len(holders)  # before: replicating adds to ``holders``
            made = await self.repair_chunk(chunk, holders)
            if made is None:
                report.vanished += 1
                continue
            if made:
                crashpoints.reached("repair.copied")
            report.copies_made += made
            report.failed += missing - made
            await pace(made * chunk.length)
        if any(c.share is not None for c in held):
            report.shares = await self.shares.repair_pass(held, unsure, pace)
            self._log_shares(report.shares)
        if report.below_degree:
            # A pass that changes nothing and finds what the last one found is not news (a
            # holder waiting for its owner's DELETE would log the same line every pass).
            quiet = not (report.copies_made or report.failed) and report == self.last
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "repair: %d chunks checked, %d below degree, %d copies made, %d not possible now"
                "; %d deleted by their owner, %d waiting for their owner's word, %d deleted"
                " meanwhile",
                report.checked,
                report.below_degree,
                report.copies_made,
                report.failed,
                report.unwanted,
                report.unconfirmed,
                report.vanished,
            )
        return report

    def _log_shares(self, shares: ShareReport) -> None:
        if shares.below:
            quiet = not (shares.made or shares.failed) and shares == self.last.shares
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "repair: %d coded chunks checked, %d with shares missing, %d shares rebuilt,"
                " %d not possible now; %d with fewer than K shares present, %d deleted by"
                " their owner, %d waiting for their owner's word",
                shares.chunks,
                shares.below,
                shares.made,
                shares.failed,
                shares.out_of_reach,
                shares.unwanted,
                shares.unconfirmed,
            )

    async def _still_wanted(
        self, deficits: list[tuple[int, StoredChunk, set[int]]], report: RepairReport
    ) -> list[tuple[int, StoredChunk, set[int]]]:
        """The deficits whose owner still wants them: an owner that is up is asked (WANTED),
        so a chunk deleted while this node was down is not copied back onto the others."""
        by_owner: dict[int, list[bytes]] = defaultdict(list)
        for _count, chunk, _holders in deficits:
            if chunk.owner != self.node_id and self.membership.is_up(chunk.owner):
                by_owner[chunk.owner].append(chunk.address)
        answers = await self.ask_wanted(dict(by_owner))
        kept = []
        for deficit in deficits:
            chunk = deficit[1]
            if chunk.owner not in answers:
                kept.append(deficit)  # ours, or the owner is down: repair as before
                continue
            answer = answers[chunk.owner]
            if answer is None:
                report.unconfirmed += 1
            elif chunk.address in answer:
                kept.append(deficit)
            else:
                report.unwanted += 1
        return kept

    async def ask_wanted(self, by_owner: dict[int, list[bytes]]) -> dict[int, set[bytes] | None]:
        """Which of these chunk addresses each owner still wants (WANTED); None for an owner
        that gave no word (yet): nothing of its is copied this pass."""
        answers: dict[int, set[bytes] | None] = {}

        async def ask(owner: int, addresses: list[bytes]) -> None:
            wanted: set[bytes] = set()
            for i in range(0, len(addresses), QUERY_BATCH):
                batch = tuple(addresses[i : i + QUERY_BATCH])
                answer = await self.pool.request_quietly(
                    owner,
                    functools.partial(Wanted, owner=owner, addresses=batch),
                    self.request_timeout,
                )
                if not isinstance(answer, Holding):
                    answers[owner] = None  # no word (yet): nothing is copied this pass
                    return
                wanted.update(answer.addresses)
            answers[owner] = wanted

        async with trio.open_nursery() as nursery:
            for owner, addresses in by_owner.items():
                nursery.start_soon(ask, owner, addresses)
        return answers

    async def repair_chunk(self, chunk: StoredChunk, holders: set[int]) -> int | None:
        """Copies made of ``chunk`` (None: it was deleted here meanwhile)."""
        try:
            envelope = await in_thread(
                self.store.get, chunk.owner, chunk.address, limiter=self.disk_limiter
            )
        except ChunkNotFoundError:
            return None
        except Exception as exc:
            log.warning("cannot read a chunk to repair it: %s", exc)
            return 0
        made = await self.replication.replicate(
            chunk.owner, chunk.address, chunk.degree, envelope, holders
        )
        self._holders_seen[(chunk.owner, chunk.address)] = set(holders)
        return made
