"""Membership on a fake clock: a peer is up while heard from, down after ``down_after`` of
silence, gone after ``gone_after``; a peer never heard from is gone a grace period after this
node started; its space is known only once it said so; a removed node is no candidate."""

from __future__ import annotations

from node.membership import Membership


def test_up_down_gone_as_time_passes() -> None:
    now = [100.0]
    peers = Membership(1, down_after=5, gone_after=60, clock=lambda: now[0])
    peers.learn(2, "10.0.0.2:7420", "desk")
    assert not peers.is_up(2) and not peers.is_gone(2)  # heard of, not from; grace running
    now[0] = 101.0
    peers.seen(2, capacity=500, used=100, chunks=3)
    assert peers.is_up(2) and peers.up_ids() == [2]
    info = peers.get(2)
    assert info is not None and info.capacity_known and info.free == 400
    assert [c.node_id for c in peers.candidates()] == [2]
    now[0] = 105.9
    assert peers.is_up(2)
    now[0] = 106.0  # five seconds of silence: down, still counted, not a new target
    assert not peers.is_up(2) and not peers.is_gone(2) and peers.candidates() == []
    now[0] = 160.9
    assert not peers.is_gone(2)
    now[0] = 161.0  # the grace period: gone
    assert peers.is_gone(2)
    peers.seen(2)  # back: up again at once
    assert peers.is_up(2) and not peers.is_gone(2)
    peers.forget(2)  # removed from the network
    assert peers.get(2) is None and peers.is_gone(2) and peers.candidates() == []


def test_a_peer_never_heard_from_is_gone_a_grace_period_after_this_node_started() -> None:
    now = [0.0]
    peers = Membership(1, down_after=5, gone_after=60, clock=lambda: now[0])
    now[0] = 30.0
    peers.learn(3, "10.0.0.3:7420")
    info = peers.get(3)
    assert info is not None and not info.capacity_known
    now[0] = 59.9
    assert not peers.is_gone(3)
    now[0] = 60.0  # counted from this node's start, not from when it was heard of
    assert peers.is_gone(3)


def test_a_peers_presence_counts_its_absences_and_the_time_it_was_away() -> None:
    now = [0.0]
    peers = Membership(1, down_after=5, gone_after=600, clock=lambda: now[0])
    peers.learn(2, "10.0.0.2:7420", "laptop")
    assert peers.presence(2) is None  # never seen: nothing observed
    now[0] = 10.0
    peers.seen(2)
    for t in range(11, 100):  # heard from every second for 90 s
        now[0] = float(t)
        peers.seen(2)
    presence = peers.presence(2)
    assert presence is not None
    assert (presence.observed_s, presence.times_away, presence.away_s) == (89.0, 0, 0.0)
    assert presence.uptime == 1.0
    now[0] = 400.0  # away from 99 s (last heard) until 400 s
    peers.seen(2)
    now[0] = 404.0  # a heartbeat or two missed, less than down_after: no absence
    peers.seen(2)
    presence = peers.presence(2)
    assert presence is not None
    assert (presence.times_away, presence.away_s) == (1, 301.0)
    assert presence.uptime == 1 - 301 / 394
    now[0] = 414.0  # silent again for 10 s: the absence going on counts
    presence = peers.presence(2)
    assert presence is not None and (presence.times_away, presence.away_s) == (2, 311.0)
