"""A forged discovery announcement (or a lying member's gossip) cannot cut a node off from a
peer it reaches: what they say is a hint that never replaces the address of a peer that is up
(docs/security.md)."""

from __future__ import annotations

import types

import trio
import trio.testing

from lanvault.recover import PEER_WAIT, _reach_known_peers
from node.membership import MAX_UNSEEN_PEERS, Membership, PeerInfo


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def peer(peers: Membership, node_id: int) -> PeerInfo:
    info = peers.get(node_id)
    assert info is not None
    return info


def test_a_hint_never_replaces_the_address_of_a_peer_that_is_up() -> None:
    clock = Clock()
    peers = Membership(1, down_after=10, gone_after=60, clock=clock)
    peers.learn(2, "10.0.0.2:7000", "desk")  # from its verified HELLO
    peers.seen(2)
    assert not peers.hint(2, "10.6.6.6:7000", "forged")
    assert (peer(peers, 2).address, peer(peers, 2).host_id) == ("10.0.0.2:7000", "desk")
    clock.now += 11  # down now: where it went is worth trying (the dial still proves who it is)
    assert peers.hint(2, "10.0.0.9:7000")
    assert peer(peers, 2).address == "10.0.0.9:7000"
    assert peers.hint(3, "10.0.0.3:7000", "laptop")  # a new peer: its first address
    assert peer(peers, 3).host_id == "laptop"
    assert not peers.hint(4, None)  # named without an address: known, nothing to dial
    assert peer(peers, 4).address == ""


def test_an_address_no_node_can_dial_is_never_taken() -> None:
    # A member's HELLO once said "" and the node learned "127.0.0.1:" from it, then its dialer
    # died on it (the whole node with it). Whatever a HELLO, datagram or gossip says, only a
    # HOST:PORT is kept.
    peers = Membership(1, down_after=10, gone_after=60, clock=Clock())
    for bad in ("127.0.0.1:", ":7000", "host", "10.0.0.1:0", "10.0.0.1:99999", "[]:80", "a:b"):
        peers.learn(5, bad)
        assert not peers.hint(6, bad)
    assert peer(peers, 5).address == "" and peer(peers, 6).address == ""
    peers.learn(5, "[fe80::1]:7000")
    assert peer(peers, 5).address == "[fe80::1]:7000"


def test_a_flood_of_invented_ids_is_bounded_and_crowds_out_no_member() -> None:
    peers = Membership(1, down_after=10, gone_after=60, clock=Clock())
    peers.learn(2, "10.0.0.2:7000")
    peers.seen(2)  # a member on a verified link
    for node_id in range(100, 100 + 10 * MAX_UNSEEN_PEERS):  # a host off the network announces
        peers.hint(node_id, f"10.6.6.6:{node_id}")
    assert len(peers.peers()) <= MAX_UNSEEN_PEERS + 1
    assert peer(peers, 2).address == "10.0.0.2:7000"
    peers.learn(5, "10.0.0.5:7000")  # a real node's verified HELLO still gets in
    assert peer(peers, 5).address == "10.0.0.5:7000"


async def test_invented_peers_delay_a_recovery_at_most_its_wait_and_are_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An outsider announcing ids no member has: the recovering node waits for them no longer
    than PEER_WAIT, goes on with the peers that answered, and says which did not."""
    await trio.sleep(1)  # the mock clock starts at 0, which membership reads as "never seen"
    peers = Membership(1, down_after=10, gone_after=6, clock=trio.current_time)
    peers.learn(4, "10.0.0.4:7420", "desk")
    gossiped = 0

    async def gossip() -> None:  # node 4 answers every round; the forged ids never do
        nonlocal gossiped
        gossiped += 1
        peers.seen(4)
        peers.hint(77, "10.6.6.6:7420", "forged")

    daemon = types.SimpleNamespace(
        node=types.SimpleNamespace(membership=peers, pool=types.SimpleNamespace(gossip=gossip))
    )
    said: list[str] = []
    started = trio.current_time()
    assert await _reach_known_peers(daemon, said.append) == [77]
    assert trio.current_time() - started <= PEER_WAIT + 1 and gossiped > 2
    assert said == [
        f"warning: node 77 did not answer in {PEER_WAIT:.0f} s; a newer catalog copy may be on them"
    ]

    # With only real members, it goes on as soon as everyone known is up (two steady rounds).
    honest = Membership(1, down_after=10, gone_after=6, clock=trio.current_time)
    daemon.node.membership = honest

    async def honest_gossip() -> None:
        honest.learn(4, "10.0.0.4:7420")
        honest.seen(4)

    daemon.node.pool.gossip = honest_gossip
    started = trio.current_time()
    assert await _reach_known_peers(daemon, said.append) == []
    assert trio.current_time() - started < 5 and len(said) == 1
