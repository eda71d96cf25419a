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
