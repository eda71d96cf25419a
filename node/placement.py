"""Where copies go: weighted rendezvous hashing over live nodes, by free space.

Every node gets a score per chunk, ``-weight / ln(u)`` with ``u`` a uniform value in (0, 1) drawn
from a hash of (node, chunk). Sorting by score gives each chunk its own order of preference; a
node's share of first places is proportional to its weight (its free space), and when a node
joins or leaves only the chunks it wins or held move. Copies of one chunk go to different
computers (host ids) first; a second node of the same computer is used only when there are not
enough computers. The owner's own node is never chosen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    node_id: int
    host_id: str
    free_bytes: int


def _unit(node_id: int, key: bytes) -> float:
    digest = hashlib.blake2b(node_id.to_bytes(4, "big") + key, digest_size=8).digest()
    # Map to (0, 1): never 0, so the log is finite.
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 1)


def score(node_id: int, key: bytes, weight: float) -> float:
    if weight <= 0:
        return -math.inf
    return -weight / math.log(_unit(node_id, key))


def rank(key: bytes, candidates: Iterable[Candidate], owner: int) -> list[Candidate]:
    """All eligible candidates in this chunk's order of preference, spread over computers.

    Nodes with no free space come last (they may still hold an existing copy); the owner's own
    node is excluded.
    """
    eligible = [c for c in candidates if c.node_id != owner]
    # A floor weight keeps full nodes in the order (after all others) instead of dropping them.
    by_score = sorted(
        eligible,
        key=lambda c: (c.free_bytes > 0, score(c.node_id, key, max(c.free_bytes, 1))),
        reverse=True,
    )
    first_per_host: list[Candidate] = []
    rest: list[Candidate] = []
    seen_hosts: set[str] = set()
    for cand in by_score:
        if cand.host_id in seen_hosts:
            rest.append(cand)
        else:
            seen_hosts.add(cand.host_id)
            first_per_host.append(cand)
    return first_per_host + rest


def choose_targets(
    key: bytes,
    candidates: Sequence[Candidate],
    owner: int,
    count: int,
    exclude: Iterable[int] = (),
    avoid_hosts: Iterable[str] = (),
    allow_same_host: bool = True,
) -> list[Candidate]:
    """Up to ``count`` new holders for a chunk: not in ``exclude``, new computers first.

    With ``allow_same_host=False`` only computers in neither ``avoid_hosts`` nor the choice so
    far are used (the caller waits for a missing computer instead of doubling up on one).
    """
    excluded = set(exclude)
    busy_hosts = set(avoid_hosts)
    ordered = [c for c in rank(key, candidates, owner) if c.node_id not in excluded]
    chosen: list[Candidate] = []
    for cand in ordered:
        if len(chosen) == count:
            return chosen
        if cand.host_id not in busy_hosts:
            chosen.append(cand)
            busy_hosts.add(cand.host_id)
    if not allow_same_host:
        return chosen
    for cand in ordered:  # not enough computers: allow a second node of one computer
        if len(chosen) == count:
            break
        if cand not in chosen:
            chosen.append(cand)
    return chosen


def keepers(
    key: bytes, holders: Iterable[int], degree: int, host_of: Callable[[int], str], owner_host: str
) -> set[int]:
    """Which ``degree`` of a chunk's holders keep their copy when it has more (the others drop
    theirs). The choice depends on the holders alone, not on anyone's view of free space, so
    it is the same whoever makes it: one copy per computer first, never the owner's computer
    while another will do, then the chunk's own hash order."""
    order = sorted(holders, key=lambda n: (host_of(n) == owner_host, -_unit(n, key), n))
    kept: list[int] = []
    hosts: set[str] = set()
    for node in order:  # one per computer first ...
        if len(kept) < degree and host_of(node) not in hosts:
            kept.append(node)
            hosts.add(host_of(node))
    for node in order:  # ... then any, if there are not enough computers
        if len(kept) < degree and node not in kept:
            kept.append(node)
    return set(kept)
