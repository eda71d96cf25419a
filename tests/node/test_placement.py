"""Placement on its own: first places shared by free space, little movement when a node joins or
leaves, copies on different computers first, the owner never chosen, and keepers that depend on
the holders alone."""

from __future__ import annotations

import hashlib
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from node.placement import Candidate, choose_targets, keepers, rank
from node.replication import PlacementView

KEYS = [hashlib.sha256(str(n).encode()).digest() for n in range(20_000)]


def firsts(candidates: list[Candidate], owner: int = 0) -> Counter[int]:
    return Counter(rank(key, candidates, owner)[0].node_id for key in KEYS)


def test_first_places_go_by_free_space() -> None:
    nodes = [Candidate(1, "a", 100), Candidate(2, "b", 200), Candidate(3, "c", 700)]
    won = firsts(nodes)
    for node, share in ((1, 0.1), (2, 0.2), (3, 0.7)):
        assert abs(won[node] / len(KEYS) - share) < 0.02, won  # 20,000 draws: within 2 %


def test_a_node_joining_or_leaving_moves_only_its_own_chunks() -> None:
    before = [Candidate(n, f"h{n}", 100) for n in range(1, 6)]
    after = [*before, Candidate(6, "h6", 100)]
    moved = joined = 0
    for key in KEYS:
        old, new = rank(key, before, 0)[0].node_id, rank(key, after, 0)[0].node_id
        if old != new:
            moved += 1
            joined += new == 6  # every chunk that moves, moves to the newcomer
    assert moved == joined
    assert abs(moved / len(KEYS) - 1 / 6) < 0.02  # its fair share, no more
    # Leaving: only the chunks node 3 had first place for get a new first.
    gone = [c for c in before if c.node_id != 3]
    for key in KEYS[:2000]:
        old = rank(key, before, 0)[0].node_id
        if old != 3:
            assert rank(key, gone, 0)[0].node_id == old


def test_copies_go_to_different_computers_first_and_never_to_the_owner() -> None:
    nodes = [
        Candidate(1, "owner-pc", 10**9),
        Candidate(2, "desk", 10**9),
        Candidate(3, "desk", 10**9),  # a second disk of one computer
        Candidate(4, "laptop", 10**9),
    ]
    for key in KEYS[:500]:
        two = choose_targets(key, nodes, owner=1, count=2)
        assert {c.host_id for c in two} == {"desk", "laptop"}
        three = choose_targets(key, nodes, owner=1, count=3)
        assert {c.node_id for c in three} == {2, 3, 4}  # a second node of one computer last
        strict = choose_targets(key, nodes, owner=1, count=3, allow_same_host=False)
        assert len(strict) == 2  # the caller waits for a third computer instead
        assert all(c.node_id != 1 for c in three)


def test_a_full_node_comes_last_but_is_not_forgotten() -> None:
    nodes = [Candidate(1, "a", 0), Candidate(2, "b", 10), Candidate(3, "c", 10)]
    for key in KEYS[:500]:
        order = [c.node_id for c in rank(key, nodes, owner=0)]
        assert order[-1] == 1 and sorted(order) == [1, 2, 3]


@given(
    st.lists(st.integers(1, 30), min_size=1, max_size=12, unique=True),
    st.integers(1, 5),
    st.binary(min_size=32, max_size=32),
)
def test_keepers_depend_on_the_holders_alone(holders: list[int], degree: int, key: bytes) -> None:
    def host_of(node: int) -> str:
        return f"pc{node % 4}"  # several nodes per computer

    kept = keepers(key, holders, degree, host_of, owner_host="pc0")
    assert kept == keepers(key, list(reversed(holders)), degree, host_of, "pc0")  # any order
    assert len(kept) == min(degree, len(holders)) and kept <= set(holders)
    hosts = {host_of(n) for n in holders}
    others = hosts - {"pc0"}
    # One per computer first, and the owner's computer only when no other will do.
    assert len({host_of(n) for n in kept}) == min(len(kept), len(hosts))
    if len(others) >= len(kept):
        assert all(host_of(n) != "pc0" for n in kept)


def test_a_placement_view_plans_a_batch_as_choose_targets_does_chunk_by_chunk() -> None:
    """The view a backup's batch is planned from (on a worker thread): each chunk gets the
    holders ``choose_targets`` gives it, new computers first, never the owner or a holder."""
    candidates = [Candidate(n, f"pc{(n + 1) // 2}", 1000 * n) for n in range(2, 8)]
    hosts = {c.node_id: c.host_id for c in candidates}
    view = PlacementView(
        node_id=1,
        host_id="pc1",
        owner=1,
        owner_host="pc1",
        candidates=candidates,
        live_hosts=sorted(hosts.items()),
        hosts=hosts,
    )
    chunks = [(key, {2} if i % 3 == 0 else set()) for i, key in enumerate(KEYS[:300])]
    plans = view.plan(3, chunks)
    for (key, holders), plan in zip(chunks, plans, strict=True):
        assert len(plan) == 3 - len(holders) and not set(plan) & (holders | {1})
        busy = {hosts[h] for h in holders} | {"pc1"}
        expected = choose_targets(
            (1).to_bytes(4, "big") + key, candidates, 1, 3 - len(holders), [*holders, 1], busy,
            allow_same_host=False,
        )  # fmt: skip
        assert plan == [c.node_id for c in expected]
        assert len({hosts[n] for n in plan} | {hosts[h] for h in holders}) == 3  # 3 computers
