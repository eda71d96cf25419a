"""``lanvault check --read-data``: the owner reads back and verifies its chunks' copies.

A holder checks its records' checksums, but only the owner can open an envelope (decrypt it and
check that the plaintext has the address it is filed under), so only the owner can tell a copy
a holder altered and re-checksummed from a good one. Every copy on every holder of every chunk
a retained version or the catalog copy uses is fetched and opened (or a random sample of the
chunks, ``--sample PERCENT``), as restic's ``check --read-data`` does. With ``--repair`` a bad
copy is deleted from its holder and the chunk brought back to its degree from a good copy.
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chunkstore.envelope import open_chunk
from chunkstore.errors import EnvelopeError
from chunkstore.keys import KeyRing
from chunkstore.shares import Code, is_share, items_of, verify

from .messages import Chunk, Delete, Deleted, GetChunk
from .offload import in_thread
from .transport import PeerUnavailable, RemoteError

if TYPE_CHECKING:
    from .owner import Owner

BATCH = 240  # chunks asked of one holder at a time


@dataclass(slots=True)
class ReadDataReport:
    chunks: int = 0  # chunks whose copies were read
    copies_verified: int = 0  # copies that opened under our key at their address
    bad_copies: list[str] = field(default_factory=list)  # "node N: chunk …: why"
    unreadable: int = 0  # copies a holder listed but did not hand over (down, or lost it)
    copies_dropped: int = 0  # bad copies deleted from their holders (--repair)
    copies_made: int = 0  # good copies made instead (--repair)
    bytes_read: int = 0


def bad_envelopes(keys: KeyRing, envelopes: dict[bytes, bytes]) -> dict[bytes, str]:
    """Why each envelope that does not open under ``keys`` at its address is bad (empty: all
    good)."""
    bad: dict[bytes, str] = {}
    for address, envelope in envelopes.items():
        try:
            if is_share(envelope):  # a coded chunk's share: it verifies alone, with our key
                verify(envelope, address, share_key=keys.share_key)
            else:
                open_chunk(keys, address, envelope)
        except EnvelopeError as exc:  # ShareError is one
            bad[address] = str(exc) or type(exc).__name__
    return bad


async def read_data(
    owner: Owner,
    sample_percent: float = 100.0,
    repair: bool = False,
    progress: Callable[[ReadDataReport, int], None] | None = None,
) -> ReadDataReport:
    """Read and open every copy of our chunks (or of a random ``sample_percent`` of them),
    and check every share of our coded chunks alone (a bad share deleted with ``repair`` is
    rebuilt by the holders' repair from the others)."""
    catalog = owner.catalog
    wanted = dict(await in_thread(catalog.live_addresses))
    for address in await in_thread(catalog.catalog_chunks):
        wanted[address] = max(wanted.get(address, 0), owner.default_degree)
    for address, degree in await in_thread(catalog.coded_chunks):
        for share in items_of(address, degree):  # each share read and checked alone
            wanted[share] = 1
    chosen = sorted(wanted)
    if sample_percent < 100.0:
        count = max(1, round(len(chosen) * sample_percent / 100)) if chosen else 0
        chosen = sorted(random.SystemRandom().sample(chosen, count))
    report = ReadDataReport(chunks=len(chosen))
    holders = await owner.node.replication.query_holders(owner.owner_id, chosen)
    by_holder: dict[int, list[bytes]] = defaultdict(list)
    for address in chosen:
        for holder in holders[address]:
            by_holder[holder].append(address)
    bad: dict[bytes, set[int]] = defaultdict(set)
    total = sum(len(a) for a in by_holder.values())
    for holder, addresses in sorted(by_holder.items()):
        for i in range(0, len(addresses), BATCH):
            batch = addresses[i : i + BATCH]
            damaged: set[bytes] = set()
            got = await owner.fetcher.get_envelopes(holder, batch, damaged)
            report.unreadable += len(batch) - len(got) - len(damaged)
            for address in sorted(damaged):  # the holder's own checksum found it bad
                bad[address].add(holder)
                report.bad_copies.append(
                    f"node {holder}: chunk {address.hex()[:16]}…: damaged on the holder's disk"
                )
            report.bytes_read += sum(len(e) for e in got.values())
            failed = await in_thread(bad_envelopes, owner.keys, got, limiter=owner.node.cpu_limiter)
            for address in got:
                if address in failed:
                    bad[address].add(holder)
                    report.bad_copies.append(
                        f"node {holder}: chunk {address.hex()[:16]}…: {failed[address]}"
                    )
                else:
                    report.copies_verified += 1
            if progress:
                progress(report, total)
    if repair and bad:
        await _repair(owner, bad, holders, wanted, report)
    return report


async def _repair(
    owner: Owner,
    bad: dict[bytes, set[int]],
    holders: dict[bytes, set[int]],
    wanted: dict[bytes, int],
    report: ReadDataReport,
) -> None:
    """Delete the bad copies, then bring each chunk back to its degree from a good copy."""
    by_holder: dict[int, list[bytes]] = defaultdict(list)
    for address, nodes in bad.items():
        for node_id in nodes:
            by_holder[node_id].append(address)
    node = owner.node
    for holder, addresses in by_holder.items():
        answer = await node.pool.request_quietly(
            holder,
            functools.partial(Delete, owner=owner.owner_id, addresses=tuple(addresses)),
            node.config.request_timeout,
        )
        if isinstance(answer, Deleted):
            report.copies_dropped += len(addresses)
            await in_thread(owner.catalog.drop_holders, [(a, holder) for a in addresses])
    for address, nodes in bad.items():
        good = holders[address] - nodes
        for source in sorted(good):  # a good copy to make the new ones from
            got = await owner.fetcher.get_envelopes(source, [address])
            if address in got and not bad_envelopes(owner.keys, got):
                report.copies_made += await node.replication.replicate(
                    owner.owner_id, address, wanted[address], got[address], set(good)
                )
                break
        # No good copy anywhere: the chunk is lost; its bad copies are in the report.


async def rereplicate(owner: Owner, address: bytes, degree: int) -> int:
    """Bring one of our chunks back to ``degree`` from any holder's copy (for ``check --repair``)."""
    found = await owner.node.replication.query_holders(owner.owner_id, [address])
    holders = found[address]
    for holder in sorted(holders):
        try:
            answer = await owner.node.pool.request(
                holder,
                lambda r: GetChunk(r, owner.owner_id, address),
                owner.node.config.request_timeout,
            )
        except (PeerUnavailable, RemoteError):
            continue
        if not isinstance(answer, Chunk):
            continue
        try:
            await in_thread(open_chunk, owner.keys, address, answer.envelope)
        except EnvelopeError:
            continue
        now = set(holders)  # grows with the copies made
        made = await owner.node.replication.replicate(
            owner.owner_id, address, degree, answer.envelope, now
        )
        await owner.io.call(owner.catalog.set_holders, address, now)
        return made
    return 0


@dataclass(slots=True)
class CodedReport:
    """What ``check`` found of this node's coded chunks (kept as K-of-N shares)."""

    checked: int = 0
    short: int = 0  # fewer than N shares on the holders (the holders rebuild them)
    lost: int = 0  # fewer than K: not rebuildable from what answers now


async def check_coded(owner: Owner) -> CodedReport:
    """Count, for every chunk a live version keeps with a code, its shares the holders say
    they hold (QUERY): short of N, or short of K."""
    coded = await in_thread(owner.catalog.coded_chunks)
    report = CodedReport(checked=len(coded))
    if not coded:
        return report
    shares = [s for address, degree in coded for s in items_of(address, degree)]
    held = await owner.node.replication.degrees(owner.owner_id, shares)
    for address, degree in coded:
        code = Code.of_degree(degree)
        assert code is not None
        present = sum(1 for s in items_of(address, degree) if held.get(s))
        report.short += present < code.n
        report.lost += present < code.k
    return report
