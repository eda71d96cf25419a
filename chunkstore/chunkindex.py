"""A chunk store's index: which chunk of which owner is held, where its bytes lie and at what
degree, the quota's accounting, the owners' small records and the bad copies found.

Every rule about *what* a store takes lives here, whichever backend keeps the bytes (segments
on this disk, ``segments.py``; objects in a bucket, ``cloud.py``): admission (a whole batch is
refused over the quota or the room the backend has), dedup (a chunk already held is not
written again; put again at a higher degree it keeps the higher one), and the race of two puts
of one chunk (the first indexed stands). ``store.py`` composes an index with a backend.

The index is SQLite in WAL mode with ``synchronous=FULL``: a committed row survives a crash.
Methods marked "(lock held)" expect the caller to hold ``lock``, which the store shares with
its backend so that admission and the reservation of room happen as one step.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ChunkstoreError, DiskFullError, QuotaExceededError
from .shares import ShareRef, is_share, ref_of
from .sqlrows import insert_rows

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
    share     BLOB,                 -- a share of a coded chunk: its ShareRef (shares.py); NULL
                                    -- for a whole envelope
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
    share: ShareRef | None = None  # a share of a coded chunk, else a whole envelope


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
    # The newest of them (up to DAMAGE_SHOWN), as check lists bad copies: "owner:address why".
    recent: list[str] = field(default_factory=list)


DAMAGE_SHOWN = 50


@dataclass(frozen=True, slots=True)
class Location:
    """Where a chunk's envelope lies (a bucket's backend keeps segment and offset at 0)."""

    segment: int
    offset: int
    length: int
    digest: bytes


Record = tuple[PutItem, bytes]  # an item to write, with the SHA-256 of its envelope
IndexedChunk = tuple[int, bytes, Location]  # (owner, address, where)


def connect_index(path: Path) -> tuple[sqlite3.Connection, int]:
    """Open (creating) a store's index at ``path``; return it and the recorded capacity."""
    conn = sqlite3.connect(path / "index.sqlite3", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(chunks)")}
    if "share" not in columns:  # an index made before shares were stored
        conn.execute("ALTER TABLE chunks ADD COLUMN share BLOB")
    row = conn.execute("SELECT value FROM settings WHERE name='capacity'").fetchone()
    return conn, int(row[0]) if row else 0


class ChunkIndex:
    """The rows, the accounting and the rules; see the module's docstring."""

    def __init__(self, conn: sqlite3.Connection, capacity: int) -> None:
        self.db = conn  # a backend may keep tables of its own in it (in its transactions)
        self.lock = threading.RLock()
        self.capacity = capacity
        self.reserved = 0  # bytes of puts being written, not yet indexed (counted in the quota)
        self.used = self.stored_bytes()
        self._closed = False

    def close(self) -> None:
        self._closed = True
        self.db.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def ensure_open(self) -> None:
        if self._closed:
            raise ChunkstoreError("chunk store is closed")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def query_int(self, sql: str) -> int:
        return int(self.db.execute(sql).fetchone()[0])

    # -- accounting ----------------------------------------------------------------------

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity - self.used)

    def set_capacity(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must not be negative")
        with self.lock:
            self.db.execute(
                "INSERT INTO settings(name, value) VALUES('capacity', ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (capacity,),
            )
            self.capacity = capacity

    def stored_bytes(self) -> int:
        """What the quota counts: every chunk's envelope and every owner's blobs."""
        return self.query_int(
            "SELECT (SELECT COALESCE(SUM(length), 0) FROM chunks)"
            " + (SELECT COALESCE(SUM(LENGTH(data)), 0) FROM blobs)"
        )

    def record_bytes(self) -> int:
        with self.lock:
            return self.query_int("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM blobs")

    def chunk_count(self) -> int:
        return self.query_int("SELECT COUNT(*) FROM chunks")

    # -- admission and indexing (lock held) ------------------------------------------------

    def admit(
        self, items: Sequence[PutItem], digests: Sequence[bytes], room: int
    ) -> tuple[list[bool], list[Record], int]:
        """(lock held) Whether each item is new, the records to write (one per chunk not yet
        held) and their bytes; ``room`` is what the backend can still take. The whole batch
        is refused over the quota or the room."""
        self.ensure_open()
        fresh: dict[tuple[int, bytes], Record] = {}
        written: list[bool] = []
        held = self.held_pairs([(i.owner, i.address) for i in items])
        for item, digest in zip(items, digests, strict=True):
            key = (item.owner, item.address)
            is_new = key not in fresh and key not in held
            if is_new:
                fresh[key] = (item, digest)
            written.append(is_new)
        needed = sum(len(i.envelope) for i, _ in fresh.values())
        if needed and self.used + self.reserved + needed > self.capacity:
            raise QuotaExceededError(
                f"quota exceeded: {needed} bytes do not fit in "
                f"{max(0, self.free_bytes - self.reserved)} free of {self.capacity}"
            )
        if needed and needed > room - self.reserved:
            raise DiskFullError(
                f"disk full: {needed} bytes do not fit in the "
                f"{max(0, room - self.reserved)} the disk has left"
            )
        if held:
            self.raise_degrees([i for i, new in zip(items, written, strict=True) if not new])
        return written, list(fresh.values()), needed

    def raise_degrees(self, held: Sequence[PutItem]) -> None:
        """(lock held) A chunk put again at a higher degree keeps the higher one: holders
        trim copies above a chunk's degree, so theirs must never be below the owner's."""
        if held:
            with self.transaction():
                self.db.executemany(
                    "UPDATE chunks SET degree=? WHERE owner=? AND address=? AND degree<?",
                    [(i.degree, i.owner, i.address, i.degree) for i in held],
                )

    def index_new(
        self, records: Sequence[Record], placed: Sequence[tuple[int, int]]
    ) -> dict[tuple[int, bytes], Location]:
        """(lock held) Index the written records at their (segment, offset), except those a
        concurrent put indexed meanwhile (its copy stands); return those, where they are."""
        raced: dict[tuple[int, bytes], Location] = {}
        for key in self.held_pairs([(i.owner, i.address) for i, _d in records]):
            loc = self.location(*key)
            if loc is not None:
                raced[key] = loc
        now = time.time()
        rows = []
        added = 0
        for (item, digest), (segment, offset) in zip(records, placed, strict=True):
            if (item.owner, item.address) in raced:
                continue
            size = len(item.envelope)
            share = ref_of(item.envelope).to_bytes() if is_share(item.envelope) else None
            rows.append(
                (item.owner, item.address, segment, offset, size, digest, item.degree, now, share)
            )
            added += size
        if rows:
            with self.transaction():
                insert_rows(
                    self.db,
                    "INSERT INTO chunks(owner, address, segment, offset, length, digest,"
                    " degree, stored_at, share)",
                    rows,
                )
            self.used += added
        return raced

    # -- looking up ----------------------------------------------------------------------

    def held_pairs(self, pairs: list[tuple[int, bytes]]) -> set[tuple[int, bytes]]:
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
                    for row in self.db.execute(
                        f"SELECT address FROM chunks WHERE owner=? AND address IN ({marks})",
                        (owner, *batch),
                    )
                )
        return held

    def held_of(self, owner: int, addresses: list[bytes]) -> set[bytes]:
        """Which of ``addresses`` are held for ``owner`` (a holder answers QUERY with it for
        100,000 addresses at a time: no pair built per address)."""
        held: set[bytes] = set()
        execute = self.db.execute
        for i in range(0, len(addresses), 400):
            batch = addresses[i : i + 400]
            marks = ",".join("?" * len(batch))
            held.update(
                row[0]  # a BLOB comes back as bytes
                for row in execute(
                    f"SELECT address FROM chunks WHERE owner=? AND address IN ({marks})",
                    (owner, *batch),
                )
            )
        return held

    def location(self, owner: int, address: bytes) -> Location | None:
        row = self.db.execute(
            "SELECT segment, offset, length, digest FROM chunks WHERE owner=? AND address=?",
            (owner, address),
        ).fetchone()
        if row is None:
            return None
        return Location(int(row[0]), int(row[1]), int(row[2]), bytes(row[3]))

    def located(self) -> list[IndexedChunk]:
        """Every chunk and where it lies (read under the lock, in one query)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT owner, address, segment, offset, length, digest FROM chunks"
            ).fetchall()
        return [
            (int(o), bytes(a), Location(int(s), int(off), int(n), bytes(d)))
            for o, a, s, off, n, d in rows
        ]

    def chunks(self, owner: int | None = None) -> list[StoredChunk]:
        query = "SELECT owner, address, length, degree, stored_at, share FROM chunks"
        args: tuple[int, ...] = ()
        if owner is not None:
            query += " WHERE owner = ?"
            args = (owner,)
        with self.lock:
            self.ensure_open()
            rows = self.db.execute(query + " ORDER BY owner, address", args).fetchall()
        return [
            StoredChunk(
                int(o), bytes(a), int(n), int(d), float(t), ShareRef.from_bytes(s) if s else None
            )
            for o, a, n, d, t, s in rows
        ]

    def usage_by_owner(self) -> dict[int, int]:
        with self.lock:
            self.ensure_open()
            rows = self.db.execute(
                "SELECT owner, SUM(n) FROM (SELECT owner, length AS n FROM chunks"
                " UNION ALL SELECT owner, LENGTH(data) FROM blobs) GROUP BY owner ORDER BY owner"
            ).fetchall()
        return {int(o): int(n) for o, n in rows}

    # -- removing (transaction open, lock held) ---------------------------------------------

    def remove(self, pairs: Sequence[tuple[int, bytes]]) -> list[IndexedChunk]:
        """Forget these chunks; return those that were held, with where they were."""
        removed: list[IndexedChunk] = []
        for owner, address in dict.fromkeys(pairs):
            loc = self.location(owner, address)
            if loc is not None:
                removed.append((owner, address, loc))
        self.db.executemany(
            "DELETE FROM chunks WHERE owner=? AND address=?", [(o, a) for o, a, _l in removed]
        )
        self.used -= sum(loc.length for _o, _a, loc in removed)
        return removed

    def note_damage(self, bad: Sequence[BadChunk], found_by: str) -> None:
        now = time.time()
        self.db.executemany(
            "INSERT INTO damage(found_at, found_by, owner, address, reason) VALUES (?,?,?,?,?)",
            [(now, found_by, b.owner, b.address, b.reason[:200]) for b in bad],
        )

    def damage_summary(self) -> DamageSummary:
        with self.lock:
            rows = self.db.execute(
                "SELECT found_by, COUNT(*), MIN(found_at), MAX(found_at) FROM damage"
                " GROUP BY found_by"
            ).fetchall()
            newest = self.db.execute(
                "SELECT owner, address, reason, found_by FROM damage"
                " ORDER BY found_at DESC LIMIT ?",
                (DAMAGE_SHOWN,),
            ).fetchall()
        summary = DamageSummary(
            recent=[f"{o}:{bytes(a).hex()} {why} (found by {by})" for o, a, why, by in newest]
        )
        for found_by, count, first, last in rows:
            summary.by[str(found_by)] = int(count)
            summary.total += int(count)
            summary.since = min(summary.since or float(first), float(first))
            summary.last = max(summary.last, float(last))
        return summary

    # -- small per-owner records -----------------------------------------------------------

    def put_blob(self, owner: int, name: str, seq: int, data: bytes) -> bool:
        with self.lock:
            with self.transaction():
                row = self.db.execute(
                    "SELECT seq, LENGTH(data) FROM blobs WHERE owner=? AND name=?", (owner, name)
                ).fetchone()
                if row is not None and int(row[0]) >= seq:
                    return False
                grows = len(data) - (int(row[1]) if row is not None else 0)
                if grows > 0 and self.used + self.reserved + grows > self.capacity:
                    raise QuotaExceededError(  # a record counts like a chunk: all stored does
                        f"quota exceeded: a {len(data)}-byte record does not fit in "
                        f"{max(0, self.free_bytes - self.reserved)} free of {self.capacity}"
                    )
                self.db.execute(
                    "INSERT INTO blobs(owner, name, seq, data) VALUES (?,?,?,?)"
                    " ON CONFLICT(owner, name) DO UPDATE SET seq=excluded.seq, data=excluded.data",
                    (owner, name, seq, data),
                )
            self.used += grows  # once the commit went through
            return True

    def get_blob(self, owner: int, name: str) -> tuple[int, bytes] | None:
        with self.lock:
            row = self.db.execute(
                "SELECT seq, data FROM blobs WHERE owner=? AND name=?", (owner, name)
            ).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None
