"""The fault and scale scenarios: what each does and what it must show.

One list for the suite (each scenario test is marked with its key), for
``scripts/reliability_report.py`` (which writes docs/reliability.md from it and the measured
figures) and for tests/test_docs.py (the document lists every scenario and its criterion).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    number: int
    key: str
    title: str
    criterion: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        1,
        "holder-killed",
        "A holder killed -9 during a backup at degree 2, restarted after a pause",
        "the backup succeeds; the restore is identical; every chunk is back at degree 2",
    ),
    Scenario(
        2,
        "mount-killed",
        "The mount killed -9 at random points of write/fsync/rename/truncate workloads",
        "every fsync'd file reads back as it was fsync'd after a remount; check is clean",
    ),
    Scenario(
        3,
        "crash-points",
        "A crash at each commit step of a backup, a cut, a repair, a delete and a prune",
        "after a restart check is clean and nothing acknowledged is lost",
    ),
    Scenario(
        4,
        "disk-full",
        "A holder's disk fills up (a small tmpfs) during backups",
        "no false acknowledgement, no traceback, one warning; the holder advertises what it"
        " can take; later backups succeed on the others and restore identical",
    ),
    Scenario(
        5,
        "lossy-links",
        "Lossy links through a seeded proxy (resets, duplicated and corrupted frames, delay)",
        "the backup and the restore succeed and no error reaches the user",
    ),
    Scenario(
        6,
        "partition",
        "One computer partitioned while writes go on, then healed",
        "degrees restored, no stale copy served unverified, the catalog sequence never goes back",
    ),
    Scenario(
        7,
        "thrashing",
        "A random node killed or restarted every few seconds under backups",
        "every backup succeeds; the restore is identical; within 360 s every chunk is at"
        " exactly its degree",
    ),
    Scenario(
        8,
        "bit-rot",
        "Copies flipped, truncated, emptied, deleted and swapped on a holder",
        "one check --read-data finds every damaged copy, --repair restores the degree, the"
        " restore is identical",
    ),
    Scenario(
        9,
        "reclaim",
        "Reclaiming half a node's space during a backup; a node's directory deleted for good",
        "the node ends within its new quota, every chunk at its degree, the restore identical",
    ),
    Scenario(
        10,
        "retention-race",
        "Retention racing backups that reuse old chunks; an owner paused past every timeout",
        "no chunk of a kept snapshot is ever deleted",
    ),
    Scenario(
        11,
        "clock-steps",
        "A node's clock jumps an hour forward and back",
        "no snapshot ordering, retention or gone decision goes wrong",
    ),
    Scenario(
        12,
        "many-files",
        "100,000 files in 5,000 folders and 200 snapshots",
        "mount, listing versions/, status and state each answer in under 2 s",
    ),
    Scenario(
        13,
        "ten-nodes",
        "10 nodes on 5 computers (namespaces, tc tbf links), 2 GiB at degree 3",
        "every node within 25 % of its fair share, restore identical, a lost computer repaired",
    ),
    Scenario(
        14,
        "soak",
        "One hour of mixed mount writes with a node restarted every few minutes",
        "no RSS growth beyond 10 % after the first 10 minutes, no file descriptor leak (open"
        " files other than segments steady; segments read, a bounded cache, within its bound)",
    ),
)

BY_KEY = {s.key: s for s in SCENARIOS}
