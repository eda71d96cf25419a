"""The on-disk chunk store every node uses to hold chunks for others.

Layout (``docs/formats.md`` has the bytes)::

    STORE/index.sqlite3        SQLite in WAL mode: (owner, address) -> where the envelope lies
    STORE/segments/NNNNNNNN.seg append-only logs of records: header | envelope

Durability: ``put_many`` appends every new record to the active segment, ``fdatasync``s it once,
then commits the index rows in one transaction (WAL, ``synchronous=FULL``). Only then does it
return, so one pair of flushes covers a whole batch (group commit). A crash before the commit
leaves unreferenced records behind (garbage, never visible); a crash after it loses nothing.

Deletion removes index rows; the space comes back when ``compact`` rewrites a segment's live
records elsewhere, commits the new locations, and only then unlinks the old segment.

The store never builds a path from an id it was given: ids are validated and looked up in the
index, and segment names come from integers the store itself chose.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from . import crashpoints
from .envelope import ADDRESS_OFFSET, ADDRESS_SIZE, MAX_ENVELOPE_SIZE, MIN_ENVELOPE_SIZE
from .errors import (
    ChunkNotFoundError,
    ChunkstoreError,
    CorruptChunkError,
    DiskFullError,
    InvalidIdError,
    QuotaExceededError,
)
from .readfds import ReadFds

RECORD_MAGIC = b"LVR1"
# magic(4) owner(u32) address(32) length(u32) sha256-of-envelope(32)
RECORD_HEADER = struct.Struct(">4sI32sI32s")
SEGMENT_LIMIT = 64 * 1024 * 1024
MAX_OWNER_ID = 2**32 - 1
MAX_DEGREE = 9
# Room kept free on the store's disk for its index, its journal and the owners' records: chunks
# are refused before the disk is full, so that the index can always record what was written.
DISK_RESERVE = 4 * 1024 * 1024
DISK_ROOM_TTL = 1.0  # seconds a measure of the disk's free space is reused
_SEGMENT_NAME = re.compile(r"^([0-9]{8})\.seg$")
_HEX_ADDRESS = re.compile(r"^[0-9a-f]{64}$")
_BLOB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    owner     INTEGER NOT NULL,     -- node id of the chunk's owner (who may delete it)
    address   BLOB    NOT NULL,     -- 32-byte keyed address chosen by the owner
    segment   INTEGER NOT NULL,     -- segment file number
    offset    INTEGER NOT NULL,     -- offset of the record header in that segment
    length    INTEGER NOT NULL,     -- envelope length in bytes (what the quota counts)
    digest    BLOB    NOT NULL,     -- SHA-256 of the envelope, checked on every read
    degree    INTEGER NOT NULL,     -- the file's desired replication degree (1..9)
    stored_at REAL    NOT NULL,     -- unix time of the first put
    PRIMARY KEY (owner, address)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_segment ON chunks (segment);
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS damage (  -- bad copies found here and dropped, for check and status
    found_at REAL    NOT NULL,        -- unix time
    found_by TEXT    NOT NULL,        -- 'read', 'scrub' or 'check'
    owner    INTEGER NOT NULL,
    address  BLOB    NOT NULL,
    reason   TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (   -- small per-owner records kept for recovery
    owner INTEGER NOT NULL,
    name  TEXT    NOT NULL,
    seq   INTEGER NOT NULL,          -- only the highest sequence number is kept
    data  BLOB    NOT NULL,
    PRIMARY KEY (owner, name)
) WITHOUT ROWID;
"""


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


@dataclass(frozen=True, slots=True)
class PutItem:
    owner: int
    address: bytes
    envelope: bytes
    degree: int = 1


@dataclass(frozen=True, slots=True)
class StoredChunk:
    owner: int
    address: bytes
    length: int
    degree: int
    stored_at: float


@dataclass(frozen=True, slots=True)
class BadChunk:
    owner: int
    address: bytes
    reason: str


@dataclass(slots=True)
class DamageSummary:
    """Bad copies found here and dropped (the network makes them again), since ``since``."""

    total: int = 0
    by: dict[str, int] = field(default_factory=dict)  # found_by -> copies
    since: float = 0.0  # when the first was found
    last: float = 0.0  # when the last was found


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


@dataclass(frozen=True, slots=True)
class _Location:
    segment: int
    offset: int
    length: int
    digest: bytes


@dataclass(slots=True)
class _Reservation:
    """Where a put's records go: byte ranges at segments' ends, written outside the lock."""

    groups: list[tuple[int, int, int, list[bytes]]] = field(default_factory=list)
    placed: list[tuple[int, int]] = field(default_factory=list)  # (segment, offset) per record


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def pwrite_all(fd: int, buffers: Sequence[bytes], offset: int) -> int:
    """Write every byte of ``buffers`` at ``offset``, gathering them with ``pwritev`` (no
    joined copy); a short write is continued. Returns the bytes written."""
    position = offset
    for start in range(0, len(buffers), _IOV_MAX):
        group = buffers[start : start + _IOV_MAX]
        size = sum(len(b) for b in group)
        done = os.pwritev(fd, group, position)
        if done < size:
            rest = memoryview(b"".join(group))[done:]
            while rest:
                written = os.pwrite(fd, rest, position + done)
                if written == 0:  # never for a regular file; guards against looping forever
                    raise OSError(errno.ENOSPC, "no byte could be written")
                done += written
                rest = rest[written:]
        position += size
    return position - offset


CLOUD_MARKER = "cloud.json"  # present in a store whose envelopes live in a bucket (cloud.py)


def _connect_index(path: Path) -> tuple[sqlite3.Connection, int]:
    """Open (creating) a store's index; return it and the recorded capacity."""
    conn = sqlite3.connect(path / "index.sqlite3", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    row = conn.execute("SELECT value FROM settings WHERE name='capacity'").fetchone()
    return conn, int(row[0]) if row else 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkStore:
    """A content-addressed, per-owner, quota-limited, crash-safe chunk store.

    Thread-safe. The lock covers the index and the reservation of space at a segment's end;
    writing and flushing a reserved range happen outside it, so one writer's ``fdatasync``
    overlaps another's work. A record is indexed only after its own flush returned.
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, capacity: int) -> None:
        self.root = root
        self._segments_dir = root / "segments"
        self._db = conn
        self._lock = threading.RLock()
        self._capacity = capacity
        self._used = self._stored_bytes()
        self._read_fds = ReadFds()  # descriptors kept open for reading, bounded
        self._active: tuple[int, int] | None = None  # (segment, reserved size) appended to
        self._write_fds: dict[int, list[int]] = {}  # segment -> [fd, reservations in flight]
        self._reserved = 0  # bytes of puts written but not yet indexed (counted in the quota)
        self._disk_room: tuple[float, int] = (-DISK_ROOM_TTL, 0)  # (when measured, bytes)
        existing = self._segment_numbers()
        self._next_segment = (max(existing) + 1) if existing else 1
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike[str], capacity: int | None = None) -> ChunkStore:
        """Open (creating if needed) the store at ``root``; ``capacity`` sets the quota."""
        path = Path(root)
        if (path / CLOUD_MARKER).exists():
            raise ChunkstoreError(
                f"{path} keeps its chunks in a bucket ({CLOUD_MARKER}): open it as a cloud store"
            )
        (path / "segments").mkdir(parents=True, exist_ok=True)
        conn, stored_capacity = _connect_index(path)
        store = cls(path, conn, stored_capacity)
        if capacity is not None:
            store.set_capacity(capacity)
        return store

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._active = None
            for fd, _inflight in self._write_fds.values():
                os.close(fd)
            self._write_fds.clear()
            self._read_fds.close_all()
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- accounting ----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def record_bytes(self) -> int:
        """Of ``used_bytes``, the owners' small records (kits, catalog manifests): a reclaim
        drops chunks, which have other holders, and keeps these, which recovery needs."""
        with self._lock:
            return self._query_int("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM blobs")

    @property
    def free_bytes(self) -> int:
        return max(0, self._capacity - self._used)

    def disk_room(self, fresh: bool = False) -> int:
        """Bytes of chunks the disk under the store can still take (its free space less
        ``DISK_RESERVE``), measured at most once a second unless ``fresh``."""
        measured, room = self._disk_room
        now = time.monotonic()
        if fresh or now - measured >= DISK_ROOM_TTL:
            stats = os.statvfs(self._segments_dir)
            room = max(0, stats.f_bavail * stats.f_frsize - DISK_RESERVE)
            self._disk_room = (now, room)
        return room

    @property
    def room_bytes(self) -> int:
        """What this store can take now: its quota's free part, or less when the disk is
        fuller than the quota assumes (what a holder advertises to the owners)."""
        return max(0, min(self.free_bytes - self._reserved, self.disk_room() - self._reserved))

    def set_capacity(self, capacity: int) -> None:
        """Set the quota. Lowering it below ``used_bytes`` is allowed: see ``evict``."""
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        with self._lock:
            self._db.execute(
                "INSERT INTO settings(name, value) VALUES('capacity', ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (capacity,),
            )
            self._capacity = capacity

    def chunk_count(self) -> int:
        return self._query_int("SELECT COUNT(*) FROM chunks")

    # -- writing -------------------------------------------------------------------------

    def put(self, owner: int, address: bytes, envelope: bytes, degree: int = 1) -> bool:
        """Store one chunk durably. Returns False when it was already held (nothing written)."""
        return self.put_many([PutItem(owner, address, envelope, degree)])[0]

    def put_many(self, items: Sequence[PutItem]) -> list[bool]:
        """Store chunks durably with one group commit; True for each chunk newly written.

        All-or-nothing on refusal: if the batch would exceed the quota nothing is written.
        """
        digests = self._checked_digests(items)
        with self._lock:
            written, records, needed = self._admit(items, digests)
            self._raise_degrees([i for i, new in zip(items, written, strict=True) if not new])
            if not records:
                return written
            reservation = self._reserve(records)
            self._reserved += needed
        failed = True
        try:
            self._write_reserved(reservation)  # outside the lock: flushes overlap
            failed = False
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk filled meanwhile
                raise DiskFullError(f"disk full: {exc.strerror}") from exc
            raise
        finally:
            with self._lock:
                self._reserved -= needed
                self._release(reservation, failed)
                self._disk_room = (-DISK_ROOM_TTL, 0)  # measure again at the next ask
        crashpoints.reached("store.written")
        with self._lock:
            # A concurrent put of the same chunk may have been indexed meanwhile: its copy
            # stands, ours is garbage for compaction, and this chunk is "already held".
            now_held = self._index_new(records, reservation.placed)
            return self._not_raced(written, items, now_held)

    def _raise_degrees(self, held: Sequence[PutItem]) -> None:
        """(lock held) A chunk put again at a higher degree keeps the higher one: holders
        trim copies above a chunk's degree, so theirs must never be below the owner's."""
        if held:
            with self._transaction():
                self._db.executemany(
                    "UPDATE chunks SET degree=? WHERE owner=? AND address=? AND degree<?",
                    [(i.degree, i.owner, i.address, i.degree) for i in held],
                )

    def _checked_digests(self, items: Sequence[PutItem]) -> list[bytes]:
        """Refuse a bad item before any I/O; the envelopes' SHA-256, hashed outside the lock
        so that one caller's hashing overlaps another's flush."""
        for item in items:
            self.check_item(item)
        return [hashlib.sha256(item.envelope).digest() for item in items]

    def _admit(
        self, items: Sequence[PutItem], digests: Sequence[bytes]
    ) -> tuple[list[bool], list[tuple[PutItem, bytes]], int]:
        """(lock held) Whether each item is new, the (item, digest) records to write (one per
        chunk not yet held), and their bytes. The whole batch is refused over the quota."""
        self._ensure_open()
        fresh: dict[tuple[int, bytes], tuple[PutItem, bytes]] = {}
        written: list[bool] = []
        held = self._held_pairs([(i.owner, i.address) for i in items])
        for item, digest in zip(items, digests, strict=True):
            key = (item.owner, item.address)
            is_new = key not in fresh and key not in held
            if is_new:
                fresh[key] = (item, digest)
            written.append(is_new)
        needed = sum(len(i.envelope) for i, _ in fresh.values())
        if needed and self._used + self._reserved + needed > self._capacity:
            raise QuotaExceededError(
                f"quota exceeded: {needed} bytes do not fit in "
                f"{max(0, self.free_bytes - self._reserved)} free of {self._capacity}"
            )
        if needed and needed > self.disk_room(fresh=True) - self._reserved:
            raise DiskFullError(
                f"disk full: {needed} bytes do not fit in the "
                f"{max(0, self.disk_room() - self._reserved)} the disk has left"
            )
        return written, list(fresh.values()), needed

    def _index_new(
        self, records: Sequence[tuple[PutItem, bytes]], placed: Sequence[tuple[int, int]]
    ) -> set[tuple[int, bytes]]:
        """(lock held) Index the written records at their (segment, offset), except those a
        concurrent put indexed meanwhile; return those."""
        now_held = self._held_pairs([(i.owner, i.address) for i, _d in records])
        now = time.time()
        rows = []
        added = 0
        for (item, digest), (segment, offset) in zip(records, placed, strict=True):
            if (item.owner, item.address) in now_held:
                continue
            size = len(item.envelope)
            rows.append((item.owner, item.address, segment, offset, size, digest, item.degree, now))
            added += size
        if rows:
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO chunks(owner, address, segment, offset, length, digest,"
                    " degree, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            self._used += added
        return now_held

    @staticmethod
    def _not_raced(
        written: list[bool], items: Sequence[PutItem], now_held: set[tuple[int, bytes]]
    ) -> list[bool]:
        """``written``, with chunks a concurrent put indexed first counted as already held."""
        if not now_held:
            return written
        return [
            w and (i.owner, i.address) not in now_held for w, i in zip(written, items, strict=True)
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
        if isinstance(item.degree, bool) or not 1 <= item.degree <= MAX_DEGREE:
            raise InvalidIdError(f"invalid degree {item.degree!r}: expected 1..{MAX_DEGREE}")

    def _append_records(self, items: Sequence[tuple[PutItem, bytes]]) -> list[tuple[int, int]]:
        """Append records and flush them, lock held (compaction); (segment, offset) each."""
        reservation = self._reserve(items)
        failed = True
        try:
            self._write_reserved(reservation)
            failed = False
        finally:
            self._release(reservation, failed)
        return reservation.placed

    def _reserve(self, items: Sequence[tuple[PutItem, bytes]]) -> _Reservation:
        """Room for ``(item, sha256 of envelope)`` records at the segments' end (lock held)."""
        reservation = _Reservation()
        segment, size = self._active_segment()
        start, parts = size, list[bytes]()
        for item, digest in items:
            record_size = RECORD_HEADER.size + len(item.envelope)
            if size > 0 and size + record_size > SEGMENT_LIMIT:
                self._add_group(reservation, segment, start, parts)
                self._active = (segment, size)
                self._retire_active()
                segment, size = self._active_segment()
                start, parts = size, list[bytes]()
            parts.append(
                RECORD_HEADER.pack(
                    RECORD_MAGIC, item.owner, item.address, len(item.envelope), digest
                )
            )
            parts.append(item.envelope)
            reservation.placed.append((segment, size))
            size += record_size
        self._add_group(reservation, segment, start, parts)
        self._active = (segment, size)
        return reservation

    def _add_group(
        self, reservation: _Reservation, segment: int, start: int, parts: list[bytes]
    ) -> None:
        if parts:
            entry = self._write_fds[segment]
            entry[1] += 1
            reservation.groups.append((segment, entry[0], start, parts))

    @staticmethod
    def _write_reserved(reservation: _Reservation) -> None:
        for _segment, fd, offset, parts in reservation.groups:
            pwrite_all(fd, parts, offset)
            os.fdatasync(fd)

    def _release(self, reservation: _Reservation, failed: bool) -> None:
        """The reservation's writes are over (lock held). A failed write may leave a partial
        record: nothing is ever appended after it (the segment is retired)."""
        for segment, _fd, _offset, _parts in reservation.groups:
            self._write_fds[segment][1] -= 1
            if failed and self._active is not None and self._active[0] == segment:
                self._retire_active()
            self._close_if_done(segment)

    def _close_if_done(self, segment: int) -> None:
        entry = self._write_fds.get(segment)
        active = self._active[0] if self._active is not None else None
        if entry is not None and entry[1] == 0 and segment != active:
            os.close(entry[0])
            del self._write_fds[segment]

    def _active_segment(self) -> tuple[int, int]:
        if self._active is not None:
            return self._active
        number = self._next_segment
        self._next_segment += 1
        path = self._segment_path(number)
        # No O_APPEND: only this store writes, always at offsets it reserved.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        _fsync_dir(self._segments_dir)  # the new name must survive a crash too
        self._write_fds[number] = [fd, 0]
        self._active = (number, 0)
        return self._active

    def _retire_active(self) -> None:
        if self._active is not None:
            segment = self._active[0]
            self._active = None
            self._close_if_done(segment)

    # -- reading -------------------------------------------------------------------------

    def has(self, owner: int, address: bytes) -> bool:
        validate_owner(owner)
        validate_address(address)
        with self._lock:
            self._ensure_open()
            return self._location(owner, address) is not None

    def which_held(self, owner: int, addresses: Iterable[bytes]) -> set[bytes]:
        """The subset of ``addresses`` this store holds for ``owner``."""
        validate_owner(owner)
        wanted = [validate_address(a) for a in addresses]
        with self._lock:
            self._ensure_open()
            return {a for o, a in self._held_pairs([(owner, a) for a in wanted])}

    def _held_pairs(self, pairs: list[tuple[int, bytes]]) -> set[tuple[int, bytes]]:
        """Which (owner, address) pairs are held: one query per 400, not one per chunk."""
        held: set[tuple[int, bytes]] = set()
        by_owner: dict[int, list[bytes]] = {}
        for owner, address in pairs:
            by_owner.setdefault(owner, []).append(address)
        for owner, addresses in by_owner.items():
            unique = list(dict.fromkeys(addresses))
            for i in range(0, len(unique), 400):
                batch = unique[i : i + 400]
                marks = ",".join("?" * len(batch))
                held.update(
                    (owner, bytes(row[0]))
                    for row in self._db.execute(
                        f"SELECT address FROM chunks WHERE owner=? AND address IN ({marks})",
                        (owner, *batch),
                    )
                )
        return held

    def get(self, owner: int, address: bytes) -> bytes:
        """Return the verified envelope; ``CorruptChunkError`` if the bytes rotted."""
        validate_owner(owner)
        validate_address(address)
        with self._lock:
            self._ensure_open()
            loc = self._location(owner, address)
        if loc is None:
            raise ChunkNotFoundError(f"no chunk {address.hex()} of owner {owner}")
        return self._read_at(owner, address, loc)

    def get_many(
        self, owner: int, addresses: Sequence[bytes]
    ) -> list[bytes | ChunkstoreError | OSError]:
        """``get`` for each address: the envelope, or the error that one raised."""
        found: list[bytes | ChunkstoreError | OSError] = []
        for address in addresses:
            try:
                found.append(self.get(owner, address))
            except (ChunkstoreError, OSError) as exc:
                found.append(exc)
        return found

    def _read_verified(self, fd: int, owner: int, address: bytes, loc: _Location) -> bytes:
        total = RECORD_HEADER.size + loc.length
        data = os.pread(fd, total, loc.offset)
        short = address.hex()[:16]
        if len(data) != total:
            raise CorruptChunkError(f"chunk {short}… is cut short on disk")
        magic, rec_owner, rec_address, rec_length, rec_digest = RECORD_HEADER.unpack_from(data)
        if (magic, rec_owner, rec_address, rec_length, rec_digest) != (
            RECORD_MAGIC,
            owner,
            address,
            loc.length,
            loc.digest,
        ):
            raise CorruptChunkError(f"chunk {short}… has a damaged record header")
        envelope = data[RECORD_HEADER.size :]
        if hashlib.sha256(envelope).digest() != loc.digest:
            raise CorruptChunkError(f"chunk {short}… failed its checksum")
        return envelope

    def _read_at(self, owner: int, address: bytes, loc: _Location) -> bytes:
        """The verified envelope at ``loc``, read outside the lock. A process sharing this
        store (the mount's outbox is read by the daemon) may have rewritten the segment
        meanwhile, or reused its number: a failed read from a descriptor opened earlier is
        tried once more on a fresh one, at the chunk's location as the index says now."""
        for attempt in range(2):
            segment = loc.segment
            with self._lock:
                try:
                    fd, fresh = self._read_fds.acquire(segment, self._segment_path(segment))
                except FileNotFoundError:
                    fd, fresh = -1, True
            try:
                if fd < 0:
                    raise CorruptChunkError(f"segment {loc.segment} is missing")
                return self._read_verified(fd, owner, address, loc)
            except CorruptChunkError:
                with self._lock:
                    now = self._location(owner, address)
                if now is None:  # deleted meanwhile (by another process): not damaged
                    raise ChunkNotFoundError(f"no chunk {address.hex()} of owner {owner}") from None
                with self._lock:
                    if attempt or (fresh and now == loc):
                        raise
                    self._read_fds.forget(loc.segment)
                    loc = now
            finally:
                if fd >= 0:
                    with self._lock:
                        self._read_fds.release(segment, fd)
        raise AssertionError("unreachable")

    def chunks(self, owner: int | None = None) -> list[StoredChunk]:
        query = "SELECT owner, address, length, degree, stored_at FROM chunks"
        args: tuple[int, ...] = ()
        if owner is not None:
            query += " WHERE owner = ?"
            args = (validate_owner(owner),)
        with self._lock:
            self._ensure_open()
            rows = self._db.execute(query + " ORDER BY owner, address", args).fetchall()
        return [StoredChunk(int(o), bytes(a), int(n), int(d), float(t)) for o, a, n, d, t in rows]

    def usage_by_owner(self) -> dict[int, int]:
        """Bytes kept here per owner, chunks and records together (what the quota counts)."""
        with self._lock:
            self._ensure_open()
            rows = self._db.execute(
                "SELECT owner, SUM(n) FROM (SELECT owner, length AS n FROM chunks"
                " UNION ALL SELECT owner, LENGTH(data) FROM blobs) GROUP BY owner ORDER BY owner"
            ).fetchall()
        return {int(o): int(n) for o, n in rows}

    # -- small per-owner blobs (wrapped keys, sealed catalogs) ------------------------------

    def put_blob(self, owner: int, name: str, seq: int, data: bytes) -> bool:
        """Keep ``data`` unless a blob with a higher or equal ``seq`` is already kept."""
        validate_owner(owner)
        if not _BLOB_NAME.fullmatch(name):
            raise InvalidIdError(f"invalid blob name {name[:70]!r}")
        with self._lock:
            with self._transaction():
                row = self._db.execute(
                    "SELECT seq, LENGTH(data) FROM blobs WHERE owner=? AND name=?", (owner, name)
                ).fetchone()
                if row is not None and int(row[0]) >= seq:
                    return False
                grows = len(data) - (int(row[1]) if row is not None else 0)
                if grows > 0 and self._used + self._reserved + grows > self._capacity:
                    raise QuotaExceededError(  # a record counts like a chunk: all stored does
                        f"quota exceeded: a {len(data)}-byte record does not fit in "
                        f"{max(0, self.free_bytes - self._reserved)} free of {self._capacity}"
                    )
                self._db.execute(
                    "INSERT INTO blobs(owner, name, seq, data) VALUES (?,?,?,?)"
                    " ON CONFLICT(owner, name) DO UPDATE SET seq=excluded.seq, data=excluded.data",
                    (owner, name, seq, data),
                )
            self._used += grows  # once the commit went through
            return True

    def get_blob(self, owner: int, name: str) -> tuple[int, bytes] | None:
        validate_owner(owner)
        if not _BLOB_NAME.fullmatch(name):
            raise InvalidIdError(f"invalid blob name {name[:70]!r}")
        with self._lock:
            row = self._db.execute(
                "SELECT seq, data FROM blobs WHERE owner=? AND name=?", (owner, name)
            ).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    # -- removing ------------------------------------------------------------------------

    def delete(self, owner: int, address: bytes) -> bool:
        """Remove ``owner``'s chunk; False if it was not held. Never touches other owners."""
        return bool(self.delete_many(owner, [address]))

    def delete_many(self, owner: int, addresses: Iterable[bytes]) -> list[bytes]:
        validate_owner(owner)
        wanted = [validate_address(a) for a in addresses]
        removed: list[bytes] = []
        with self._lock:
            self._ensure_open()
            # Often most of the addresses are not held (an outbox keeps only what a cut
            # changed): find the held ones in batched queries, not one query each.
            held = {a for _o, a in self._held_pairs([(owner, a) for a in wanted])}
            with self._transaction():
                for address in dict.fromkeys(a for a in wanted if a in held):
                    loc = self._location(owner, address)
                    if loc is None:
                        continue
                    self._drop_rows([(owner, address)])
                    self._used -= loc.length
                    removed.append(address)
        return removed

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
            if self._used <= target_used:
                return []
            candidates = self.chunks()
            rank = priority or (lambda c: c.degree * 1e12 - c.stored_at)
            candidates.sort(key=rank, reverse=True)
            dropped: list[StoredChunk] = []
            to_free = self._used - target_used
            for chunk in candidates:
                if to_free <= 0:
                    break
                dropped.append(chunk)
                to_free -= chunk.length
            with self._transaction():
                self._drop_rows([(c.owner, c.address) for c in dropped])
            self._used -= sum(c.length for c in dropped)
            return dropped

    # -- verification and upkeep ---------------------------------------------------------

    def scrub(self, drop_bad: bool = False, found_by: str = "scrub") -> list[BadChunk]:
        """Re-read and verify every chunk; return the bad ones (and drop them if asked)."""
        bad: list[BadChunk] = []
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, address, segment, offset, length, digest FROM chunks"
            ).fetchall()
        for owner, address, segment, offset, length, digest in rows:
            loc = _Location(int(segment), int(offset), int(length), bytes(digest))
            try:
                self._read_at(int(owner), bytes(address), loc)
            except ChunkNotFoundError:
                continue  # removed since the rows were read: not a bad copy
            except CorruptChunkError as exc:
                bad.append(BadChunk(int(owner), bytes(address), str(exc)))
        if drop_bad and bad:
            self.drop_damaged(bad, found_by)
        return bad

    def drop_damaged(self, bad: Sequence[BadChunk], found_by: str) -> list[BadChunk]:
        """Forget these bad copies (their owners or other holders make them again) and note
        them for ``damage_summary``; returns those that were still held."""
        dropped: list[BadChunk] = []
        now = time.time()
        with self._lock, self._transaction():
            for item in bad:
                loc_now = self._location(item.owner, item.address)
                if loc_now is None:
                    continue
                self._drop_rows([(item.owner, item.address)])
                self._used -= loc_now.length
                dropped.append(item)
                self._db.execute(
                    "INSERT INTO damage(found_at, found_by, owner, address, reason)"
                    " VALUES (?,?,?,?,?)",
                    (now, found_by, item.owner, item.address, item.reason[:200]),
                )
        return dropped

    def damage_summary(self) -> DamageSummary:
        """Every bad copy this store found and dropped, by how it was found."""
        with self._lock:
            rows = self._db.execute(
                "SELECT found_by, COUNT(*), MIN(found_at), MAX(found_at) FROM damage"
                " GROUP BY found_by"
            ).fetchall()
        summary = DamageSummary()
        for found_by, count, first, last in rows:
            summary.by[str(found_by)] = int(count)
            summary.total += int(count)
            summary.since = min(summary.since or float(first), float(first))
            summary.last = max(summary.last, float(last))
        return summary

    def check(self, repair: bool = False) -> CheckReport:
        """Reconcile index and segments: every entry verified, orphans and torn tails counted.

        With ``repair`` bad entries are dropped from the index (so the network re-replicates
        them) and segments are compacted.
        """
        report = CheckReport(found_before=self.damage_summary())
        bad = self.scrub(drop_bad=repair, found_by="check")
        report.bad = bad
        with self._lock:
            report.verified = self.chunk_count() if repair else self.chunk_count() - len(bad)
            live = {
                (int(s), int(o))
                for s, o in self._db.execute("SELECT segment, offset FROM chunks").fetchall()
            }
            for number in self._segment_numbers():
                for offset, size, state in self._scan_segment(number):
                    if state == "torn":
                        report.torn_bytes += size
                    elif state == "damaged":
                        report.damaged_records += 1
                        report.damaged_bytes += size
                    elif (number, offset) not in live:
                        report.orphan_records += 1
                        report.orphan_bytes += size
        if repair:
            self.compact(min_garbage_ratio=0.0)
            report.repaired = True
        return report

    def _scan_segment(self, number: int) -> Iterator[tuple[int, int, str]]:
        """Yield ``(offset, size, state)`` for each record of a segment: ``"good"``;
        ``"damaged"`` (bytes that fail their checksum, or that are no record, up to the next
        good one: the scan goes on past them); ``"torn"`` (an incomplete last record)."""
        path = self._segment_path(number)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return
        offset = 0
        while offset < len(data):
            end = self._good_record_end(data, offset)
            if end is not None:
                yield offset, end - offset, "good"
                offset = end
                continue
            # Not a good record here: resynchronise at the next good one, if any.
            following = data.find(RECORD_MAGIC, offset + 1)
            while following != -1 and self._good_record_end(data, following) is None:
                following = data.find(RECORD_MAGIC, following + 1)
            if following == -1:
                yield (
                    offset,
                    len(data) - offset,
                    "torn" if self._may_be_torn(data, offset) else "damaged",
                )
                return
            yield offset, following - offset, "damaged"
            offset = following

    @staticmethod
    def _good_record_end(data: bytes, offset: int) -> int | None:
        header = data[offset : offset + RECORD_HEADER.size]
        if len(header) < RECORD_HEADER.size:
            return None
        magic, _owner, _address, length, digest = RECORD_HEADER.unpack(header)
        end: int = offset + RECORD_HEADER.size + length
        if magic != RECORD_MAGIC or end > len(data) or length > MAX_ENVELOPE_SIZE:
            return None
        if hashlib.sha256(data[offset + RECORD_HEADER.size : end]).digest() != digest:
            return None
        return end

    @staticmethod
    def _may_be_torn(data: bytes, offset: int) -> bool:
        """The last bytes look like a write cut short: a header (or part of one) whose
        record runs past the end of the segment."""
        header = data[offset : offset + RECORD_HEADER.size]
        if len(header) < RECORD_HEADER.size:
            return RECORD_MAGIC.startswith(header[:4])
        magic, _owner, _address, length, _digest = RECORD_HEADER.unpack(header)
        return bool(magic == RECORD_MAGIC and offset + RECORD_HEADER.size + length > len(data))

    def garbage_bytes(self) -> int:
        """Bytes on disk not referenced by the index (reclaimable by ``compact``)."""
        with self._lock:
            live = self._query_int(
                f"SELECT COALESCE(SUM(length + {RECORD_HEADER.size}), 0) FROM chunks"
            )
            on_disk = sum(self._segment_path(n).stat().st_size for n in self._segment_numbers())
        return on_disk - live

    def compact(self, min_garbage_ratio: float = 0.5) -> int:
        """Rewrite segments whose garbage share is at least ``min_garbage_ratio``; return bytes freed."""
        freed = 0
        with self._lock:
            self._ensure_open()
            busy = set(self._write_fds)  # being appended to, or writes still in flight
            live_by_segment = dict(
                self._db.execute(
                    f"SELECT segment, SUM(length + {RECORD_HEADER.size}) FROM chunks GROUP BY segment"
                ).fetchall()
            )
            for number in self._segment_numbers():
                if number in busy:
                    continue
                size = self._segment_path(number).stat().st_size
                garbage = size - int(live_by_segment.get(number, 0))
                if size == 0 or (garbage > 0 and garbage / size >= min_garbage_ratio):
                    freed += garbage
                    self._rewrite_segment(number)
        return freed

    def _rewrite_segment(self, number: int) -> None:
        rows = self._db.execute(
            "SELECT owner, address, offset, length, digest, degree FROM chunks WHERE segment=?",
            (number,),
        ).fetchall()
        moved: list[tuple[PutItem, bytes]] = []
        lost: list[tuple[int, bytes]] = []
        if rows:
            try:
                fd, _fresh = self._read_fds.acquire(number, self._segment_path(number))
            except FileNotFoundError:
                raise CorruptChunkError(f"segment {number} is missing") from None
            try:
                for owner, address, offset, length, digest, degree in rows:
                    loc = _Location(number, int(offset), int(length), bytes(digest))
                    try:
                        envelope = self._read_verified(fd, int(owner), bytes(address), loc)
                    except CorruptChunkError:
                        lost.append((int(owner), bytes(address)))
                        continue
                    item = PutItem(int(owner), bytes(address), envelope, int(degree))
                    moved.append((item, digest))
            finally:
                self._read_fds.release(number, fd)
        placed = self._append_records(moved) if moved else []
        with self._transaction():
            for (item, _), (seg, off) in zip(moved, placed, strict=True):
                self._db.execute(
                    "UPDATE chunks SET segment=?, offset=? WHERE owner=? AND address=?",
                    (seg, off, item.owner, item.address),
                )
            for owner, address in lost:
                self._db.execute("DELETE FROM chunks WHERE owner=? AND address=?", (owner, address))
        self._used = self._stored_bytes()
        self._read_fds.forget(number)
        with contextlib.suppress(FileNotFoundError):
            self._segment_path(number).unlink()
        _fsync_dir(self._segments_dir)

    # -- helpers -------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise ChunkstoreError("chunk store is closed")

    def _drop_rows(self, pairs: Sequence[tuple[int, bytes]]) -> None:
        """Forget these chunks (transaction open, lock held); a subclass frees their bytes."""
        self._db.executemany("DELETE FROM chunks WHERE owner=? AND address=?", pairs)

    def _location(self, owner: int, address: bytes) -> _Location | None:
        row = self._db.execute(
            "SELECT segment, offset, length, digest FROM chunks WHERE owner=? AND address=?",
            (owner, address),
        ).fetchone()
        if row is None:
            return None
        return _Location(int(row[0]), int(row[1]), int(row[2]), bytes(row[3]))

    def _stored_bytes(self) -> int:
        """What the quota counts: every chunk's envelope and every owner's blobs."""
        return self._query_int(
            "SELECT (SELECT COALESCE(SUM(length), 0) FROM chunks)"
            " + (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM blobs)"
        )

    def _query_int(self, sql: str) -> int:
        return int(self._db.execute(sql).fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _segment_path(self, number: int) -> Path:
        return self._segments_dir / f"{number:08d}.seg"

    def _segment_numbers(self) -> list[int]:
        numbers = []
        for entry in os.listdir(self._segments_dir):
            match = _SEGMENT_NAME.match(entry)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)
