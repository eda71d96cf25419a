"""The owner's local catalog: every file version it backed up, where each chunk's copies are,
and the deletes still owed by holders that were offline.

SQLite in WAL mode with ``synchronous=FULL``: a version marked complete stays complete after a
crash. Thread-safe through one lock (callers run it on a worker thread).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import FileVersion

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    path       TEXT    NOT NULL,   -- path relative to the backed-up root, '/'-separated
    file_id    BLOB    NOT NULL UNIQUE,
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
    removed    INTEGER NOT NULL DEFAULT 0   -- 1 after `delete PATH`
);
CREATE INDEX IF NOT EXISTS versions_by_path ON versions (path, id);
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
    time_ns  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tree_events_by_entry ON tree_events (root, parent, name, seq);
CREATE TABLE IF NOT EXISTS snapshots (    -- one per commit: the tree as of tree_events.seq
    seq     INTEGER PRIMARY KEY,
    root    TEXT    NOT NULL,
    time_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_root ON snapshots (root, seq);
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

_VERSION_COLUMNS = "id, path, file_id, size, mode, uid, gid, mtime_ns, ctime_ns, degree, owner"
TREE_GONE = 0
TREE_DIR = 1
TREE_FILE = 2
TREE_SYMLINK = 3


@dataclass(frozen=True, slots=True)
class TreeEvent:
    """One entry of a mounted tree at some moment (kind ``TREE_GONE`` records a removal)."""

    parent: str
    name: str
    kind: int
    file_id: bytes = b""
    mode: int = 0
    mtime_ns: int = 0
    target: str = ""


class CatalogDB:
    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    # -- versions ------------------------------------------------------------------------

    def add_version(self, version: FileVersion, created_ns: int) -> int:
        """Record a version (idempotent by fileId); returns its row id."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM versions WHERE file_id=?", (version.file_id,)
            ).fetchone()
            if row:
                return int(row[0])
            cur = db.execute(
                "INSERT INTO versions(path, file_id, size, mode, uid, gid, mtime_ns, ctime_ns,"
                " degree, owner, created_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
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
                ),
            )
            vid = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO version_chunks(version_id, no, address) VALUES (?,?,?)",
                [(vid, no, a) for no, a in enumerate(version.chunks)],
            )
            return vid

    def _version_from_row(self, row: Sequence[Any]) -> FileVersion:
        vid = int(row[0])
        chunks = tuple(
            bytes(r[0])
            for r in self._db.execute(
                "SELECT address FROM version_chunks WHERE version_id=? ORDER BY no", (vid,)
            )
        )
        _, path, fid, size, mode, uid, gid, mtime, ctime, degree, owner = row
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
        )

    def latest(self, path: str, include_removed: bool = False) -> FileVersion | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE path=?"
                + ("" if include_removed else " AND removed=0")
                + " ORDER BY id DESC LIMIT 1",
                (path,),
            ).fetchone()
            return self._version_from_row(row) if row else None

    def versions_of(self, path: str) -> list[tuple[FileVersion, int, bool]]:
        """Every version of ``path``, oldest first, with its cut time and completeness."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VERSION_COLUMNS}, created_ns, complete FROM versions"
                " WHERE path=? AND removed=0 ORDER BY id",
                (path,),
            ).fetchall()
            return [(self._version_from_row(r[:11]), int(r[11]), bool(r[12])) for r in rows]

    def latest_versions(self, prefix: str = "") -> list[tuple[FileVersion, bool]]:
        """The newest live version of every path (under ``prefix``), with completeness."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VERSION_COLUMNS}, complete FROM versions v WHERE removed=0"
                " AND id = (SELECT MAX(id) FROM versions w WHERE w.path = v.path AND removed=0)"
                " AND (path = ? OR path LIKE ? ESCAPE '\\' OR ? = '') ORDER BY path",
                (prefix, _like_prefix(prefix), prefix),
            ).fetchall()
            return [(self._version_from_row(r[:11]), bool(r[11])) for r in rows]

    def versions_at(self, prefix: str, at_ns: int) -> list[FileVersion]:
        """The newest version of every path under ``prefix`` cut at or before ``at_ns``."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions v WHERE removed=0 AND created_ns <= ?"
                " AND id = (SELECT MAX(id) FROM versions w WHERE w.path = v.path AND removed=0"
                " AND created_ns <= ?)"
                " AND (path = ? OR path LIKE ? ESCAPE '\\' OR ? = '') ORDER BY path",
                (at_ns, at_ns, prefix, _like_prefix(prefix), prefix),
            ).fetchall()
            return [self._version_from_row(r) for r in rows]

    def set_complete(self, file_id: bytes, complete: bool = True) -> None:
        with self._tx() as db:
            db.execute("UPDATE versions SET complete=? WHERE file_id=?", (int(complete), file_id))

    def incomplete_versions(self) -> list[FileVersion]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE complete=0 AND removed=0 ORDER BY id"
            ).fetchall()
            return [self._version_from_row(r) for r in rows]

    def remove_paths(self, paths: Iterable[str]) -> list[bytes]:
        """Mark every version of ``paths`` removed; return addresses no live version still uses."""
        wanted = list(paths)
        with self._tx() as db:
            candidates: set[bytes] = set()
            for path in wanted:
                for (address,) in db.execute(
                    "SELECT address FROM version_chunks c JOIN versions v ON v.id = c.version_id"
                    " WHERE v.path=? AND v.removed=0",
                    (path,),
                ):
                    candidates.add(bytes(address))
                db.execute("UPDATE versions SET removed=1 WHERE path=?", (path,))
            orphaned = []
            for address in candidates:
                still = db.execute(
                    "SELECT 1 FROM version_chunks c JOIN versions v ON v.id = c.version_id"
                    " WHERE c.address=? AND v.removed=0 LIMIT 1",
                    (address,),
                ).fetchone()
                if still is None:
                    orphaned.append(address)
            return sorted(orphaned)

    def live_addresses(self) -> list[tuple[bytes, int]]:
        """Every chunk address a live version uses, with the highest degree asked for it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.address, MAX(v.degree) FROM version_chunks c"
                " JOIN versions v ON v.id = c.version_id WHERE v.removed=0 GROUP BY c.address"
            ).fetchall()
            return [(bytes(a), int(d)) for a, d in rows]

    # -- holders and tombstones ----------------------------------------------------------

    def add_holders(self, pairs: Iterable[tuple[bytes, int]]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO holders(address, node) VALUES (?,?)", list(pairs))

    def set_holders(self, address: bytes, nodes: Iterable[int]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM holders WHERE address=?", (address,))
            db.executemany(
                "INSERT INTO holders(address, node) VALUES (?,?)",
                [(address, n) for n in set(nodes)],
            )

    def holders(self, address: bytes) -> set[int]:
        with self._lock:
            return {
                int(r[0])
                for r in self._db.execute("SELECT node FROM holders WHERE address=?", (address,))
            }

    def holders_many(self, addresses: Iterable[bytes]) -> dict[bytes, set[int]]:
        wanted = list(dict.fromkeys(addresses))
        out: dict[bytes, set[int]] = {a: set() for a in wanted}
        with self._lock:
            for i in range(0, len(wanted), 500):
                batch = wanted[i : i + 500]
                marks = ",".join("?" * len(batch))
                for address, node in self._db.execute(
                    f"SELECT address, node FROM holders WHERE address IN ({marks})", batch
                ):
                    out[bytes(address)].add(int(node))
        return out

    def forget_holders(self, addresses: Iterable[bytes]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM holders WHERE address=?", [(a,) for a in addresses])

    def add_tombstones(self, pairs: Iterable[tuple[int, bytes]]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO tombstones(node, address) VALUES (?,?)", list(pairs)
            )

    def tombstones(self) -> dict[int, list[bytes]]:
        with self._lock:
            out: dict[int, list[bytes]] = {}
            for node, address in self._db.execute(
                "SELECT node, address FROM tombstones ORDER BY node"
            ):
                out.setdefault(int(node), []).append(bytes(address))
            return out

    def clear_tombstones(self, node: int, addresses: Iterable[bytes]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM tombstones WHERE node=? AND address=?", [(node, a) for a in addresses]
            )

    # -- the tree's history: snapshots ----------------------------------------------------

    def record_tree(self, root: str, entries: Iterable[TreeEvent], time_ns: int) -> int:
        """Append tree changes and commit them as one snapshot; returns its sequence number."""
        with self._tx() as db:
            seq = 0
            for e in entries:
                cur = db.execute(
                    "INSERT INTO tree_events(root, parent, name, kind, file_id, mode, mtime_ns,"
                    " target, time_ns) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        root,
                        e.parent,
                        e.name,
                        e.kind,
                        e.file_id,
                        e.mode,
                        e.mtime_ns,
                        e.target,
                        time_ns,
                    ),
                )
                seq = int(cur.lastrowid or 0)
            if seq:
                db.execute(
                    "INSERT INTO snapshots(seq, root, time_ns) VALUES (?,?,?)", (seq, root, time_ns)
                )
            return seq

    def snapshots(self, root: str | None = None) -> list[tuple[int, str, int]]:
        """(seq, root, time_ns) of every snapshot, oldest first."""
        with self._lock:
            if root is None:
                rows = self._db.execute("SELECT seq, root, time_ns FROM snapshots ORDER BY seq")
            else:
                rows = self._db.execute(
                    "SELECT seq, root, time_ns FROM snapshots WHERE root=? ORDER BY seq", (root,)
                )
            return [(int(a), str(b), int(c)) for a, b, c in rows.fetchall()]

    def tree_entry(self, root: str, parent: str, name: str, seq: int) -> TreeEvent | None:
        """The entry ``parent/name`` as of snapshot ``seq`` (None if absent then)."""
        with self._lock:
            row = self._db.execute(
                "SELECT parent, name, kind, file_id, mode, mtime_ns, target FROM tree_events"
                " WHERE root=? AND parent=? AND name=? AND seq<=? ORDER BY seq DESC LIMIT 1",
                (root, parent, name, seq),
            ).fetchone()
        if row is None or row[2] == TREE_GONE:
            return None
        return TreeEvent(
            str(row[0]),
            str(row[1]),
            int(row[2]),
            bytes(row[3] or b""),
            int(row[4]),
            int(row[5]),
            str(row[6]),
        )

    def tree_children(self, root: str, parent: str, seq: int) -> list[TreeEvent]:
        """A folder's entries as of snapshot ``seq``, sorted by name; built from the index."""
        with self._lock:
            rows = self._db.execute(
                "SELECT e.parent, e.name, e.kind, e.file_id, e.mode, e.mtime_ns, e.target"
                " FROM tree_events e WHERE e.root=? AND e.parent=? AND e.seq = ("
                "  SELECT MAX(seq) FROM tree_events w WHERE w.root=e.root AND w.parent=e.parent"
                "  AND w.name=e.name AND w.seq<=?) AND e.kind != 0 ORDER BY e.name",
                (root, parent, seq),
            ).fetchall()
        return [
            TreeEvent(str(a), str(b), int(c), bytes(d or b""), int(m), int(t), str(g))
            for a, b, c, d, m, t, g in rows
        ]

    def version_by_id(self, file_id: bytes) -> FileVersion | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_VERSION_COLUMNS} FROM versions WHERE file_id=?", (file_id,)
            ).fetchone()
            return self._version_from_row(row) if row else None

    # -- settings ------------------------------------------------------------------------

    def get_setting(self, name: str, default: int = 0) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE name=?", (name,)).fetchone()
            return int(row[0]) if row else default

    def set_setting(self, name: str, value: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO settings(name, value) VALUES (?,?)"
                " ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.rstrip("/") + "/%"
