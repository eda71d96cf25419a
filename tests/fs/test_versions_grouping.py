"""versions/ after a busy day: snapshots older than an hour are listed as the last of each
minute (a `git clone` makes ~20 in ten seconds), and every snapshot still opens by its name."""

from __future__ import annotations

import time
from pathlib import Path

from chunkstore.catalogbase import TREE_DIR
from chunkstore.catalogdb import CatalogDB, EntryRecord
from fs.versions import (
    GROUP_AFTER_NS,
    GROUP_EVERY_NS,
    LATEST,
    VersionsView,
    shown_snapshots,
    snapshot_name,
)

SECOND = 10**9
MINUTE = 60 * SECOND


def test_old_bursts_show_their_last_snapshot_of_each_minute() -> None:
    now = 1_800_000_000 * SECOND
    named: dict[str, tuple[int, int]] = {}
    seq = 0
    # Two hours ago: a burst of 20 snapshots in 10 s, then one a minute later.
    for i in range(20):
        seq += 1
        named[f"old-{i:02}"] = (seq, now - 2 * 3600 * SECOND + i * SECOND // 2)
    seq += 1
    named["old-later"] = (seq, now - 2 * 3600 * SECOND + MINUTE)
    # Ten minutes ago: another burst, young enough to be shown whole.
    for i in range(5):
        seq += 1
        named[f"new-{i}"] = (seq, now - 600 * SECOND + i * SECOND)
    named[LATEST] = named["new-4"]
    shown = [name for name, _ in shown_snapshots(named, now)]
    assert shown == sorted(
        ["old-19", "old-later", "new-0", "new-1", "new-2", "new-3", "new-4", LATEST]
    )
    # Exactly at the limits: an hour old is grouped, a minute's slot is [k min, k+1 min).
    at_limit = {"a": (1, now - GROUP_AFTER_NS), "b": (2, now - GROUP_AFTER_NS + 1)}
    assert [n for n, _ in shown_snapshots(at_limit, now)] == ["a", "b"]
    same_slot = {"x": (1, 10 * GROUP_EVERY_NS), "y": (2, 11 * GROUP_EVERY_NS - 1)}
    assert [n for n, _ in shown_snapshots(same_slot, now)] == ["y"]


def test_the_listing_is_grouped_and_every_snapshot_still_opens(tmp_path: Path) -> None:
    catalog = CatalogDB(tmp_path / "catalog.sqlite3")
    root = str(tmp_path / "source")
    start = (time.time_ns() - 3 * 3600 * SECOND) // MINUTE * MINUTE  # a minute begins
    for i in range(12):  # a burst three hours ago, one snapshot every 2 s
        catalog.commit_tree(
            root, [EntryRecord(f"d{i}", TREE_DIR, 0o755, start)], start + i * 2 * SECOND
        )

    async def no_chunks(*_args: object) -> list[bytes]:
        raise AssertionError("nothing is read")

    view = VersionsView(catalog, root, no_chunks, 0, 0)
    listed = dict(view.listing(view.top))
    assert LATEST in listed
    snapshots = sorted(n for n in listed if n != LATEST)
    assert len(snapshots) == 1  # the 12 fell in one minute: its last is shown
    inode = listed[snapshots[0]]
    assert sorted(name for name, _ in view.listing(inode)) == sorted(f"d{i}" for i in range(12))
    every = catalog.snapshots(root)
    assert len(every) == 12  # all still recorded
    first = view.lookup(view.top, snapshot_name(every[0][2]))  # a hidden one, by its name
    assert [name for name, _ in view.listing(first)] == ["d0"]
    catalog.close()
