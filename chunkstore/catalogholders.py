"""The catalog's record of where an owner's chunks are: the holders that acknowledged each
chunk or share, the chunks kept as copies or with a code, the deletes owed by holders that
were offline (tombstones), what holders may still re-make (WANTED), and the chunks of the
catalog's own backup."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from .catalogbase import CatalogBase, _matching
from .catalogcopy import COPY_SCHEMA
from .shares import items_of
from .sqlrows import insert_rows


class CatalogHolders(CatalogBase):
    # -- what is no longer used, and the deletes it owes ----------------------------------------

    @staticmethod
    def _unreferenced(db: sqlite3.Connection, candidates: Iterable[bytes]) -> list[bytes]:
        """Those of ``candidates`` that no live version and no catalog backup uses."""
        orphaned = []
        for address in candidates:
            still = db.execute(
                "SELECT 1 FROM version_chunks c JOIN versions v ON v.id = c.version_id"
                " WHERE c.address=? AND v.removed=0 LIMIT 1",
                (address,),
            ).fetchone()
            if still is None:
                still = db.execute(
                    f"SELECT 1 FROM {COPY_SCHEMA}.catalog_chunks WHERE address=?", (address,)
                ).fetchone()
            if still is None:
                orphaned.append(address)
        return sorted(orphaned)

    @staticmethod
    def _coded(db: sqlite3.Connection, addresses: Iterable[bytes]) -> dict[bytes, set[int]]:
        """Of ``addresses``, those some version (removed ones too) keeps with a code: the
        codes (as degrees)."""
        out: dict[bytes, set[int]] = {}
        for address in addresses:
            for (degree,) in db.execute(
                "SELECT DISTINCT v.degree FROM version_chunks c JOIN versions v"
                " ON v.id = c.version_id WHERE c.address=? AND v.degree > 9",
                (address,),
            ):
                out.setdefault(address, set()).add(int(degree))
        return out

    @classmethod
    def _schedule_deletes(
        cls,
        db: sqlite3.Connection,
        orphaned: list[bytes],
        known_nodes: Iterable[int],
        coded: dict[bytes, set[int]] | None = None,
    ) -> set[int]:
        """Tombstones for ``orphaned`` chunks on every node that may hold them, and for the
        shares of those kept with a code (``coded``: read from the versions if not given)."""
        everyone = set(known_nodes)
        nodes: set[int] = set()
        if coded is None:
            coded = cls._coded(db, orphaned)
        items = list(orphaned)
        for address in orphaned:  # a coded chunk's shares go with it
            for degree in sorted(coded.get(address, ())):
                items += items_of(address, degree)
        for address in dict.fromkeys(items):
            held = {int(r[0]) for r in db.execute(_HOLDERS_OF, (address, address))}
            targets = held | everyone
            nodes |= targets
            db.executemany(
                "INSERT OR IGNORE INTO tombstones(node, address) VALUES (?,?)",
                [(n, address) for n in targets],
            )
            db.execute("DELETE FROM holders WHERE address=?", (address,))
            db.execute(f"DELETE FROM {COPY_SCHEMA}.catalog_holders WHERE address=?", (address,))
        return nodes

    def live_addresses(self) -> list[tuple[bytes, int]]:
        """Every chunk address a live version keeps as copies, with the highest degree asked
        for it (a coded version's chunks are kept as shares: ``coded_chunks``)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT c.address, MAX(v.degree) FROM version_chunks c"
                " JOIN versions v ON v.id = c.version_id WHERE v.removed=0 AND v.degree <= 9"
                " GROUP BY c.address"
            ).fetchall()
            return [(bytes(a), int(d)) for a, d in rows]

    def coded_chunks(self) -> list[tuple[bytes, int]]:
        """Every (chunk address, code as a degree) a live version keeps with a code."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT DISTINCT c.address, v.degree FROM version_chunks c"
                " JOIN versions v ON v.id = c.version_id WHERE v.removed=0 AND v.degree > 9"
            ).fetchall()
            return [(bytes(a), int(d)) for a, d in rows]

    # -- holders and tombstones ----------------------------------------------------------

    # Holders of a chunk are the rows of both tables: ``holders`` for the files' chunks,
    # ``catalog_holders`` (the copy's database) for the catalog copy's. The two databases
    # commit one after the other, so a row that says a node no longer holds a chunk is
    # removed from the copy's database in a commit of its own, first: a crash in between
    # can only leave the owner believing in fewer copies (and sending one again), never in
    # a copy that was deleted. The exception is ``_schedule_deletes`` inside a delete or
    # prune of files: it drops copy rows of the same addresses in the catalog's transaction
    # (never a chunk the newest copy lists: those are not orphaned; docs/formats.md).

    def add_holders(self, pairs: Iterable[tuple[bytes, int]]) -> None:
        with self._tx() as db:
            insert_rows(db, "INSERT OR IGNORE INTO holders(address, node)", pairs)

    def add_copy_holders(self, pairs: Iterable[tuple[bytes, int]]) -> None:
        """Holders that acknowledged chunks of the catalog's copy."""
        with self._tx() as db:
            insert_rows(
                db, f"INSERT OR IGNORE INTO {COPY_SCHEMA}.catalog_holders(address, node)", pairs
            )

    def drop_holders(self, pairs: Iterable[tuple[bytes, int]]) -> None:
        """These (address, node) copies were dropped (surplus trimmed)."""
        dropped = list(pairs)
        with self._tx() as db:
            db.executemany(
                f"DELETE FROM {COPY_SCHEMA}.catalog_holders WHERE address=? AND node=?", dropped
            )
        with self._tx() as db:
            db.executemany("DELETE FROM holders WHERE address=? AND node=?", dropped)

    def set_holders(self, address: bytes, nodes: Iterable[int]) -> None:
        with self._tx() as db:
            db.execute(f"DELETE FROM {COPY_SCHEMA}.catalog_holders WHERE address=?", (address,))
        with self._tx() as db:
            db.execute("DELETE FROM holders WHERE address=?", (address,))
            insert_rows(
                db, "INSERT INTO holders(address, node)", [(address, n) for n in set(nodes)]
            )

    def holders(self, address: bytes) -> set[int]:
        with self._reading() as db:
            return {int(r[0]) for r in db.execute(_HOLDERS_OF, (address, address))}

    def holders_many(self, addresses: Iterable[bytes]) -> dict[bytes, set[int]]:
        wanted = list(dict.fromkeys(addresses))
        out: dict[bytes, set[int]] = {a: set() for a in wanted}
        with self._reading() as db:
            for i in range(0, len(wanted), 500):
                batch = wanted[i : i + 500]
                marks = ",".join("?" * len(batch))
                for address, node in db.execute(
                    f"SELECT address, node FROM holders WHERE address IN ({marks}) UNION ALL"
                    f" SELECT address, node FROM {COPY_SCHEMA}.catalog_holders"
                    f" WHERE address IN ({marks})",
                    batch * 2,
                ):
                    out[bytes(address)].add(int(node))
        return out

    def codes_of(self, addresses: Iterable[bytes]) -> dict[bytes, list[int]]:
        """For those of ``addresses`` some version keeps with a K-of-N code, the degrees (the
        codes, ``Code.as_degree``) they are kept with: where their shares are to be found."""
        wanted = sorted(set(addresses))
        out: dict[bytes, list[int]] = {}
        with self._reading() as db:
            for i in range(0, len(wanted), 500):
                batch = wanted[i : i + 500]
                marks = ",".join("?" * len(batch))
                for address, degree in db.execute(
                    "SELECT DISTINCT c.address, v.degree FROM version_chunks c"
                    " JOIN versions v ON v.id = c.version_id"
                    f" WHERE v.degree > 9 AND c.address IN ({marks})",
                    batch,
                ):
                    out.setdefault(bytes(address), []).append(int(degree))
        return out

    def still_wanted(self, addresses: Iterable[bytes]) -> set[bytes]:
        """Those of ``addresses`` a live version or the catalog copy uses, with no delete
        pending (what holders may copy again when a copy is missing)."""
        with self._reading() as db:
            used = _matching(
                db,
                "SELECT c.address FROM version_chunks c JOIN versions v ON v.id = c.version_id"
                " WHERE v.removed=0 AND c.address IN ({marks})"
                f" UNION SELECT address FROM {COPY_SCHEMA}.catalog_chunks"
                " WHERE address IN ({marks})",
                addresses,
                uses=2,
            )
            return used - _matching(
                db, "SELECT address FROM tombstones WHERE address IN ({marks})", used
            )

    def any_tombstoned(self, addresses: Iterable[bytes]) -> bool:
        """Whether a delete is pending for any of ``addresses`` (on any node)."""
        wanted = list(addresses)
        with self._reading() as db:
            for i in range(0, len(wanted), 500):
                batch = wanted[i : i + 500]
                marks = ",".join("?" * len(batch))
                if db.execute(
                    f"SELECT 1 FROM tombstones WHERE address IN ({marks}) LIMIT 1", batch
                ).fetchone():
                    return True
        return False

    def tombstones(self) -> dict[int, list[bytes]]:
        with self._reading() as db:
            out: dict[int, list[bytes]] = {}
            for node, address in db.execute("SELECT node, address FROM tombstones ORDER BY node"):
                out.setdefault(int(node), []).append(bytes(address))
            return out

    def clear_tombstones(self, node: int, addresses: Iterable[bytes]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM tombstones WHERE node=? AND address=?", [(node, a) for a in addresses]
            )

    def revive(self, addresses: Iterable[bytes]) -> None:
        """Content that was deleted is wanted again: drop the deletes still owed for it."""
        with self._tx() as db:
            db.executemany("DELETE FROM tombstones WHERE address=?", [(a,) for a in addresses])

    # -- the catalog's own backup --------------------------------------------------------

    def set_catalog_chunks(self, addresses: Iterable[bytes]) -> list[bytes]:
        """Record the chunks of the newest catalog backup; returns those no longer needed."""
        wanted = set(addresses)
        table = f"{COPY_SCHEMA}.catalog_chunks"
        with self._tx() as db:
            old = {bytes(r[0]) for r in db.execute(f"SELECT address FROM {table}")}
            db.executemany(f"DELETE FROM {table} WHERE address=?", [(a,) for a in old - wanted])
            insert_rows(db, f"INSERT INTO {table}(address)", [(a,) for a in wanted - old])
            return self._unreferenced(db, old - wanted)

    def catalog_chunks(self) -> set[bytes]:
        with self._reading() as db:
            return {
                bytes(r[0]) for r in db.execute(f"SELECT address FROM {COPY_SCHEMA}.catalog_chunks")
            }

    def schedule_deletes(self, addresses: list[bytes], known_nodes: Iterable[int]) -> set[int]:
        with self._tx() as db:  # the copy's holder rows go first (see add_holders)
            db.executemany(
                f"DELETE FROM {COPY_SCHEMA}.catalog_holders WHERE address=?",
                [(a,) for a in self._unreferenced(db, addresses)],
            )
        with self._tx() as db:
            return self._schedule_deletes(db, self._unreferenced(db, addresses), known_nodes)


_HOLDERS_OF = (
    "SELECT node FROM holders WHERE address=?"
    f" UNION SELECT node FROM {COPY_SCHEMA}.catalog_holders WHERE address=?"
)
