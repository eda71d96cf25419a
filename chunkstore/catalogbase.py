"""The catalog's database: its schema and migrations, the two connections (one writer, one
reader that never waits for a commit), transactions, settings, and the rows of the versions
table as ``FileVersion``s. The catalog itself is ``catalogdb.CatalogDB``."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .catalog import FileVersion, pack_xattrs, unpack_xattrs, version_key
from .catalogcopy import (
    COPY_SCHEMA,
    COPY_TABLES,
    attach_copy_state,
    copy_state_path,
    move_old_copy_state,
)
from .sqlrows import insert_rows

_VERSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    path       TEXT    NOT NULL,   -- absolute path on the owner's computer
    file_id    BLOB    NOT NULL,   -- names content and metadata; not unique (see add_version)
    size       INTEGER NOT NULL,
    mode       INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    gid        INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    ctime_ns   INTEGER NOT NULL,
    degree     INTEGER NOT NULL,
    owner      INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,   -- when this version was cut
    complete   INTEGER NOT NULL DEFAULT 0,  -- 1 once every chunk reached its degree
    removed    INTEGER NOT NULL DEFAULT 0,  -- 1 after `delete PATH`
    origin     INTEGER NOT NULL DEFAULT 0,  -- 0 `backup` command, 1 cut by a mount
    inode      INTEGER NOT NULL DEFAULT 0,  -- the file a mount cut it from (0: unknown)
    xattrs     BLOB    NOT NULL DEFAULT x'',  -- extended attributes (catalog.pack_xattrs)
    link       INTEGER NOT NULL DEFAULT 0   -- equal for hard links of one file (link_key)
);
"""

INTO_VERSIONS = (
    "INSERT INTO versions(path, file_id, size, mode, uid, gid, mtime_ns, ctime_ns, degree,"
    " owner, created_ns, origin, inode, xattrs, link, complete)"
)
_INSERT_VERSION = INTO_VERSIONS + " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"

_SCHEMA = (
    _VERSIONS_TABLE.format(table="versions")
    + """
CREATE INDEX IF NOT EXISTS versions_by_path ON versions (path, id);
CREATE INDEX IF NOT EXISTS versions_by_file ON versions (file_id);
CREATE TABLE IF NOT EXISTS version_chunks (
    version_id INTEGER NOT NULL,
    no         INTEGER NOT NULL,
    address    BLOB    NOT NULL,
    PRIMARY KEY (version_id, no)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS version_chunks_by_address ON version_chunks (address);
CREATE TABLE IF NOT EXISTS holders (      -- nodes that acknowledged (STORED) a chunk
    address BLOB    NOT NULL,
    node    INTEGER NOT NULL,
    PRIMARY KEY (address, node)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (   -- deletes not yet acknowledged by a holder
    node    INTEGER NOT NULL,
    address BLOB    NOT NULL,
    PRIMARY KEY (node, address)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree_events (  -- how a mounted tree changed, in order
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    root     TEXT    NOT NULL,   -- the mounted SOURCE folder (absolute)
    parent   TEXT    NOT NULL,   -- parent folder, relative to root ('' for the top)
    name     TEXT    NOT NULL,
    kind     INTEGER NOT NULL,   -- 1 folder, 2 file, 3 symlink, 0 gone
    file_id  BLOB,               -- for files: the version
    mode     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    target   TEXT    NOT NULL,   -- for symlinks
    time_ns  INTEGER NOT NULL,
    xattrs   BLOB    NOT NULL DEFAULT x''  -- the entry's extended attributes then
);
CREATE INDEX IF NOT EXISTS tree_events_by_entry ON tree_events (root, parent, name, seq);
CREATE INDEX IF NOT EXISTS tree_events_by_file ON tree_events (file_id);
CREATE TABLE IF NOT EXISTS snapshots (    -- one per commit: the tree as of tree_events.seq
    seq     INTEGER PRIMARY KEY,
    root    TEXT    NOT NULL,
    time_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_root ON snapshots (root, seq);
CREATE TABLE IF NOT EXISTS backup_runs (  -- one per `lanvault backup` of a path
    id          INTEGER PRIMARY KEY,
    root        TEXT    NOT NULL,     -- the path backed up
    started_ns  INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL,
    files       INTEGER NOT NULL,     -- files, symlinks and folders gone through
    new         INTEGER NOT NULL,
    changed     INTEGER NOT NULL,
    removed     INTEGER NOT NULL,     -- gone (or left out) since the run before
    bytes       INTEGER NOT NULL,     -- the files' size
    bytes_added INTEGER NOT NULL,     -- of it, sent to holders by this run (new chunks)
    outcome     TEXT    NOT NULL      -- 'complete', 'pending' (short of degree) or 'failed'
);
CREATE INDEX IF NOT EXISTS backup_runs_by_root ON backup_runs (root, id);
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""
)

_LINK_INDEX = "CREATE INDEX IF NOT EXISTS versions_by_link ON versions (link) WHERE link != 0"
ABSENT_ID = bytes(32)  # the fileId of an absence row: the path is gone (mode 0, no chunks)
_VERSION_COLUMNS = (
    "id, path, file_id, size, mode, uid, gid, mtime_ns, ctime_ns, degree, owner, xattrs, link"
)
_N = 13  # how many columns _VERSION_COLUMNS names
_ALL_VERSION_COLUMNS = (
    *_VERSION_COLUMNS.split(", "),
    "created_ns",
    "complete",
    "removed",
    "origin",
    "inode",
)  # xattrs and link are in _VERSION_COLUMNS
TREE_GONE = 0
TREE_DIR = 1
TREE_FILE = 2
TREE_SYMLINK = 3
ORIGIN_BACKUP = 0
ORIGIN_MOUNT = 1

# A file entry counts only while its version exists (``delete PATH`` removes versions).
_LIVE_FILE = (
    "(e.kind != 2 OR EXISTS (SELECT 1 FROM versions v WHERE v.file_id = e.file_id"
    " AND v.removed = 0))"
)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What a list of a file's versions shows: no chunk list (a big file's is long)."""

    file_id: bytes
    size: int
    mtime_ns: int
    created_ns: int
    complete: bool


class BackupRun(NamedTuple):
    """One ``lanvault backup`` of a path, as ``lanvault snapshots`` lists it."""

    id: int
    root: str
    started_ns: int
    finished_ns: int
    files: int
    new: int
    changed: int
    removed: int
    bytes: int
    bytes_added: int
    outcome: str


class FileListing(NamedTuple):
    """A file's newest version as the STATE report lists it (a plain row: cheap to build)."""

    path: str
    file_id: bytes
    size: int
    degree: int
    complete: bool
    chunks: list[bytes]


@dataclass(slots=True)
class PruneReport:
    snapshots_dropped: int = 0
    events_dropped: int = 0
    versions_dropped: int = 0
    chunks_orphaned: int = 0


@dataclass(slots=True)
class DeleteReport:
    files: int
    orphaned: list[bytes]
    nodes: set[int]


class _DryRun(Exception):
    pass


def _split(relative: str) -> tuple[str, str]:
    parent, _, name = relative.rpartition("/")
    return parent, name


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


# SQLite page caches (each grows only as far as it is used): the writer holds the indexes a
# commit updates; the reader, the chunk lists being looked at.
WRITER_CACHE_KIB = 16 * 1024
READER_CACHE_KIB = 8 * 1024


class CatalogBase:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _private(self.path)
        _private(copy_state_path(self.path))
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(f"PRAGMA {COPY_SCHEMA}.journal_mode=WAL")
        self._db.execute(f"PRAGMA {COPY_SCHEMA}.synchronous=FULL")
        # A big file's version lists every chunk: recording one inserts thousands of random
        # addresses into the address index. With SQLite's default 2 MB cache that index is
        # read again and again (28 MiB read to record a 1 MiB change of a 1 GiB file).
        self._db.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
        self._db.executescript(_SCHEMA + COPY_TABLES)
        self._migrate()
        self._lock = threading.RLock()
        # Reads go through their own connection: WAL lets them run while a commit (and its
        # fsync) holds the writer, so a lookup never waits for a transaction.
        self._reader = self._connect()
        self._reader.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
        self._read_lock = threading.Lock()

    def _connect(self, shared: bool = True) -> sqlite3.Connection:
        """A connection to the catalog with the copy's database attached."""
        conn = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=not shared, timeout=60
        )
        attach_copy_state(conn, self.path)
        return conn

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(versions)")}
        if "origin" not in columns:
            self._db.execute("ALTER TABLE versions ADD COLUMN origin INTEGER NOT NULL DEFAULT 0")
        if "inode" not in columns:
            self._db.execute("ALTER TABLE versions ADD COLUMN inode INTEGER NOT NULL DEFAULT 0")
        if "xattrs" not in columns:
            self._db.execute("ALTER TABLE versions ADD COLUMN xattrs BLOB NOT NULL DEFAULT x''")
            self._db.execute("ALTER TABLE versions ADD COLUMN link INTEGER NOT NULL DEFAULT 0")
        events = {row[1] for row in self._db.execute("PRAGMA table_info(tree_events)")}
        if "xattrs" not in events:
            self._db.execute("ALTER TABLE tree_events ADD COLUMN xattrs BLOB NOT NULL DEFAULT x''")
        self._db.execute(_LINK_INDEX)
        self._db.execute("DROP TABLE IF EXISTS leases")  # an earlier design's, unused now
        self._drop_unique_file_id()
        move_old_copy_state(self._db)

    def _drop_unique_file_id(self) -> None:
        """Catalogs before format 2 kept one row per fileId, so a version whose fileId had been
        seen before (after a delete, a chmod, a revert) was not recorded: rebuild the table
        without that constraint, keeping every row and the id sequence."""
        if not self._file_id_unique():
            return  # the usual case: no write lock taken at open
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if not self._file_id_unique():  # another process migrated it meanwhile
                self._db.execute("ROLLBACK")
                return
            seq = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name='versions'"
            ).fetchone()
            self._db.execute(_VERSIONS_TABLE.format(table="versions_v2"))
            names = ", ".join(_ALL_VERSION_COLUMNS)
            self._db.execute(f"INSERT INTO versions_v2({names}) SELECT {names} FROM versions")
            self._db.execute("DROP TABLE versions")
            self._db.execute("ALTER TABLE versions_v2 RENAME TO versions")
            self._db.execute("CREATE INDEX versions_by_path ON versions (path, id)")
            self._db.execute("CREATE INDEX versions_by_file ON versions (file_id)")
            self._db.execute(_LINK_INDEX)
            if seq is not None:
                self._db.execute(
                    "UPDATE sqlite_sequence SET seq=max(seq, ?) WHERE name='versions'", (seq[0],)
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _file_id_unique(self) -> bool:
        (sql,) = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type='table' AND name='versions'"
        ).fetchone()
        return "UNIQUE" in str(sql)

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader

    @contextlib.contextmanager
    def _reading_alone(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own for one long read, so that it runs beside the reads of
        ``_reading`` (WAL lets any number of readers run at once)."""
        conn = self._connect(shared=False)
        try:
            conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _version_row(
        version: FileVersion, created_ns: int, origin: int, inode: int = 0, complete: bool = False
    ) -> tuple[object, ...]:
        return (
            version.path,
            version.file_id,
            version.size,
            version.mode,
            version.uid,
            version.gid,
            version.mtime_ns,
            version.ctime_ns,
            version.degree,
            version.owner,
            created_ns,
            origin,
            inode,
            pack_xattrs(version.xattrs),
            version.link,
            int(complete),
        )

    @classmethod
    def _insert_version(
        cls,
        db: sqlite3.Connection,
        version: FileVersion,
        created_ns: int,
        origin: int,
        inode: int = 0,
    ) -> int:
        """A new row unless the newest live version of the path is this very one.

        The fileId is not the test: a version after ``delete`` may have a removed version's
        fileId, a file put back as it was an older version's, and a chmod or chown leaves it
        unchanged. Recording the same version twice (a retry) returns the first row; a new
        ctime alone (nothing restorable changed) is noted on it, a new degree too.
        """
        row = db.execute(
            "SELECT id, file_id, mode, uid, gid, ctime_ns, degree, xattrs, link FROM versions"
            " WHERE path=? AND removed=0 ORDER BY id DESC LIMIT 1",
            (version.path,),
        ).fetchone()
        if row is not None and cls._is_row_of(row, version):
            vid = int(row[0])
            if row[5] != version.ctime_ns:
                db.execute("UPDATE versions SET ctime_ns=? WHERE id=?", (version.ctime_ns, vid))
            if row[6] != version.degree:
                db.execute(
                    "UPDATE versions SET degree=?, complete=0 WHERE id=?", (version.degree, vid)
                )
            return vid
        cur = db.execute(_INSERT_VERSION, cls._version_row(version, created_ns, origin, inode))
        vid = int(cur.lastrowid or 0)
        insert_rows(
            db,
            "INSERT INTO version_chunks(version_id, no, address)",
            [(vid, no, a) for no, a in enumerate(version.chunks)],
        )
        return vid

    @staticmethod
    def _version_from_row(db: sqlite3.Connection, row: Sequence[Any]) -> FileVersion:
        vid = int(row[0])
        chunks = tuple(
            bytes(r[0])
            for r in db.execute(
                "SELECT address FROM version_chunks WHERE version_id=? ORDER BY no", (vid,)
            )
        )
        return CatalogBase._version_from_parts(row, chunks)

    @staticmethod
    def _versions_from_rows(db: sqlite3.Connection, rows: Sequence[Any]) -> list[FileVersion]:
        """``_version_from_row`` of many rows: their chunk lists read 500 versions at a time
        (one query per version cost status and state 100,000 queries at 100,000 files)."""
        chunks: dict[int, list[bytes]] = {int(r[0]): [] for r in rows}
        ids = list(chunks)
        for i in range(0, len(ids), 500):
            batch = ids[i : i + 500]
            for vid, address in db.execute(
                "SELECT version_id, address FROM version_chunks WHERE version_id IN"
                f" ({','.join('?' * len(batch))}) ORDER BY version_id, no",
                batch,
            ):
                chunks[int(vid)].append(bytes(address))
        return [CatalogBase._version_from_parts(r, tuple(chunks[int(r[0])])) for r in rows]

    @staticmethod
    def _version_from_parts(row: Sequence[Any], chunks: tuple[bytes, ...]) -> FileVersion:
        _, path, fid, size, mode, uid, gid, mtime, ctime, degree, owner, xattrs, link = row
        return FileVersion(
            path=str(path),
            file_id=bytes(fid),
            size=int(size),
            mode=int(mode),
            uid=int(uid),
            gid=int(gid),
            mtime_ns=int(mtime),
            ctime_ns=int(ctime),
            degree=int(degree),
            chunks=chunks,
            owner=int(owner),
            xattrs=unpack_xattrs(bytes(xattrs)),
            link=int(link),
        )

    @staticmethod
    def _is_row_of(row: Sequence[Any], version: FileVersion) -> bool:
        """Whether a version row (id, file_id, mode, uid, gid, ctime_ns, degree, xattrs, link,
        …) records this very version (``version_key``: a new ctime or degree alone is not
        a new version)."""
        kept = (bytes(row[1]), row[2], row[3], row[4], unpack_xattrs(bytes(row[7])), row[8])
        return kept == version_key(version)

    @staticmethod
    def _stamp(db: sqlite3.Connection, time_ns: int) -> int:
        """The time a write records (transaction open): never before the last one recorded.

        Versions and snapshots are read by time (retention, ``restore --at``, ``versions/``), so
        a clock stepped back (NTP, a laptop's clock set by hand) must not put a new one before
        an older one: until the clock catches up, each gets the last time + 1 ns. The last
        time is the ``clock_floor_ns`` setting (first set from what the catalog holds).
        """
        row = db.execute("SELECT value FROM settings WHERE name='clock_floor_ns'").fetchone()
        if row is None:
            floor = max(
                int(db.execute("SELECT COALESCE(MAX(created_ns), 0) FROM versions").fetchone()[0]),
                int(db.execute("SELECT COALESCE(MAX(time_ns), 0) FROM snapshots").fetchone()[0]),
            )
        else:
            floor = int(row[0])
        stamped = max(time_ns, floor + 1)
        db.execute(
            "INSERT INTO settings(name, value) VALUES ('clock_floor_ns', ?)"
            " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            (stamped,),
        )
        return stamped

    @staticmethod
    def _live_version(db: sqlite3.Connection, fid: bytes) -> int | None:
        row = db.execute(
            "SELECT id FROM versions WHERE file_id=? AND removed=0 ORDER BY id DESC", (fid,)
        ).fetchone()
        return int(row[0]) if row else None

    # -- settings ------------------------------------------------------------------------

    def get_setting(self, name: str, default: int = 0) -> int:
        with self._reading() as db:
            row = db.execute("SELECT value FROM settings WHERE name=?", (name,)).fetchone()
            return int(row[0]) if row else default

    def set_setting(self, name: str, value: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings(name, value) VALUES (?,?)"
                " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )

    def fingerprint(self) -> tuple[int, ...]:
        """Changes whenever what a recovery needs changes: versions, completeness, the trees."""
        with self._reading() as db:
            row = db.execute(
                "SELECT (SELECT COALESCE(MAX(id), 0) FROM versions),"
                " (SELECT COUNT(*) FROM versions WHERE removed=0),"
                " (SELECT COUNT(*) FROM versions WHERE complete=1),"
                " (SELECT COALESCE(MAX(seq), 0) FROM tree_events),"
                " (SELECT COUNT(*) FROM tree_events),"
                " (SELECT COUNT(*) FROM snapshots)"
            ).fetchone()
            return tuple(int(v) for v in row)

    def counts(self) -> dict[str, int]:
        """Sizes of the catalog, for status and metrics."""
        with self._reading() as db:
            one = db.execute
            pending, pending_degree = one(
                "SELECT COUNT(*), COALESCE(MAX(degree), 0) FROM versions"
                " WHERE complete=0 AND removed=0"
            ).fetchone()
            return {
                "versions": int(one("SELECT COUNT(*) FROM versions WHERE removed=0").fetchone()[0]),
                "pending_versions": int(pending),
                "pending_degree": int(pending_degree),  # the highest a pending version wants
                "snapshots": int(one("SELECT COUNT(*) FROM snapshots").fetchone()[0]),
                "tombstones": int(one("SELECT COUNT(*) FROM tombstones").fetchone()[0]),
            }


def _matching(
    db: sqlite3.Connection, query: str, addresses: Iterable[bytes], uses: int = 1
) -> set[bytes]:
    """The addresses ``query`` returns for ``addresses``, asked 500 at a time: ``{marks}`` in
    the query stands for one batch's placeholders (``uses`` times in it)."""
    wanted = sorted(set(addresses))
    out: set[bytes] = set()
    for i in range(0, len(wanted), 500):
        batch = wanted[i : i + 500]
        marks = ",".join("?" * len(batch))
        out.update(bytes(r[0]) for r in db.execute(query.format(marks=marks), batch * uses))
    return out


def _private(path: Path) -> None:
    """The catalog names every file backed up: readable by its owner only (SQLite gives its
    -wal and -shm files the database file's permissions)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.rstrip("/") + "/%"
