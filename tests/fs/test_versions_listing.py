"""versions/ with a long history: the snapshot names are read once per change of the history,
not once per entry listed or looked up (``ls -l versions/`` was quadratic in snapshots)."""

from __future__ import annotations

import time
from pathlib import Path

import pyfuse3
import pytest

from chunkstore.catalog import FileVersion
from chunkstore.catalogbase import TREE_DIR
from chunkstore.catalogdb import CatalogDB, EntryRecord
from fs.versions import LATEST, VersionsView, snapshot_name

ROOT = "/home/ann/data"
# Within the last hour: every snapshot is listed (older bursts are grouped by the minute).
T0 = time.time_ns() - 30 * 60 * 10**9


async def no_chunks(_version: FileVersion, _nos: list[int]) -> list[bytes]:
    raise AssertionError("nothing is read here")


def test_listing_and_looking_up_every_snapshot_reads_the_history_once(tmp_path: Path) -> None:
    catalog = CatalogDB(tmp_path / "catalog.sqlite3")
    for n in range(2000):
        catalog.commit_tree(ROOT, [EntryRecord(f"d{n}", TREE_DIR, 0o40755, T0)], T0 + n * 10**6)
    view = VersionsView(catalog, ROOT, no_chunks, 0, 0)
    reads = 0
    real = catalog.snapshots

    def counted(root: str | None = None) -> list[tuple[int, str, int]]:
        nonlocal reads
        reads += 1
        return real(root)

    catalog.snapshots = counted  # type: ignore[method-assign]
    listed = view.listing(view.top)
    assert len(listed) == 2001 and listed[-1][0] == LATEST
    for name, inode in listed:  # what `ls -l` does next: a lookup and a stat per name
        assert view.lookup(view.top, name) == inode
        view.attrs(inode)
    assert reads == 1
    # A commit adds one: seen at once. A prune removes some: seen at once.
    seq = catalog.commit_tree(ROOT, [EntryRecord("new", TREE_DIR, 0o40755, T0)], T0 + 10**12)
    newest = snapshot_name(T0 + 10**12)
    assert view.lookup(view.top, newest) == view.lookup(view.top, LATEST)
    assert reads == 2
    first = listed[0][0]
    catalog.prune([], [], [], T0 + 10**13, False)  # nothing dropped: the same history
    view.lookup(view.top, first)
    assert reads == 2
    with catalog._tx() as db:  # a prune dropped the oldest snapshot
        db.execute("DELETE FROM snapshots WHERE root=? AND seq<?", (ROOT, seq - 1))
    with pytest.raises(pyfuse3.FUSEError):
        view.lookup(view.top, first)
    assert [name for name, _i in view.listing(view.top)][:1] != [first]
