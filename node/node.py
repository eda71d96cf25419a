"""A node: the chunk store served to peers, links to peers, membership, repair, scrub and
reclaim. Copies are sent through ``replication.py``; the owner role (backing up this
computer's own files) is in ``owner.py`` and uses a node.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from chunkstore.kitexchange import KitOffer
from chunkstore.store import BadChunk, ChunkStore

from .discovery import run_discovery, with_source_host
from .enrolment import Enroller
from .holder import HolderService, KitGate
from .membership import Membership
from .messages import (
    MAX_ANONYMOUS_FRAME,
    SUPPORTED_VERSIONS,
    Enrol,
    Error,
    ErrorCode,
    Heartbeat,
    Hello,
    KitProof,
    KitRequest,
    Message,
    Online,
    ProtocolError,
    Removed,
    Request,
)
from .offload import in_thread
from .peerbook import keep_peer_book, recall
from .pool import PeerPool
from .protocol import check_anonymous
from .reclaim import ReclaimReport, reclaim
from .repair import Repairer, RepairReport
from .replication import Replication
from .roster import RosterBook, RosterSync
from .transport import Authenticated, Channel, Network, Traffic

log = logging.getLogger(__name__)
IDLE_TIMEOUT = 60.0  # at least; an authenticated connection silent this long is closed
ANONYMOUS_TIMEOUT = 120.0  # a recovery takes seconds; nobody lingers without a certificate


@dataclass(slots=True)
class NodeConfig:
    node_id: int
    host_id: str
    listen: str = "127.0.0.1:7420"
    advertise: str = ""  # the address peers should dial; defaults to the bound listen address
    seeds: list[str] = field(default_factory=list)
    heartbeat_interval: float = 1.0
    down_after: float = 5.0
    gone_after: float = 600.0
    request_timeout: float = 20.0
    repair_interval: float = 30.0
    repair_rate: float = 64e6  # bytes per second a node spends re-creating copies
    scrub_interval: float = 24 * 3600.0
    max_requests_per_connection: int = 64
    network_id: str = ""
    discovery: bool = False  # UDP multicast announcements on the LAN
    discovery_port: int = 7421
    peer_book: Path | None = None  # where the peers met are remembered (node/peerbook.py)
    relay: bool = True  # a backup's copies travel down a chain of holders (RELAYCHUNKS)


LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class LatencyStats:
    """How long answering one kind of request took (cumulative buckets, as Prometheus has)."""

    count: int = 0
    total: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1


class Node:
    def __init__(
        self,
        config: NodeConfig,
        store: ChunkStore,
        network: Network,
        roster: RosterBook | None = None,
        enroller: Enroller | None = None,
        kit_secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.store = store
        self.network = network
        self.membership = Membership(
            config.node_id, config.down_after, config.gone_after, clock=trio.current_time
        )
        self.cpu_limiter = trio.CapacityLimiter(2)
        self.disk_limiter = trio.CapacityLimiter(4)
        self.boot_id = random.getrandbits(63)
        self.address = config.advertise or config.listen
        self.traffic = Traffic()  # bytes on every peer connection, both ways
        self.pool = PeerPool(
            config.node_id,
            network,
            self.hello,
            self.membership,
            self.heartbeat,
            self.boot_id,
            self.traffic,
        )
        self.pool.seeds = list(config.seeds)
        self.replication = Replication(
            config.node_id, config.host_id, self.membership, self.pool, config.request_timeout
        )
        self.repairer = Repairer(
            config.node_id,
            store,
            self.membership,
            self.pool,
            self.replication,
            self.disk_limiter,
            config.request_timeout,
            config.repair_rate,
        )
        self.holder = HolderService(
            store,
            self.disk_limiter,
            self.status_info,
            on_removed=lambda _o, _a: self.request_repair(),
            on_corrupt=self._corrupt_copy_found,
            roster=roster,
        )
        if config.relay:
            self.holder.relay = self.replication.relay
        self.kits = KitGate(store, self.disk_limiter, kit_secret)
        self.roster = roster
        self.enroller = enroller
        self.roster_sync: RosterSync | None = None
        if roster is not None:
            self.roster_sync = RosterSync(
                roster,
                self.pool,
                self.membership,
                config.node_id,
                max(1.0, 4 * config.heartbeat_interval),
            )
            self.pool.status_hooks.append(self.roster_sync.note_status)
        self.latency: dict[str, LatencyStats] = {}  # request type -> time to answer it
        self._repair_wanted = trio.Event()
        self._corrupt: set[tuple[int, bytes]] = set()
        self._gone_handled: set[int] = set()
        self.on_online: list[Callable[[int], None]] = []  # run when a peer announces ONLINE
        self.last_scrub_bad = 0
        self.ready = trio.Event()
        self._reclaim_lock = trio.Lock()
        self.kept_over_quota = 0  # chunks the last reclaim could not move yet

    # -- identity and liveness -----------------------------------------------------------

    def hello(self) -> Hello:
        return Hello(SUPPORTED_VERSIONS, self.node_id, self.config.host_id, self.address)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(self.advertised_capacity(), self.store.used_bytes, 0)

    def advertised_capacity(self) -> int:
        """The quota, or less when the disk has less room left than the quota assumes: owners
        place chunks by free space, so a full disk must not look empty."""
        return min(self.store.capacity, self.store.used_bytes + self.store.room_bytes)

    def status_info(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "host_id": self.config.host_id,
            "address": self.address,
            "capacity_bytes": self.advertised_capacity(),
            "used_bytes": self.store.used_bytes,
            "roster_version": self.roster.version if self.roster else 0,
            "peers": [
                [p.node_id, p.address, p.host_id, self.membership.is_up(p.node_id)]
                for p in self.membership.peers()
            ],
        }

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.pool.bind(nursery)
            bound = await nursery.start(self.network.serve, self.config.listen, self._serve)
            if not self.config.advertise:
                self.address = bound
            for _ in range(2):
                await nursery.start(self.holder.run_writer)
            if self.config.peer_book is not None:
                recall(self.membership, self.config.peer_book)
                await nursery.start(keep_peer_book, self.membership, self.config.peer_book)
            await nursery.start(self.pool.maintain, self.config.heartbeat_interval)
            if self.roster_sync is not None:
                await nursery.start(self.roster_sync.run)
            await nursery.start(self._repair_loop)
            await nursery.start(self._scrub_loop)
            if self.config.discovery:
                await nursery.start(
                    functools.partial(
                        run_discovery,
                        self.config.network_id,
                        self.node_id,
                        lambda: self.address,
                        self.config.host_id,
                        self._discovered,
                        port=self.config.discovery_port,
                    )
                )
            self.ready.set()
            log.info("node %d serving on %s", self.node_id, self.address)
            task_status.started(self.address)

    async def _serve(self, auth: Authenticated) -> None:
        """One incoming connection: HELLO, then requests answered concurrently."""
        if auth.anonymous:  # a stranger learns nothing of us before the passphrase exchange
            await self._serve_anonymous(Channel(auth, Hello(SUPPORTED_VERSIONS, 0, "", "")))
            return
        channel = Channel(auth, self.hello(), self.traffic)
        peer = auth.peer_id
        try:
            hello = await channel.handshake()
        except (
            ProtocolError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.EndOfChannel,
        ) as exc:
            log.info("handshake with node %d failed: %s", peer, exc)
            if isinstance(exc, ProtocolError):
                await channel.send_error(0, exc.code, str(exc))
            return
        address = (
            with_source_host(hello.listen, auth.remote_host) if auth.remote_host else hello.listen
        )
        self.membership.learn(peer, address, hello.host_id)
        self.membership.seen(peer)
        slots = trio.Semaphore(self.config.max_requests_per_connection)
        # Members send a heartbeat every interval: a connection silent for many of them is
        # dead or held open on purpose, and goes (the peer dials again if it is alive).
        idle = max(IDLE_TIMEOUT, 30 * self.config.heartbeat_interval)
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    message: Message | None = None
                    with trio.move_on_after(idle):
                        message = await channel.receive()
                    if message is None:
                        log.info("node %d sent nothing for %.0f s; connection closed", peer, idle)
                        break
                    if self.roster is not None and self.roster.is_removed(peer):
                        log.warning("node %d was removed from the network: connection closed", peer)
                        break
                    self._note(peer, message)
                    if isinstance(message, Request):
                        await slots.acquire()
                        nursery.start_soon(self._answer, channel, message, peer, slots)
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except ProtocolError as exc:
                log.warning("node %d broke the protocol: %s", peer, exc)
                await channel.send_error(0, exc.code, str(exc))
            nursery.cancel_scope.cancel()  # the peer is gone: answers cannot be delivered

    async def _enrol(self, request: Enrol) -> Message:
        if self.enroller is None:
            return Error(
                request.req,
                ErrorCode.FORBIDDEN,
                "this node keeps no network key and cannot enrol computers: use a join code"
                " from an administrator node ('lanvault invite' there)",
            )
        return await self.enroller.answer(request)

    async def _serve_anonymous(self, channel: Channel) -> None:
        """A computer without a certificate: only the recovery-kit exchange, one at a time."""
        sessions: dict[bytes, KitOffer] = {}
        channel.limit_frames(MAX_ANONYMOUS_FRAME)  # kit messages are small
        try:
            with trio.fail_after(ANONYMOUS_TIMEOUT):  # a recovery takes seconds
                await channel.handshake()
                while True:
                    message = check_anonymous(await channel.receive())
                    if isinstance(message, KitRequest):
                        await channel.send(await self.kits.challenge(message, sessions))
                    elif isinstance(message, KitProof):
                        await channel.send(await self.kits.answer(message, sessions))
                    elif isinstance(message, Enrol):
                        await channel.send(await self._enrol(message))
        except ProtocolError as exc:
            log.debug("anonymous connection closed: %s", exc)  # no line per stranger
            await channel.send_error(0, exc.code, str(exc))
        except (
            trio.TooSlowError,
            trio.EndOfChannel,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
        ):
            pass

    async def _answer(
        self, channel: Channel, message: Request, peer: int, slots: trio.Semaphore
    ) -> None:
        started = trio.current_time()
        try:
            answer = await self.holder.handle(message, peer)
            kind = type(message).__name__
            self.latency.setdefault(kind, LatencyStats()).observe(trio.current_time() - started)
            await channel.send(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a bug must not take the node down: report it to the peer
            log.exception("failed to answer %s from node %d", type(message).__name__, peer)
            await channel.send_error(message.req, ErrorCode.INTERNAL, f"internal error: {exc}")
        finally:
            slots.release()

    def _note(self, peer: int, message: Message) -> None:
        if isinstance(message, Heartbeat):
            self.membership.seen(peer, message.capacity, message.used, message.chunks)
        else:
            self.membership.seen(peer)
        if isinstance(message, Online):
            log.info("node %d is online", peer)
            self._gone_handled.discard(peer)
            for callback in self.on_online:
                callback(peer)

    def _discovered(self, peer: int, address: str, host_id: str) -> None:
        known = self.membership.get(peer)
        before = known.address if known is not None else None
        if self.membership.hint(peer, address, host_id) and before != address:
            log.info("discovered node %d at %s", peer, address)

    # -- requests to peers ---------------------------------------------------------------

    # -- repair --------------------------------------------------------------------------

    def request_repair(self) -> None:
        self._repair_wanted.set()

    def _corrupt_copy_found(self, owner: int, address: bytes) -> None:
        # Called on the event loop: the bad copy is dropped by the repair task, off the loop.
        self._corrupt.add((owner, address))
        self.request_repair()

    async def _repair_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            # A full pass every repair_interval, or at once when asked (a REMOVED notice, a
            # corrupt copy) or when a peer has just been declared gone.
            deadline = trio.current_time() + self.config.repair_interval
            while not self._repair_wanted.is_set() and trio.current_time() < deadline:
                with trio.move_on_at(
                    min(deadline, trio.current_time() + self.config.heartbeat_interval)
                ):
                    await self._repair_wanted.wait()
                if any(
                    self.membership.is_gone(p.node_id) and p.node_id not in self._gone_handled
                    for p in self.membership.peers()
                ):
                    break
            self._repair_wanted = trio.Event()
            corrupt, self._corrupt = self._corrupt, set()
            if corrupt:
                bad = [BadChunk(o, a, "failed verification when read") for o, a in corrupt]
                dropped = await in_thread(
                    self.store.drop_damaged, bad, "read", limiter=self.disk_limiter
                )
                await self._bad_copies_dropped(dropped, "reads")
            newly_gone = [
                p.node_id
                for p in self.membership.peers()
                if self.membership.is_gone(p.node_id) and p.node_id not in self._gone_handled
            ]
            for peer in newly_gone:
                log.info("node %d is gone; restoring the degree of its chunks", peer)
                self._gone_handled.add(peer)
            try:
                await self.repair_once()
                if self.kept_over_quota and not self._reclaim_lock.locked():
                    await self.reclaim(self.store.capacity)  # chunks a reclaim had to keep
            except Exception:
                log.exception("repair pass failed")

    async def repair_once(self) -> RepairReport:
        """One repair pass now (see ``node/repair.py``)."""
        return await self.repairer.once()

    @property
    def last_repair(self) -> RepairReport:
        return self.repairer.last

    # -- reclaim -------------------------------------------------------------------------

    async def reclaim(
        self, capacity: int, progress: Callable[[ReclaimReport], None] | None = None
    ) -> ReclaimReport:
        """Lend at most ``capacity`` bytes (see ``node/reclaim.py``); one at a time."""
        async with self._reclaim_lock:
            report = await reclaim(self, capacity, progress)
        self.kept_over_quota = report.kept
        return report

    # -- scrub ---------------------------------------------------------------------------

    async def scrub(self) -> int:
        bad = await in_thread(lambda: self.store.scrub(drop_bad=True), limiter=self.disk_limiter)
        self.last_scrub_bad = len(bad)
        await self._bad_copies_dropped(bad, "a scrub")
        return len(bad)

    async def _bad_copies_dropped(self, bad: list[BadChunk], found_by: str) -> None:
        """One line for what was found and dropped; the up peers are told, so that the
        chunks' other holders and owners make the copies again."""
        if not bad:
            return
        owners = sorted({item.owner for item in bad})
        log.warning(
            "%d bad copies found by %s and dropped (chunks of nodes %s); the other holders"
            " are asked to make them again (see check and status)",
            len(bad),
            found_by,
            ", ".join(map(str, owners)),
        )
        for item in bad:
            notice = functools.partial(Removed, owner=item.owner, address=item.address, degree=1)
            for peer in self.membership.up_ids():
                await self.pool.request_quietly(peer, notice, 5)

    async def _scrub_loop(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        if math.isinf(self.config.scrub_interval):
            return
        while True:
            await trio.sleep(self.config.scrub_interval)
            try:
                await self.scrub()
            except OSError as exc:  # the disk, or a cloud node's bucket: try at the next one
                log.warning("scrub failed: %s", exc)
            except Exception:
                log.exception("scrub failed")
