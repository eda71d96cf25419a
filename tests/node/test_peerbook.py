"""The peers a node has met survive its restart (``node/peerbook.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing

from node.membership import Membership
from node.peerbook import keep_peer_book, load_peer_book, recall, save_peer_book

from .cluster import eventually, open_cluster


def test_a_missing_or_damaged_book_is_empty_and_bad_entries_are_skipped(tmp_path: Path) -> None:
    book = tmp_path / "peers.json"
    assert load_peer_book(book) == []
    book.write_text("{not json")
    assert load_peer_book(book) == []
    book.write_text(json.dumps({"a": 1}))
    assert load_peer_book(book) == []
    book.write_text(
        json.dumps([[2, "10.0.0.2:7420", "pc"], [-1, "x:1", ""], [3, "", ""], ["4", "y:1", ""]])
    )
    assert load_peer_book(book) == [(2, "10.0.0.2:7420", "pc")]
    save_peer_book(book, [(5, "10.0.0.5:7420", "nas"), (6, "10.0.0.6:7420", "")])
    assert load_peer_book(book) == [(5, "10.0.0.5:7420", "nas"), (6, "10.0.0.6:7420", "")]
    assert not (tmp_path / "peers.json.tmp").exists()


async def test_only_peers_seen_are_written_and_recall_gives_hints(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    book = tmp_path / "peers.json"
    await trio.sleep(1)  # the mock clock starts at 0, which membership reads as "never seen"
    membership = Membership(1, down_after=5, gone_after=60, clock=trio.current_time)
    membership.learn(2, "10.0.0.2:7420", "pc-2")
    membership.seen(2)
    membership.hint(66, "10.6.6.6:7420", "announced")  # unauthenticated: never remembered
    async with trio.open_nursery() as nursery:
        await nursery.start(keep_peer_book, membership, book)
        while not book.exists():
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert load_peer_book(book) == [(2, "10.0.0.2:7420", "pc-2")]

    later = Membership(1, down_after=5, gone_after=60, clock=trio.current_time)
    assert recall(later, book) == 1
    info = later.get(2)
    assert info is not None and info.address == "10.0.0.2:7420" and info.host_id == "pc-2"
    assert not later.is_up(2)  # remembered is not seen


async def test_a_restarted_node_whose_seeds_are_down_finds_the_peers_it_knew(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_cluster(tmp_path / "c", 4) as cluster:
        book = tmp_path / "peers4.json"
        cluster.kill(4)
        await cluster.start(4, peer_book=book)
        await eventually(lambda: {e[0] for e in load_peer_book(book)} == {1, 2, 3}, 120)
        assert cluster.members[4].node.config.seeds == ["mem:1", "mem:2"]
        cluster.kill(4)
        cluster.hub.cut.update({1, 2})  # both seeds unreachable: only the book knows node 3
        await trio.sleep(1)
        four = (await cluster.start(4, peer_book=book)).node
        known = four.membership.get(3)  # from the book, before anyone answered
        assert known is not None and known.address == "mem:3" and known.host_id == "host-3"
        told = four.status_info()["peers"]  # what gossip hands on
        assert isinstance(told, list) and [3, "mem:3", "host-3"] in [e[:3] for e in told]
        await eventually(lambda: four.membership.is_up(3), 120)
