"""One snapshot of a node's health, taken in one place and formatted by each reader:
``lanvault status`` (people and ``--json``) and the Prometheus metrics.

What needs the disk (the catalog's counts, the store's) is read on worker threads; what lives
on the event loop (membership, counters, the last repair and scrub) is read there. Counting how
many of the owner's chunks are below their degree asks every peer (QUERY), so it is taken only
when asked for (``status`` does; a metrics scrape does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chunkstore.catalogdb import CatalogDB
from chunkstore.store import ChunkStore, DamageSummary
from node.membership import Presence
from node.node import LatencyStats, Node
from node.offload import in_thread
from node.owner import Owner
from node.safekeeping import Safekeeping, SafekeepingReport
from node.verify import check_coded


@dataclass(frozen=True, slots=True)
class PeerHealth:
    node_id: int
    address: str
    computer: str
    up: bool
    gone: bool
    capacity: int
    used: int
    free: int
    presence: Presence | None  # what this node observed of it (None: never seen)


@dataclass(frozen=True, slots=True)
class Health:
    node_id: int
    address: str
    computer: str
    advertised_capacity: int  # what peers are told this node can take
    quota: int
    used: int
    room: int  # what it can really take (less than the quota when the disk is full)
    free: int  # the quota less what is used
    kept_over_quota: int  # chunks a reclaim still has to move
    store_chunks: int
    held_by_owner: dict[int, int]
    peers: list[PeerHealth]
    held_below_degree: int  # chunks held for others the last repair pass left below degree
    own_below_degree: int | None  # own chunks below degree (a coded one: short of shares) now
    catalog: dict[str, int]  # versions, pending_versions, pending_degree, snapshots, ...
    pending_reason: str | None  # why pending versions cannot reach their degree on this network
    last_backup_ns: int
    scrub_bad_copies: int
    damage: DamageSummary
    kit: bool
    recovery: SafekeepingReport
    catalog_behind_seconds: float | None
    bytes_received: int
    bytes_sent: int
    latency: dict[str, LatencyStats] = field(default_factory=dict)

    @property
    def disk_full(self) -> bool:
        return self.room < self.free

    @property
    def under_replicated(self) -> int:
        return (self.own_below_degree or 0) + self.held_below_degree


async def take(
    node: Node,
    owner: Owner,
    store: ChunkStore,
    catalog: CatalogDB,
    safekeeping: Safekeeping,
    *,
    own_degrees: bool,
) -> Health:
    """The node's health now; with ``own_degrees``, the peers are asked which of the owner's
    chunks they hold."""
    membership = node.membership
    peers = [
        PeerHealth(
            p.node_id,
            p.address,
            p.host_id,
            membership.is_up(p.node_id),
            membership.is_gone(p.node_id),
            p.capacity,
            p.used,
            p.free,
            membership.presence(p.node_id),
        )
        for p in membership.peers()
    ]
    own_under: int | None = None
    if own_degrees:
        wanted = await in_thread(catalog.wanted_degrees)
        degrees = await node.replication.degrees(node.node_id, sorted(wanted)) if wanted else {}
        own_under = sum(1 for a, d in wanted.items() if degrees.get(a, 0) < d)
        own_under += (await check_coded(owner)).short  # coded chunks short of shares

    def from_disk() -> tuple[dict[str, int], int, dict[int, int], DamageSummary]:
        return (
            catalog.counts(),
            store.chunk_count(),
            store.usage_by_owner(),
            store.damage_summary(),
        )

    counts, chunks, by_owner, damage = await in_thread(from_disk)
    repair = node.last_repair
    return Health(
        node_id=node.node_id,
        address=node.address,
        computer=node.config.host_id,
        advertised_capacity=node.advertised_capacity(),
        quota=store.capacity,
        used=store.used_bytes,
        room=store.room_bytes,
        free=store.free_bytes,
        kept_over_quota=node.kept_over_quota,
        store_chunks=chunks,
        held_by_owner=by_owner,
        peers=peers,
        held_below_degree=max(0, repair.below_degree - repair.copies_made),
        own_below_degree=own_under,
        catalog=counts,
        pending_reason=(
            node.replication.short_of_holders(counts["pending_degree"])
            if counts["pending_versions"]
            else None
        ),
        last_backup_ns=owner.last_backup_ns,
        scrub_bad_copies=node.last_scrub_bad,
        damage=damage,
        kit=safekeeping.kit is not None,
        recovery=safekeeping.report,
        catalog_behind_seconds=safekeeping.behind(),
        bytes_received=node.holder.bytes_received,
        bytes_sent=node.holder.bytes_sent,
        latency=dict(node.latency),
    )


def damage_dict(summary: DamageSummary) -> dict[str, Any]:
    """Bad copies this node found and dropped, for status and check (and their --json)."""
    return {
        "total": summary.total,
        "by": summary.by,
        "since": summary.since or None,
        "last": summary.last or None,
        "recent": summary.recent,  # the newest, "owner:address why (found by ...)"
    }


def presence_fields(presence: Presence | None) -> dict[str, Any]:
    """What this node observed of a peer's presence since it first saw it (status)."""
    if presence is None:
        return {"observed_s": 0.0, "uptime": None, "times_away": 0, "away_s": 0.0}
    return {
        "observed_s": round(presence.observed_s, 1),
        "uptime": round(presence.uptime, 4),
        "times_away": presence.times_away,
        "away_s": round(presence.away_s, 1),
    }
