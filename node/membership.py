"""Who is in the network, how to reach them, and whether they are up, down or gone."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .placement import Candidate


@dataclass(slots=True)
class PeerInfo:
    node_id: int
    address: str = ""
    host_id: str = ""
    capacity: int = 0
    used: int = 0
    chunks: int = 0
    last_seen: float = 0.0
    first_seen: float = field(default=0.0)
    capacity_known: bool = False  # it said what it lends (0 until then means "not told")
    # What we observed of its presence since we first saw it (this node's run): how often it
    # was away (down, then back) and for how long in all.
    first_up: float = 0.0
    times_away: int = 0
    away_seconds: float = 0.0

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)


@dataclass(frozen=True, slots=True)
class Presence:
    """A peer's observed presence: seconds observed, absences, seconds away in all."""

    observed_s: float
    times_away: int
    away_s: float

    @property
    def uptime(self) -> float:
        """The share of the observed time it was up (1.0 before any time passed)."""
        return 1.0 - self.away_s / self.observed_s if self.observed_s > 0 else 1.0


# Peers heard of only from hints (discovery, gossip), never seen on a verified link: a host
# off the network can announce as many invented ids as it likes, so their number is bounded.
MAX_UNSEEN_PEERS = 64


class Membership:
    """The peer table. Times come from ``clock`` so tests can run on trio's MockClock."""

    def __init__(
        self,
        own_id: int,
        down_after: float,
        gone_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.own_id = own_id
        self.down_after = down_after
        self.gone_after = gone_after
        self._clock = clock
        self._peers: dict[int, PeerInfo] = {}
        self._started = clock()

    def get(self, node_id: int) -> PeerInfo | None:
        return self._peers.get(node_id)

    def peers(self) -> list[PeerInfo]:
        return sorted(self._peers.values(), key=lambda p: p.node_id)

    def learn(
        self, node_id: int, address: str | None = None, host_id: str | None = None
    ) -> PeerInfo:
        """Record a peer we heard of (HELLO, config, discovery)."""
        info = self._peers.get(node_id)
        if info is None:
            info = PeerInfo(node_id, first_seen=self._clock())
            self._peers[node_id] = info
        if address and dialable(address):  # a member's HELLO or a datagram may say anything
            info.address = address
        if host_id:
            info.host_id = host_id
        return info

    def hint(self, node_id: int, address: str | None, host_id: str | None = None) -> bool:
        """Record where a peer may be, as heard from an unauthenticated source (a discovery
        datagram) or from another member's gossip: a hint never replaces the address of a
        peer that is up (a forged one would cut it off). True if the address was taken."""
        info = self._peers.get(node_id)
        if info is None and node_id != self.own_id:
            unseen = sum(1 for p in self._peers.values() if p.last_seen == 0)
            if unseen >= MAX_UNSEEN_PEERS:
                return False  # a flood of invented ids: known peers are not crowded out
        taken = not (info is not None and info.address and self.is_up(node_id))
        info = self.learn(node_id, address if taken else None)
        if host_id and not info.host_id:
            info.host_id = host_id
        return taken and bool(address) and dialable(address or "")

    def seen(
        self,
        node_id: int,
        capacity: int | None = None,
        used: int | None = None,
        chunks: int | None = None,
    ) -> None:
        info = self.learn(node_id)
        now = self._clock()
        if info.last_seen == 0:
            info.first_up = now
        elif now - info.last_seen >= self.down_after:  # it was down: back from an absence
            info.times_away += 1
            info.away_seconds += now - info.last_seen
        info.last_seen = now
        if capacity is not None:
            info.capacity = capacity
            info.capacity_known = True
        if used is not None:
            info.used = used
        if chunks is not None:
            info.chunks = chunks

    def forget(self, node_id: int) -> None:
        """A node removed from the network: no longer a peer (never up, never a target)."""
        self._peers.pop(node_id, None)

    def is_up(self, node_id: int) -> bool:
        info = self._peers.get(node_id)
        return (
            info is not None
            and info.last_seen > 0
            and self._clock() - info.last_seen < self.down_after
        )

    def is_gone(self, node_id: int) -> bool:
        """Silent for the grace period (counting from our own start for never-seen peers)."""
        info = self._peers.get(node_id)
        if info is None:
            return True
        reference = info.last_seen if info.last_seen > 0 else self._started
        return self._clock() - reference >= self.gone_after

    def presence(self, node_id: int) -> Presence | None:
        """What was observed of ``node_id``'s presence since it was first seen (None: never
        seen): the absence going on now counts (as away since it was last seen)."""
        info = self._peers.get(node_id)
        if info is None or info.last_seen == 0:
            return None
        now = self._clock()
        observed = now - info.first_up
        away, times = info.away_seconds, info.times_away
        if not self.is_up(node_id):
            away += now - info.last_seen
            times += 1
        return Presence(observed, times, away)

    def up_ids(self) -> list[int]:
        return [p.node_id for p in self.peers() if self.is_up(p.node_id)]

    def candidates(self) -> list[Candidate]:
        """Live peers as placement candidates (host id defaults to the node id)."""
        return [
            Candidate(p.node_id, p.host_id or f"node-{p.node_id}", p.free)
            for p in self.peers()
            if self.is_up(p.node_id)
        ]

    def host_of(self, node_id: int) -> str:
        info = self._peers.get(node_id)
        return info.host_id if info and info.host_id else f"node-{node_id}"


def dialable(address: str) -> bool:
    """Whether ``address`` is a HOST:PORT a node can dial (port 1..65535, some host)."""
    host, sep, port = address.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)
