"""The chunk store every node uses to hold chunks for others: an index and a backend.

    STORE/index.sqlite3    the index (``chunkindex.py``): what is held, where, the quota's
                           accounting, the owners' small records, the bad copies found
    STORE/segments/        the disk backend's segment files (``segments.py``), or
    STORE/cloud.json       a bucket's binding, the envelopes being objects (``cloud.py``)

One index, whichever backend: admission, dedup, quota and the race of two puts of one chunk
are decided in one place; the backend writes, reads, forgets and verifies the bytes.

Durability: ``put_many`` has the backend write every new envelope durably (segments: one
``fdatasync`` per batch; a bucket: every PUT answered), then commits the index rows in one
transaction (WAL, ``synchronous=FULL``). Only then does it return, so one pair of flushes
covers a whole batch (group commit). A crash before the commit leaves bytes no row names
(garbage, never visible); a crash after it loses nothing.

The store never builds a path from an id it was given: ids are validated and looked up in the
index, and where bytes lie is chosen by the backend.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from . import crashpoints, shares
from .chunkindex import (
    BadChunk,
    ChunkIndex,
    DamageSummary,
    IndexedChunk,
    Location,
    PutItem,
    Record,
    StoredChunk,
    connect_index,
)
from .envelope import ADDRESS_OFFSET, ADDRESS_SIZE, MAX_ENVELOPE_SIZE, MIN_ENVELOPE_SIZE
from .errors import ChunkNotFoundError, ChunkstoreError, InvalidIdError
from .segments import DISK_RESERVE, SegmentBackend, StorageReport
from .shares import ShareError, is_share

__all__ = [
    "DISK_RESERVE",
    "BadChunk",
    "CheckReport",
    "ChunkStore",
    "DamageSummary",
    "PutItem",
    "StoredChunk",
]

MAX_OWNER_ID = 2**32 - 1
MAX_DEGREE = 9
CLOUD_MARKER = "cloud.json"  # present in a store whose envelopes live in a bucket (cloud.py)
_HEX_ADDRESS = re.compile(r"^[0-9a-f]{64}$")
_BLOB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
T = TypeVar("T")


def validate_owner(owner: object) -> int:
    if isinstance(owner, bool) or not isinstance(owner, int) or not 0 <= owner <= MAX_OWNER_ID:
        raise InvalidIdError(
            f"invalid owner id {owner!r}: expected an integer in 0..{MAX_OWNER_ID}"
        )
    return owner


def validate_address(address: object) -> bytes:
    if not isinstance(address, bytes) or len(address) != ADDRESS_SIZE:
        shown = repr(address)[:40]
        raise InvalidIdError(f"invalid chunk address {shown}: expected {ADDRESS_SIZE} bytes")
    return address


def parse_address(text: str) -> bytes:
    """Parse a chunk address written as 64 lowercase hex digits; refuse anything else."""
    if not isinstance(text, str) or not _HEX_ADDRESS.fullmatch(text):
        raise InvalidIdError(f"invalid chunk address {text[:80]!r}: expected 64 hex digits")
    return bytes.fromhex(text)


def _validate_blob_name(name: str) -> None:
    if not _BLOB_NAME.fullmatch(name):
        raise InvalidIdError(f"invalid blob name {name[:70]!r}")


@dataclass(slots=True)
class CheckReport:
    """What ``check`` found; ``clean`` means every index entry verified."""

    verified: int = 0
    bad: list[BadChunk] = field(default_factory=list)
    orphan_records: int = 0  # records no index entry names: deleted or written twice
    orphan_bytes: int = 0  # (garbage that compaction reclaims)
    damaged_records: int = 0  # records inside a segment that fail their checksum
    damaged_bytes: int = 0
    torn_bytes: int = 0  # an incomplete record at a segment's end (a write cut short)
    repaired: bool = False
    found_before: DamageSummary = field(default_factory=DamageSummary)

    @property
    def clean(self) -> bool:
        return not self.bad


class Backend(Protocol):
    """Where a store keeps its envelopes. "(lock held)": the caller holds the index's lock."""

    def close(self) -> None: ...

    def room(self, fresh: bool = False) -> int: ...  # bytes the medium can still take

    def begin(self, records: Sequence[Record]) -> Any: ...  # (lock held) a token for write

    def write(self, token: Any) -> list[tuple[int, int]]: ...  # durable; (segment, offset) each

    def end(self, token: Any, failed: bool) -> None: ...  # (lock held)

    def lost_race(self, raced: Sequence[tuple[Record, Location]]) -> None: ...  # (lock held)

    def read(self, owner: int, address: bytes, loc: Location) -> bytes: ...  # verified

    def map_reads(self, read: Callable[[bytes], T], addresses: Sequence[bytes]) -> list[T]: ...

    def forgetting(self, removed: Sequence[IndexedChunk]) -> None: ...  # (in the transaction)

    def forgotten(self) -> None: ...  # after a removal's commit

    def scrub(self) -> list[BadChunk]: ...

    def check(self, repair: bool) -> StorageReport: ...

    def garbage_bytes(self) -> int: ...

    def compact(self, min_garbage_ratio: float = 0.5) -> int: ...


class ChunkStore:
    """A content-addressed, per-owner, quota-limited, crash-safe chunk store.

    Thread-safe. The index's lock covers the rows and the reservation of room; the backend
    writes and flushes outside it, so one writer's flush overlaps another's work. A chunk is
    indexed only after its bytes are durable.
    """

    def __init__(self, root: Path, index: ChunkIndex, backend: Backend) -> None:
        self.root = root
        self.index = index
        self.backend = backend
        self._lock = index.lock

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike[str], capacity: int | None = None) -> ChunkStore:
        """Open (creating if needed) the disk store at ``root``; ``capacity`` sets the quota."""
        path = Path(root)
        if (path / CLOUD_MARKER).exists():
            raise ChunkstoreError(
                f"{path} keeps its chunks in a bucket ({CLOUD_MARKER}): open it as a cloud store"
            )
        path.mkdir(parents=True, exist_ok=True)
        index = ChunkIndex(*connect_index(path))
        store = cls(path, index, SegmentBackend(path, index))
        if capacity is not None:
            store.set_capacity(capacity)
        return store

    def close(self) -> None:
        with self._lock:
            if self.index.closed:
                return
        self.backend.close()  # outside the lock: a bucket waits for its requests to end
        with self._lock:
            self.index.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- accounting ----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.index.capacity

    @property
    def used_bytes(self) -> int:
        return self.index.used

    @property
    def record_bytes(self) -> int:
        """Of ``used_bytes``, the owners' small records (kits, catalog manifests): a reclaim
        drops chunks, which have other holders, and keeps these, which recovery needs."""
        return self.index.record_bytes()

    @property
    def free_bytes(self) -> int:
        return self.index.free_bytes

    def disk_room(self, fresh: bool = False) -> int:
        """Bytes of chunks the backend's medium can still take (see ``SegmentBackend.room``)."""
        return self.backend.room(fresh)

    @property
    def room_bytes(self) -> int:
        """What this store can take now: its quota's free part, or less when the disk is
        fuller than the quota assumes (what a holder advertises to the owners)."""
        reserved = self.index.reserved
        return max(0, min(self.free_bytes - reserved, self.disk_room() - reserved))

    def set_capacity(self, capacity: int) -> None:
        """Set the quota. Lowering it below ``used_bytes`` is allowed: see ``evict``."""
        self.index.set_capacity(capacity)

    def chunk_count(self) -> int:
        return self.index.chunk_count()

    # -- writing -------------------------------------------------------------------------

    def put(self, owner: int, address: bytes, envelope: bytes, degree: int = 1) -> bool:
        """Store one chunk durably. Returns False when it was already held (nothing written)."""
        return self.put_many([PutItem(owner, address, envelope, degree)])[0]

    def put_many(self, items: Sequence[PutItem]) -> list[bool]:
        """Store chunks durably with one group commit; True for each chunk newly written.

        All-or-nothing on refusal: if the batch would exceed the quota nothing is written.
        """
        for item in items:
            self.check_item(item)
        # Hashed outside the lock: one caller's hashing overlaps another's flush.
        digests = [hashlib.sha256(item.envelope).digest() for item in items]
        index, backend = self.index, self.backend
        with self._lock:
            written, records, needed = index.admit(items, digests, backend.room(fresh=True))
            if not records:
                return written
            token = backend.begin(records)
            index.reserved += needed
        try:
            placed = backend.write(token)  # outside the lock: flushes overlap
            crashpoints.reached("store.written")
        except BaseException:
            with self._lock:
                index.reserved -= needed
                backend.end(token, failed=True)
            raise
        with self._lock:
            # The reservation ends only once the records are indexed, in the same hold of the
            # lock: until then neither a compaction nor a check may take them for garbage, and
            # the quota counts their bytes all along. A concurrent put of the same chunk may
            # have been indexed meanwhile: its copy stands, ours is the backend's to drop, and
            # this chunk is "already held".
            try:
                raced = index.index_new(records, placed)
                if raced:
                    backend.lost_race(
                        [
                            (r, raced[(r[0].owner, r[0].address)])
                            for r in records
                            if (r[0].owner, r[0].address) in raced
                        ]
                    )
            finally:
                index.reserved -= needed
                backend.end(token, failed=False)
        if not raced:
            return written
        backend.forgotten()
        return [
            w and (i.owner, i.address) not in raced for w, i in zip(written, items, strict=True)
        ]

    def check_item(self, item: PutItem) -> None:
        """Refuse (``InvalidIdError``) what ``put_many`` would refuse, before any I/O."""
        validate_owner(item.owner)
        validate_address(item.address)
        if not isinstance(item.envelope, bytes):
            raise InvalidIdError("envelope must be bytes")
        if not MIN_ENVELOPE_SIZE <= len(item.envelope) <= MAX_ENVELOPE_SIZE:
            raise InvalidIdError(
                f"envelope of {len(item.envelope)} bytes is outside "
                f"{MIN_ENVELOPE_SIZE}..{MAX_ENVELOPE_SIZE}"
            )
        if item.envelope[ADDRESS_OFFSET : ADDRESS_OFFSET + ADDRESS_SIZE] != item.address:
            raise InvalidIdError("envelope header names another address; refusing to misfile it")
        if is_share(item.envelope):
            try:
                shares.parse(item.envelope)  # a share verifies alone: never store a bad one
            except ShareError as exc:
                raise InvalidIdError(f"refusing a bad share: {exc}") from exc
        if isinstance(item.degree, bool) or not 1 <= item.degree <= MAX_DEGREE:
            raise InvalidIdError(f"invalid degree {item.degree!r}: expected 1..{MAX_DEGREE}")

    # -- reading -------------------------------------------------------------------------

    def has(self, owner: int, address: bytes) -> bool:
        validate_owner(owner)
        validate_address(address)
        with self._lock:
            self.index.ensure_open()
            return self.index.location(owner, address) is not None

    def which_held(self, owner: int, addresses: Iterable[bytes]) -> set[bytes]:
        """The subset of ``addresses`` this store holds for ``owner``."""
        validate_owner(owner)
        wanted = list(addresses)
        if not all(type(a) is bytes and len(a) == ADDRESS_SIZE for a in wanted):
            for address in wanted:
                validate_address(address)  # says which
        with self._lock:
            self.index.ensure_open()
            return self.index.held_of(owner, wanted)

    def get(self, owner: int, address: bytes) -> bytes:
        """Return the verified envelope; ``CorruptChunkError`` if the bytes rotted."""
        validate_owner(owner)
        validate_address(address)
        with self._lock:
            self.index.ensure_open()
            loc = self.index.location(owner, address)
        if loc is None:
            raise ChunkNotFoundError(f"no chunk {address.hex()} of owner {owner}")
        return self.backend.read(owner, address, loc)

    def get_many(
        self, owner: int, addresses: Sequence[bytes]
    ) -> list[bytes | ChunkstoreError | OSError]:
        """``get`` for each address: the envelope, or the error that one raised."""

        def one(address: bytes) -> bytes | ChunkstoreError | OSError:
            try:
                return self.get(owner, address)
            except (ChunkstoreError, OSError) as exc:
                return exc

        return self.backend.map_reads(one, addresses)

    def chunks(self, owner: int | None = None) -> list[StoredChunk]:
        return self.index.chunks(None if owner is None else validate_owner(owner))

    def usage_by_owner(self) -> dict[int, int]:
        """Bytes kept here per owner, chunks and records together (what the quota counts)."""
        return self.index.usage_by_owner()

    # -- small per-owner blobs (wrapped keys, sealed catalogs) ------------------------------

    def put_blob(self, owner: int, name: str, seq: int, data: bytes) -> bool:
        """Keep ``data`` unless a blob with a higher or equal ``seq`` is already kept."""
        validate_owner(owner)
        _validate_blob_name(name)
        return self.index.put_blob(owner, name, seq, data)

    def get_blob(self, owner: int, name: str) -> tuple[int, bytes] | None:
        validate_owner(owner)
        _validate_blob_name(name)
        return self.index.get_blob(owner, name)

    # -- removing ------------------------------------------------------------------------

    def delete(self, owner: int, address: bytes) -> bool:
        """Remove ``owner``'s chunk; False if it was not held. Never touches other owners."""
        return bool(self.delete_many(owner, [address]))

    def delete_many(self, owner: int, addresses: Iterable[bytes]) -> list[bytes]:
        validate_owner(owner)
        wanted = [validate_address(a) for a in addresses]
        with self._lock:
            self.index.ensure_open()
            # Often most of the addresses are not held (an outbox keeps only what a cut
            # changed): find the held ones in batched queries, not one query each.
            held = self.index.held_pairs([(owner, a) for a in wanted])
            removed = self._remove([(owner, a) for a in wanted if (owner, a) in held])
        return [address for _o, address, _l in removed]

    def evict(
        self,
        target_used: int,
        priority: Callable[[StoredChunk], float] | None = None,
    ) -> list[StoredChunk]:
        """Drop chunks until ``used_bytes <= target_used``; return what was dropped.

        ``priority`` ranks chunks (highest dropped first); by default the most replicated and
        then the oldest go first, as they are the cheapest to lose.
        """
        if target_used < 0:
            raise ValueError("target must not be negative")
        with self._lock:
            if self.index.used <= target_used:
                return []
            candidates = self.chunks()
            rank = priority or (lambda c: c.degree * 1e12 - c.stored_at)
            candidates.sort(key=rank, reverse=True)
            dropped: list[StoredChunk] = []
            to_free = self.index.used - target_used
            for chunk in candidates:
                if to_free <= 0:
                    break
                dropped.append(chunk)
                to_free -= chunk.length
            self._remove([(c.owner, c.address) for c in dropped])
        return dropped

    def _remove(self, pairs: Sequence[tuple[int, bytes]]) -> list[IndexedChunk]:
        """(lock held) Forget these chunks, the backend told in the same transaction; then
        it frees their bytes (a bucket deletes the objects)."""
        if not pairs:
            return []
        with self.index.transaction():
            removed = self.index.remove(pairs)
            self.backend.forgetting(removed)
        if removed:
            self.backend.forgotten()
        return removed

    # -- verification and upkeep ---------------------------------------------------------

    def scrub(self, drop_bad: bool = False, found_by: str = "scrub") -> list[BadChunk]:
        """Verify every chunk (the disk re-reads it; a bucket lists its objects); return the
        bad ones (and drop them if asked)."""
        bad = self.backend.scrub()
        if drop_bad and bad:
            self.drop_damaged(bad, found_by)
        return bad

    def drop_damaged(self, bad: Sequence[BadChunk], found_by: str) -> list[BadChunk]:
        """Forget these bad copies (their owners or other holders make them again) and note
        them for ``damage_summary``; returns those that were still held."""
        with self._lock, self.index.transaction():
            removed = self.index.remove([(b.owner, b.address) for b in bad])
            gone = {(o, a) for o, a, _l in removed}
            dropped = [b for b in bad if (b.owner, b.address) in gone]
            self.index.note_damage(dropped, found_by)
            self.backend.forgetting(removed)
        if removed:
            self.backend.forgotten()
        return dropped

    def damage_summary(self) -> DamageSummary:
        """Every bad copy this store found and dropped, by how it was found."""
        return self.index.damage_summary()

    def check(self, repair: bool = False) -> CheckReport:
        """Reconcile index and backend: every entry verified, what no entry names counted.

        With ``repair`` bad entries are dropped from the index (so the network re-replicates
        them) and the backend cleaned (segments compacted, orphan objects deleted).
        """
        report = CheckReport(found_before=self.damage_summary())
        report.bad = self.scrub(drop_bad=repair, found_by="check")
        with self._lock:
            count = self.chunk_count()
        report.verified = count if repair else count - len(report.bad)
        found = self.backend.check(repair)
        report.orphan_records, report.orphan_bytes = found.orphan_records, found.orphan_bytes
        report.damaged_records, report.damaged_bytes = found.damaged_records, found.damaged_bytes
        report.torn_bytes = found.torn_bytes
        report.repaired = repair
        return report

    def garbage_bytes(self) -> int:
        """Bytes the backend keeps that the index no longer names (``compact`` frees them)."""
        return self.backend.garbage_bytes()

    def compact(self, min_garbage_ratio: float = 0.5) -> int:
        """Free what removals left behind; return the bytes freed."""
        return self.backend.compact(min_garbage_ratio)
