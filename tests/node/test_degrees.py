"""How many holders a chunk has, as the peers answer QUERY: each peer counted once per chunk,
whatever its answer repeats; what was not asked is not reported; the owner's node not asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from node.membership import Membership
from node.messages import Holding, Message, Query
from node.pool import PeerPool
from node.replication import Replication


class _Peers:
    """Peers 1 (the owner), 2, 3 and 4 up; each answers QUERY with what ``answers`` says."""

    def __init__(self, answers: dict[int, Callable[[tuple[bytes, ...]], tuple[bytes, ...]]]):
        self.answers = answers
        self.asked: list[int] = []

    def up_ids(self) -> list[int]:
        return [1, 2, 3, 4]

    async def request_quietly(
        self, peer: int, make: Callable[[int], Message], timeout: float
    ) -> Message | None:
        query = make(7)
        assert isinstance(query, Query) and query.owner == 1
        self.asked.append(peer)
        return Holding(7, self.answers[peer](query.addresses))


async def test_each_peer_counts_once_per_chunk_and_only_what_was_asked() -> None:
    a, b, c, stranger = (bytes([n]) * 32 for n in range(4))
    peers = _Peers(
        {
            2: lambda asked: asked,  # holds everything
            3: lambda asked: (a, a, a, stranger),  # repeats itself, names what was not asked
            4: lambda asked: (),  # holds nothing
        }
    )
    replication = Replication(
        1, "host-1", cast(Membership, peers), cast(PeerPool, cast(Any, peers)), 5.0
    )
    assert await replication.degrees(1, [a, b, c]) == {a: 2, b: 1, c: 1}
    assert sorted(peers.asked) == [2, 3, 4]  # the owner's own node is never asked


def test_a_degree_is_never_called_impossible_because_this_node_slept() -> None:
    """After a pause longer than the grace period (a computer waking from sleep, an owner
    stopped), every peer looks gone until it is heard again: the backup must wait for them, not
    say that nobody lends space (scenario 10 failed so, at full size)."""
    now = [0.0]
    membership = Membership(1, down_after=5, gone_after=6, clock=lambda: now[0])
    now[0] = 1.0
    for peer in (2, 3):
        membership.seen(peer, capacity=10**9, used=0, chunks=0)
    membership.seen(4, capacity=0, used=0, chunks=0)  # lends nothing
    replication = Replication(1, "host-1", membership, cast(PeerPool, None), 5.0)
    assert replication.short_of_holders(2) is None
    now[0] = 61.0  # this node was stopped for a minute
    assert all(membership.is_gone(p) for p in (2, 3, 4))
    assert replication.short_of_holders(2) is None  # they may well be there: a wait
    said = replication.short_of_holders(3)  # but 3 needs a third lender, and none ever was
    assert said is not None and "2 do (nodes 2, 3); node 4 lends 0 B" in said
    membership.hint(5, "10.0.0.5:7420", "host-5")  # only heard of, never heard from
    now[0] = 200.0
    assert replication.short_of_holders(3) is not None  # a rumour long gone changes nothing
