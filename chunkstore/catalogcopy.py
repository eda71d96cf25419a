"""The catalog's record of its own copy on the peers: the chunks the newest copy is made of and
the nodes that acknowledged them, in a database of its own beside the catalog
(``catalog-copy.sqlite3``, attached to every catalog connection as ``COPY_SCHEMA``).

The copy is a copy of the catalog alone, so it does not carry its own bookkeeping. In the
catalog, every copy's new chunks became holder rows at random places of a big table, and the
next copy re-sent every chunk those rows touched: a single save through a mount made ~110 of a
427-chunk catalog's chunks new, against 8 without. The two files commit one after the other
(attached WAL databases are not atomic together): see ``catalogholders`` for the order.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

COPY_SCHEMA = "copy_state"
COPY_TABLES = f"""
CREATE TABLE IF NOT EXISTS {COPY_SCHEMA}.catalog_chunks (  -- the newest copy's chunks
    address BLOB PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {COPY_SCHEMA}.catalog_holders (  -- nodes that acknowledged them
    address BLOB    NOT NULL,
    node    INTEGER NOT NULL,
    PRIMARY KEY (address, node)
) WITHOUT ROWID;
"""


def copy_state_path(path: Path) -> Path:
    """The database beside the catalog at ``path`` that describes its copy on the peers."""
    return path.with_name(f"{path.stem}-copy{path.suffix}")


def catalog_files(path: Path) -> list[Path]:
    """Every file of the catalog at ``path``: its database, the copy's, and their WAL files."""
    out = []
    for db in (path, copy_state_path(path)):
        out += [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    return out


def attach_copy_state(conn: sqlite3.Connection, catalog: Path) -> None:
    conn.execute(f"ATTACH DATABASE ? AS {COPY_SCHEMA}", (str(copy_state_path(catalog)),))


def move_old_copy_state(db: sqlite3.Connection) -> None:
    """Catalogs before the copy's own database listed its chunks in ``catalog_chunks`` and
    their holders among the others: copied over (what is already there is kept), then the old
    table dropped. Each step is its own commit and can be done again."""
    old = db.execute(
        "SELECT 1 FROM main.sqlite_master WHERE type='table' AND name='catalog_chunks'"
    ).fetchone()
    if old is None:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            f"INSERT OR IGNORE INTO {COPY_SCHEMA}.catalog_chunks(address)"
            " SELECT address FROM main.catalog_chunks"
        )
        db.execute(
            f"INSERT OR IGNORE INTO {COPY_SCHEMA}.catalog_holders(address, node)"
            " SELECT h.address, h.node FROM main.holders h"
            " JOIN main.catalog_chunks c ON c.address = h.address"
        )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    db.execute("DROP TABLE main.catalog_chunks")
