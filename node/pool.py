"""Outgoing links to peers: dialing, reconnecting, heartbeats, and requests by node id."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from .membership import Membership
from .messages import Heartbeat, Hello, Message, Request, Status, StatusReply
from .protocol import Announcements
from .transport import Channel, Link, Network, PeerUnavailable, RemoteError, Traffic

log = logging.getLogger(__name__)
MAX_DIAL_DELAY = 10.0  # seconds, at most, between attempts to reach a known peer
GONE_DIAL_DELAY = 60.0  # the same for a peer silent past the grace period


class PeerPool:
    def __init__(
        self,
        own_id: int,
        network: Network,
        hello: Callable[[], Hello],
        membership: Membership,
        heartbeat: Callable[[], Heartbeat],
        boot_id: int,
        traffic: Traffic | None = None,
    ) -> None:
        self.own_id = own_id
        self.traffic = traffic if traffic is not None else Traffic()
        self._network = network
        self._hello = hello
        self._membership = membership
        self._heartbeat = heartbeat
        self._links: dict[int, Link] = {}
        self._dialing: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._announcements = Announcements(boot_id)
        self.seeds: list[str] = []
        self._backoff: dict[str, tuple[float, float]] = {}  # address -> (next try, delay)
        self.on_new_link: list[Callable[[int], None]] = []  # run when a link is made
        self.status_hooks: list[Callable[[int, StatusReply], None]] = []  # gossip's replies

    def bind(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def linked(self) -> list[int]:
        return [n for n, link in self._links.items() if not link.closed.is_set()]

    async def dial(self, address: str) -> Link:
        """Connect to ``address``, authenticate, exchange HELLO; returns the live link."""
        assert self._nursery is not None, "PeerPool.bind() first"
        waiting = self._dialing.get(address)
        if waiting is not None:
            await waiting.wait()
            for link in self._links.values():
                if link.channel.peer_hello and link.channel.peer_hello.listen == address:
                    return link
            raise PeerUnavailable(f"could not reach {address}")
        done = trio.Event()
        self._dialing[address] = done
        try:
            auth = await self._network.connect(address)
            if auth.peer_id == self.own_id:
                await trio.aclose_forcefully(auth.stream)
                raise PeerUnavailable(f"{address} is this node itself")
            channel = Channel(auth, self._hello(), self.traffic)
            try:
                hello = await channel.handshake()
            except Exception as exc:
                await channel.aclose()
                raise PeerUnavailable(f"handshake with {address} failed: {exc}") from None
            announced = hello.listen or address
            if announced.rpartition(":")[0] in ("", "0.0.0.0", "::", "[::]"):
                announced = address  # it listens on all interfaces: keep the address that worked
            self._membership.learn(auth.peer_id, announced, hello.host_id)
            self._membership.seen(auth.peer_id)
            link = Link(channel)
            peer_id = auth.peer_id
            link.on_message = lambda _m: self._membership.seen(peer_id)
            old = self._links.get(peer_id)
            self._links[peer_id] = link
            await self._nursery.start(link.run)
            if old is not None:
                await old.aclose()
            online = self._announcements.online_for(peer_id)
            if online is not None:
                await link.notify(online)
            await link.notify(self._heartbeat())
            for hook in self.on_new_link:
                hook(peer_id)
            return link
        finally:
            del self._dialing[address]
            done.set()

    async def link(self, node_id: int) -> Link:
        link = self._links.get(node_id)
        if link is not None and not link.closed.is_set():
            return link
        info = self._membership.get(node_id)
        if info is None or not info.address:
            raise PeerUnavailable(f"no address known for node {node_id}")
        link = await self.dial(info.address)
        if link.peer_id != node_id:
            raise PeerUnavailable(f"{info.address} is now node {link.peer_id}, not {node_id}")
        return link

    async def request(
        self, node_id: int, make: Callable[[int], Request], timeout: float
    ) -> Message:
        link = await self.link(node_id)
        try:
            return await link.request(make, timeout)
        except PeerUnavailable:
            await link.aclose()
            raise

    async def request_quietly(
        self, node_id: int, make: Callable[[int], Request], timeout: float
    ) -> Message | None:
        """Like ``request`` but returns None when the peer is unreachable or refuses."""
        try:
            return await self.request(node_id, make, timeout)
        except (PeerUnavailable, RemoteError) as exc:
            log.debug("request to node %d failed: %s", node_id, exc)
            return None

    async def maintain(
        self, interval: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep links to seeds and known peers up, send heartbeats, learn peers by gossip."""
        task_status.started()
        rounds = 0
        while True:
            await self._round(gossip=rounds % 5 == 0)
            rounds += 1
            await trio.sleep(interval)

    async def _round(self, gossip: bool) -> None:
        assert self._nursery is not None
        now = trio.current_time()
        linked_addresses = {
            link.channel.peer_hello.listen
            for link in self._links.values()
            if link.channel.peer_hello and not link.closed.is_set()
        }
        # Gone peers are dialed too, only less often: a computer back from a long sleep finds
        # every peer thinks it gone, and it thinks them gone; if neither side dialed, they
        # would never meet again.
        targets = dict.fromkeys(self.seeds, MAX_DIAL_DELAY)  # address -> longest backoff
        for info in self._membership.peers():
            if info.address:
                gone = self._membership.is_gone(info.node_id)
                targets.setdefault(info.address, GONE_DIAL_DELAY if gone else MAX_DIAL_DELAY)
        for node_id, link in list(self._links.items()):
            if link.closed.is_set():
                continue
            try:
                with trio.move_on_after(2):
                    await link.notify(self._heartbeat())
            except PeerUnavailable:
                await link.aclose()
                self._links.pop(node_id, None)
        for address in sorted(set(targets) - linked_addresses):
            next_try, delay = self._backoff.get(address, (0.0, 0.5))
            if now < next_try or address in self._dialing:
                continue
            self._nursery.start_soon(self._try_dial, address, delay, targets[address])
        if gossip:
            await self.gossip()

    async def gossip(self) -> None:
        """Learn the peers our linked peers know of (STATUS replies list them)."""
        for node_id in self.linked():
            reply = await self.request_quietly(node_id, lambda r: Status(r), 5)
            if isinstance(reply, StatusReply):
                self._learn_from(reply)
                for hook in self.status_hooks:
                    hook(node_id, reply)

    async def _try_dial(self, address: str, delay: float, cap: float = MAX_DIAL_DELAY) -> None:
        try:
            with trio.fail_after(15):
                await self.dial(address)
            self._backoff.pop(address, None)
        except (PeerUnavailable, trio.TooSlowError, ValueError) as exc:  # ValueError: bad address
            jitter = random.uniform(0.8, 1.2)
            self._backoff[address] = (trio.current_time() + delay * jitter, min(delay * 2, cap))
            log.debug("dial %s failed: %s", address, exc)

    def _learn_from(self, reply: StatusReply) -> None:
        peers = reply.info.get("peers")
        if not isinstance(peers, list):
            return
        for entry in peers:
            if (
                isinstance(entry, list)
                and len(entry) >= 3
                and isinstance(entry[0], int)
                and isinstance(entry[1], str)
                and isinstance(entry[2], str)
                and entry[0] != self.own_id
                and 0 <= entry[0] < 2**32
            ):
                if self._membership.get(entry[0]) is None:
                    log.info("learned of node %d at %s", entry[0], entry[1])
                # Another member's word: a hint, as a discovery datagram is.
                self._membership.hint(entry[0], entry[1] or None, entry[2] or None)

    async def drop(self, node_id: int) -> None:
        """Close the link to ``node_id`` (removed from the network)."""
        link = self._links.pop(node_id, None)
        if link is not None:
            await link.aclose()

    async def aclose(self) -> None:
        for link in list(self._links.values()):
            await link.aclose()
        self._links.clear()
