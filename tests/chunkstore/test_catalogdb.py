"""The owner's catalog: tree history, leases, delete and prune."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkstore.catalog import FileVersion
from chunkstore.catalogbase import _SCHEMA, TREE_DIR, TREE_FILE, BackupRun
from chunkstore.catalogdb import (
    AttrRecord,
    CatalogDB,
    CutRecord,
    EntryRecord,
    RemovalRecord,
    RenameRecord,
    TreeEvent,
)
from chunkstore.chunking import chunk_count
from chunkstore.fileid import content_digest, file_id

ROOT = "/home/ann/data"
T0 = 1_700_000_000 * 10**9


def address(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def version(relative: str, content: str, size: int = 10, complete_marker: int = 0) -> FileVersion:
    path = f"{ROOT}/{relative}"
    chunks = tuple(address(f"{content}:{n}") for n in range(chunk_count(size)))
    return FileVersion(
        path=path,
        file_id=file_id(1, path, size, T0 + complete_marker, content_digest(chunks)),
        size=size,
        mode=0o100644,
        uid=0,
        gid=0,
        mtime_ns=T0 + complete_marker,
        ctime_ns=T0,
        degree=2,
        chunks=chunks,
        owner=1,
    )


@pytest.fixture
def db(tmp_path: Path) -> CatalogDB:
    return CatalogDB(tmp_path / "catalog.sqlite3")


def tree(db: CatalogDB, seq: int) -> dict[str, tuple[int, bytes]]:
    return {path: (e.kind, e.file_id) for path, e in db.tree_walk(ROOT, "", seq)}


def commit(db: CatalogDB, *changes: object, at: int = 0) -> int:
    seq = db.commit_tree(ROOT, list(changes), T0 + at)  # type: ignore[arg-type]
    for change in changes:
        if isinstance(change, CutRecord):
            db.set_complete(change.version.file_id)
    return seq


def test_commit_tree_renames_and_removals(db: CatalogDB) -> None:
    a = version("docs/a.txt", "a")
    s1 = commit(
        db,
        EntryRecord("docs", TREE_DIR, 0o40755, T0),
        CutRecord("docs/a.txt", a),
        EntryRecord("docs/sub", TREE_DIR, 0o40755, T0),
        CutRecord("docs/sub/b.txt", version("docs/sub/b.txt", "b")),
    )
    assert set(tree(db, s1)) == {"docs", "docs/a.txt", "docs/sub", "docs/sub/b.txt"}
    s2 = commit(db, RenameRecord("docs", "papers"))
    after = tree(db, s2)
    assert set(after) == {"papers", "papers/a.txt", "papers/sub", "papers/sub/b.txt"}
    moved = db.version_by_id(after["papers/a.txt"][1])
    assert moved is not None and moved.path == f"{ROOT}/papers/a.txt"
    assert moved.chunks == a.chunks  # no data read or sent for a rename
    assert tree(db, s1) == tree(db, s1)  # the past is unchanged
    s3 = commit(db, RemovalRecord("papers"))
    assert tree(db, s3) == {}
    # A new folder with an old name starts empty.
    s4 = commit(db, EntryRecord("papers", TREE_DIR, 0o40755, T0))
    assert set(tree(db, s4)) == {"papers"}
    # Renaming over an existing file replaces it.
    s5 = commit(
        db,
        CutRecord("x", version("x", "x")),
        CutRecord("y", version("y", "y")),
        RenameRecord("x", "y"),
    )
    now = tree(db, s5)
    assert "x" not in now
    replaced = db.version_by_id(now["y"][1])
    assert replaced is not None and replaced.chunks == version("x", "x").chunks


def test_deleted_versions_disappear_from_the_tree(db: CatalogDB) -> None:
    s = commit(db, CutRecord("a", version("a", "a")), CutRecord("b", version("b", "b")))
    db.add_holders([(c, 7) for c in version("a", "a").chunks])
    report = db.delete_paths([f"{ROOT}/a"], known_nodes=[8])
    assert report.orphaned == sorted(version("a", "a").chunks)
    assert report.nodes == {7, 8}
    assert set(tree(db, s)) == {"b"}
    owed = db.tombstones()
    assert sorted(owed[7]) == sorted(owed[8]) == report.orphaned
    assert db.holders_many(report.orphaned) == {a: set() for a in report.orphaned}


def test_prune_keeps_what_kept_snapshots_need(db: CatalogDB) -> None:
    shared = version("shared", "same")
    old = version("f", "old")
    new = version("f", "new", complete_marker=1)
    s1 = commit(db, CutRecord("shared", shared), CutRecord("f", old), at=1)
    s2 = commit(db, CutRecord("f", new), at=2)
    s3 = commit(db, CutRecord("g", version("g", "g")), at=3)
    db.add_holders([(c, 5) for c in old.chunks + new.chunks])
    before = {s: tree(db, s) for s in (s2, s3)}
    report = db.prune([s1, s3], [], known_nodes=[6], now_ns=T0 + 10)
    assert report.snapshots_dropped == 1  # s3 is the newest: never dropped
    assert [s for s, _, _ in db.snapshots()] == [s2, s3]
    assert {s: tree(db, s) for s in (s2, s3)} == before
    assert db.version_by_id(old.file_id) is None
    assert report.versions_dropped == 1
    owed = db.tombstones()
    assert sorted(owed[5]) == sorted(owed[6]) == sorted(old.chunks)
    assert db.version_by_id(shared.file_id) is not None


def test_incomplete_versions_and_the_newest_snapshot_survive_pruning(db: CatalogDB) -> None:
    first = version("f", "one")
    s1 = commit(db, CutRecord("f", first), at=1)
    pending = version("p", "pending")
    sp = db.commit_tree(ROOT, [CutRecord("p", pending)], T0 + 2)  # never marked complete
    s2 = commit(db, CutRecord("f", version("f", "two", complete_marker=1)), RemovalRecord("p"))
    db.prune([s1, sp, s2], [], [], now_ns=T0 + 5)
    assert [s for s, _, _ in db.snapshots()] == [s2]  # the newest stays
    assert db.version_by_id(first.file_id) is None
    assert db.version_by_id(pending.file_id) is not None  # not yet safe: never pruned
    latest = db.latest(f"{ROOT}/f")
    assert latest is not None and latest.chunks == version("f", "two", complete_marker=1).chunks


def test_prune_of_backup_versions_keeps_the_newest(db: CatalogDB) -> None:
    for n in range(3):
        v = version(f"plain{n % 1}", f"c{n}", complete_marker=n)
        db.add_version(v, T0 + n)
        db.set_complete(v.file_id)
    rows = db.backup_versions()
    assert len(rows) == 3
    db.prune([], [vid for vid, _, _ in rows], [], now_ns=T0 + 10)
    assert [vid for vid, _, _ in db.backup_versions()] == [rows[-1][0]]


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_pruned_keep_every_kept_snapshot(db: CatalogDB, seed: int) -> None:
    """Whatever is pruned, every remaining snapshot shows exactly the tree it showed before."""
    rng = random.Random(seed)
    names = ["a", "b", "c", "d/e", "d/f", "g/h/i"]
    for step in range(60):
        changes: list[object] = []
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(names)
            roll = rng.random()
            if roll < 0.5:
                parts = name.split("/")
                for depth in range(1, len(parts)):
                    changes.append(EntryRecord("/".join(parts[:depth]), TREE_DIR, 0o40755, T0))
                changes.append(CutRecord(name, version(name, f"{step}-{rng.random()}", 10, step)))
            elif roll < 0.75:
                changes.append(RemovalRecord(name))
            else:
                changes.append(RenameRecord(name, rng.choice(names)))
        commit(db, *changes, at=step)
    seqs = [s for s, _, _ in db.snapshots()]
    before = {s: tree(db, s) for s in seqs}
    drop = {s for s in seqs if rng.random() < 0.7}
    db.prune(drop, [], [3], now_ns=T0 + 100)
    remaining = [s for s, _, _ in db.snapshots()]
    assert remaining[-1] == seqs[-1]
    for s in remaining:
        assert tree(db, s) == before[s], f"snapshot {s} changed (seed {seed})"
        for _path, (kind, fid) in before[s].items():
            if kind == TREE_FILE:
                assert db.version_by_id(fid) is not None
    # Every tombstoned chunk is used by no remaining version.
    live = {a for a, _ in db.live_addresses()}
    for addresses in db.tombstones().values():
        assert not live & set(addresses)


def test_tree_event_dataclass_defaults() -> None:
    assert TreeEvent("", "x", TREE_DIR).file_id == b""


def test_listing_stays_fast_with_many_files_and_snapshots(db: CatalogDB) -> None:
    """Folders are listed from the index, never by replaying the history: the work, counted in
    SQLite's virtual-machine steps (deterministic, unlike a stopwatch), follows the entries
    listed, not the snapshots taken."""
    db._db.execute("PRAGMA synchronous=OFF")  # building the history fast; not what is measured
    files = 20_000
    commit(db, EntryRecord("big", TREE_DIR, 0o40755, T0))
    commit(db, *[CutRecord(f"big/f{n:05}", version(f"big/f{n:05}", str(n))) for n in range(files)])
    for step in range(2_000):  # many snapshots, each changing a little
        name = f"big/f{step % files:05}"
        commit(db, CutRecord(name, version(name, f"v{step}", 10, step + 1)), at=step)
    seqs = [s for s, _, _ in db.snapshots()]
    assert len(seqs) == 2_002
    steps = [0]

    def tick() -> int:
        steps[0] += 1  # every 100 steps
        return 0

    for connection in (db._db, db._reader):
        connection.set_progress_handler(tick, 100)

    def cost(call: Callable[[], object]) -> int:
        before = steps[0]
        call()
        return (steps[0] - before) * 100

    first = cost(lambda: db.tree_children(ROOT, "big", seqs[1]))
    last = cost(lambda: db.tree_children(ROOT, "big", seqs[-1]))
    assert len(db.tree_children(ROOT, "big", seqs[-1])) == files
    assert first <= 100 * files and last <= 100 * files, (first, last)  # ~60 steps an entry
    assert last <= 1.5 * first  # 2,000 snapshots later, listing costs the same
    one = cost(lambda: db.tree_entry(ROOT, "big", "f00007", seqs[500]))
    assert one <= 5_000, one  # one entry is an index lookup, whatever the folder's size
    assert cost(lambda: db.snapshots(ROOT)) <= 20 * len(seqs)


def test_a_version_after_delete_is_recorded_again(db: CatalogDB) -> None:
    v = version("a.txt", "A")
    db.add_version(v, T0)
    db.set_complete(v.file_id)
    db.delete_paths([v.path], [2, 3])
    assert db.latest(v.path) is None
    db.add_version(v, T0 + 5)  # the same file backed up again after its delete
    again = db.latest(v.path)
    assert again == v
    assert [i.created_ns for i in db.versions_of(v.path)] == [T0 + 5]


def test_a_clock_stepped_back_never_puts_a_record_before_an_older_one(db: CatalogDB) -> None:
    a, b, c = version("r.txt", "A"), version("r.txt", "B"), version("s.txt", "C")
    db.add_version(a, T0 + 3600 * 10**9)  # the clock an hour ahead
    db.add_version(b, T0)  # set right: an hour back
    db.add_complete_versions([c], T0 - 5, [])
    times = [i.created_ns for i in db.versions_of(a.path)]
    assert times == [T0 + 3600 * 10**9, T0 + 3600 * 10**9 + 1]
    assert [i.created_ns for i in db.versions_of(c.path)] == [T0 + 3600 * 10**9 + 2]
    seq = db.commit_tree(ROOT, [CutRecord("t.txt", version("t.txt", "T"))], T0)
    assert db.snapshots(ROOT)[-1] == (seq, ROOT, T0 + 3600 * 10**9 + 3)
    # As of any moment, the newest version made by then: b, not a.
    assert [v.file_id for v in db.versions_at(a.path, T0 + 3600 * 10**9 + 1)] == [b.file_id]


def test_a_clock_floor_starts_from_what_an_older_catalog_holds(tmp_path: Path) -> None:
    first = CatalogDB(tmp_path / "c.sqlite3")
    first.add_version(version("r.txt", "A"), T0 + 10)
    with first._tx() as raw:  # a catalog from before the floor was kept
        raw.execute("DELETE FROM settings WHERE name='clock_floor_ns'")
    first.add_version(version("r.txt", "B"), T0)
    assert [i.created_ns for i in first.versions_of("/home/ann/data/r.txt")] == [T0 + 10, T0 + 11]
    first.close()


def test_a_mode_change_alone_is_a_new_version(db: CatalogDB) -> None:
    v = version("secret.txt", "S")
    first = db.add_version(v, T0)
    private = dataclasses.replace(v, mode=0o100600, ctime_ns=T0 + 1)
    second = db.add_version(private, T0 + 1)
    assert second != first
    latest = db.latest(v.path)
    assert latest is not None and latest.mode == 0o100600
    assert len(db.versions_of(v.path)) == 2
    owned = dataclasses.replace(private, uid=1000, ctime_ns=T0 + 2)
    assert db.add_version(owned, T0 + 2) not in (first, second)


def test_putting_an_older_version_back_is_a_new_version(db: CatalogDB) -> None:
    a, b = version("r.txt", "A"), version("r.txt", "B", complete_marker=1)
    db.add_version(a, T0)
    db.add_version(b, T0 + 1)
    db.add_version(a, T0 + 2)  # restored in place, same content, mtime and mode as the first
    latest = db.latest(a.path)
    assert latest is not None and latest.file_id == a.file_id
    assert [i.file_id for i in db.versions_of(a.path)] == [a.file_id, b.file_id, a.file_id]


def test_recording_the_same_version_twice_is_one_row(db: CatalogDB) -> None:
    v = version("same.txt", "S")
    first = db.add_version(v, T0)
    assert db.add_version(v, T0 + 1) == first
    touched = dataclasses.replace(v, ctime_ns=T0 + 9)  # nothing restorable changed
    assert db.add_version(touched, T0 + 2) == first
    latest = db.latest(v.path)
    assert latest is not None and latest.ctime_ns == T0 + 9
    assert len(db.versions_of(v.path)) == 1


def insert_old_row(
    db: sqlite3.Connection, vid: int, v: FileVersion, complete: int = 0, removed: int = 0
) -> None:
    """A version row with only the columns every catalog format had."""
    db.execute(
        "INSERT INTO versions(id, path, file_id, size, mode, uid, gid, mtime_ns, ctime_ns,"
        " degree, owner, created_ns, complete, removed) VALUES (?,?,?,?,?,0,0,?,?,2,1,?,?,?)",
        (vid, v.path, v.file_id, v.size, v.mode, v.mtime_ns, v.ctime_ns, T0, complete, removed),
    )
    db.executemany(
        "INSERT INTO version_chunks(version_id, no, address) VALUES (?,?,?)",
        [(vid, no, a) for no, a in enumerate(v.chunks)],
    )


def test_a_catalog_with_unique_file_ids_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        _SCHEMA.replace("file_id    BLOB    NOT NULL,", "file_id    BLOB    NOT NULL UNIQUE,")
    )
    v = version("old.txt", "O")
    insert_old_row(old, 7, v, complete=1, removed=1)
    old.execute("UPDATE sqlite_sequence SET seq=40 WHERE name='versions'")
    old.commit()
    old.close()
    db = CatalogDB(path)
    assert db.add_version(v, T0 + 1) == 41  # the removed row stays, ids are never reused
    assert db.latest(v.path) == v
    assert db.latest(v.path, include_removed=True) == v
    db.close()
    reopened = CatalogDB(path)
    assert len(reopened.versions_of(v.path)) == 1


def test_pending_among_names_only_chunks_an_unfinished_version_still_uses(db: CatalogDB) -> None:
    done = version("a.txt", "shared", size=10)
    waiting = dataclasses.replace(
        version("b.txt", "other", size=70_000), chunks=(done.chunks[0], address("only-b"))
    )
    gone = version("c.txt", "gone", size=10)
    for v in (done, waiting, gone):
        db.add_version(v, T0)
    db.set_complete(done.file_id)
    db.delete_paths([gone.path], [2])
    asked = [done.chunks[0], address("only-b"), gone.chunks[0], address("never")]
    # The shared chunk stays for b.txt; c.txt was deleted, so its chunk is not pending.
    assert db.pending_among(asked) == {done.chunks[0], address("only-b")}
    db.set_complete(waiting.file_id)
    assert db.pending_among(asked) == set()


def test_still_wanted_is_what_a_live_version_or_the_catalog_copy_uses(db: CatalogDB) -> None:
    kept = version("a.txt", "kept")
    deleted = version("b.txt", "deleted")
    for v in (kept, deleted):
        db.add_version(v, T0)
    db.set_catalog_chunks([address("catalog copy")])
    db.delete_paths([deleted.path], [2])  # its chunk gets a delete owed to node 2
    asked = [kept.chunks[0], deleted.chunks[0], address("catalog copy"), address("never")]
    assert db.still_wanted(asked) == {kept.chunks[0], address("catalog copy")}


def test_a_catalog_from_before_links_and_xattrs_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    schema = (
        _SCHEMA.replace(
            "inode      INTEGER NOT NULL DEFAULT 0,  -- the file a mount cut it from (0: unknown)",
            "inode      INTEGER NOT NULL DEFAULT 0",
        )
        .replace("    xattrs     BLOB    NOT NULL DEFAULT x'',  -- extended attributes", "--")
        .replace("    link       INTEGER NOT NULL DEFAULT 0   -- equal for hard links", "--")
        .replace("time_ns  INTEGER NOT NULL,\n    xattrs   BLOB", "time_ns  INTEGER NOT NULL\n--")
    )
    old = sqlite3.connect(path)
    old.executescript(schema)
    columns = {row[1] for row in old.execute("PRAGMA table_info(versions)")}
    assert "xattrs" not in columns and "link" not in columns
    v = version("old.txt", "O")
    insert_old_row(old, 1, v)
    old.commit()
    old.close()
    db = CatalogDB(path)
    assert db.latest(v.path) == v  # no attributes, link unknown
    tagged = dataclasses.replace(v, xattrs=(("user.a", b"1"),), link=99)
    db.add_version(tagged, T0 + 1)  # only the attributes differ: a new version
    assert db.latest(v.path) == tagged and len(db.versions_of(v.path)) == 2
    db.commit_tree("/root", [EntryRecord("d", TREE_DIR, 0o40755, T0, "", (("user.k", b"v"),))], T0)
    seq = db.latest_seq("/root")
    entry = db.tree_entry("/root", "", "d", seq)
    assert entry is not None and entry.xattrs == (("user.k", b"v"),)
    db.commit_tree("/root", [AttrRecord("d", 0o40700, T0, ())], T0 + 1)
    entry = db.tree_entry("/root", "", "d", db.latest_seq("/root"))
    assert entry is not None and (entry.mode, entry.xattrs) == (0o40700, ())
    entry = db.tree_entry("/root", "", "d", seq)  # the earlier snapshot keeps its own
    assert entry is not None and entry.xattrs == (("user.k", b"v"),)
    db.close()


def test_latest_many_is_latest_for_each_path(db: CatalogDB) -> None:
    """The batched lookup a backup makes for every file agrees with the one-path lookup: the
    newest version, not an older one, nothing for a path gone or deleted, chunks in order."""
    rng = random.Random(7)
    paths = [f"{ROOT}/f{n}" for n in range(700)]  # more than one batch of 500
    marked: set[bytes] = set()
    for n, path in enumerate(paths):
        for k in range(rng.randint(1, 3)):
            v = version(path.removeprefix(ROOT + "/"), f"{n}.{k}", rng.randint(0, 300_000), k)
            db.add_version(v, T0 + k)
            if rng.random() < 0.5:
                db.set_complete(v.file_id)
                marked.add(v.file_id)
    db.record_absent(paths[10:20], T0 + 10)
    db.delete_paths(paths[20:25], [2, 3])
    asked = [*paths, f"{ROOT}/never"]
    found = db.latest_many(asked)
    one_by_one = {p: db.latest(p) for p in asked}
    assert {p: v for p, (v, _complete) in found.items()} == {
        p: v for p, v in one_by_one.items() if v is not None
    }
    assert len(found) == 700 - 15
    assert all(complete == (v.file_id in marked) for v, complete in found.values())


def test_the_state_listing_is_the_newest_version_of_every_file(db: CatalogDB) -> None:
    """The plain rows ``state`` lists agree with the version objects: newest versions only,
    folders left out, paths gone or deleted left out, chunks in order, completeness."""
    rng = random.Random(11)
    paths = [f"{ROOT}/f{n}" for n in range(300)]
    for n, path in enumerate(paths):
        for k in range(rng.randint(1, 3)):
            v = version(path.removeprefix(ROOT + "/"), f"{n}.{k}", rng.randint(0, 300_000), k)
            db.add_version(v, T0 + k)
            if rng.random() < 0.5:
                db.set_complete(v.file_id)
    folder = dataclasses.replace(version("d", "d", 0), mode=0o040755)
    db.add_version(folder, T0)
    db.record_absent(paths[10:20], T0 + 10)
    db.delete_paths(paths[20:25], [2, 3])
    expected = [
        (v.path, v.file_id, v.size, v.degree, complete, list(v.chunks))
        for v, complete in db.latest_versions("")
        if v.mode != folder.mode
    ]
    announced: list[list[bytes]] = []
    assert [tuple(f) for f in db.latest_files(announced.append)] == expected
    assert len(expected) == 300 - 15
    # Every chunk of the listing was announced first, each once (the peers are asked while
    # the rows are read): the folder's chunks too, which the listing leaves out.
    [addresses] = announced
    assert len(addresses) == len(set(addresses))
    assert {a for f in expected for a in f[5]} <= set(addresses)
    assert set(addresses) - {a for f in expected for a in f[5]} <= set(folder.chunks)
    assert f"{ROOT}/d" in {v.path for v, _ in db.latest_versions("")}


def test_backup_runs_of_a_path_are_its_own_those_inside_and_those_above(db: CatalogDB) -> None:
    roots = ["/home/a", "/home/a/docs", "/home/ab", "/home", "/srv/x_y"]
    for n, root in enumerate(roots):
        db.add_backup_run(BackupRun(0, root, n, n + 1, 3, 1, 1, 0, 10, 5, "complete"))

    def listed(prefix: str) -> list[str]:
        return [run.root for run in db.backup_runs(prefix)]

    assert listed("") == roots
    assert listed("/home/a") == ["/home/a", "/home/a/docs", "/home"]
    assert listed("/home/a/docs/f.txt") == ["/home/a", "/home/a/docs", "/home"]
    assert listed("/home/ab") == ["/home/ab", "/home"]  # not /home/a's
    assert listed("/srv/xay") == []  # '_' is not a wildcard
    assert [r.id for r in db.backup_runs("")] == [1, 2, 3, 4, 5]


def _rows(db: CatalogDB) -> list[tuple[object, ...]]:
    with db._reading() as conn:
        versions = conn.execute(
            "SELECT id, path, file_id, size, mode, uid, ctime_ns, degree, complete, removed"
            " FROM versions ORDER BY id"
        ).fetchall()
        chunks = conn.execute(
            "SELECT version_id, no, address FROM version_chunks ORDER BY version_id, no"
        ).fetchall()
    return [*versions, *chunks]


@pytest.mark.parametrize("seed", range(30))
def test_recording_complete_versions_as_a_batch_is_recording_them_one_by_one(
    tmp_path: Path, seed: int
) -> None:
    """``add_complete_versions`` writes the rows that recording each version and marking it
    complete would: same ids, same chunk rows, the same row reused for a version recorded
    again (new ctime or degree noted on it), a new one after a delete or a chmod."""
    rng = random.Random(seed)
    batched, single = CatalogDB(tmp_path / "a.sqlite3"), CatalogDB(tmp_path / "b.sqlite3")
    names = [f"f{n}.txt" for n in range(6)]
    for step in range(12):
        batch: list[FileVersion] = []
        for name in rng.sample(names, rng.randint(0, len(names))):
            size = rng.choice([0, 10, 70_000, 140_000])
            v = version(name, rng.choice("AB"), size=size)
            v = dataclasses.replace(
                v,
                mode=rng.choice([0o100644, 0o100600]),
                ctime_ns=T0 + rng.randint(0, 2),
                degree=rng.choice([2, 3]),
            )
            batch.append(v)
        if rng.random() < 0.2 and batch:
            batch.append(batch[0])  # one path twice in a batch
        now = T0 + step
        holders = [(a, 2) for v in batch for a in v.chunks]
        batched.add_complete_versions(batch, now, holders, now)
        with single._tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO holders(address, node) VALUES (?,?)", holders)
            for v in batch:
                vid = CatalogDB._insert_version(conn, v, now, 0)
                conn.execute("UPDATE versions SET complete=1 WHERE id=?", (vid,))
        if rng.random() < 0.2:
            gone = [f"{ROOT}/{rng.choice(names)}"]
            batched.delete_paths(gone, [2])
            single.delete_paths(gone, [2])
        assert _rows(batched) == _rows(single)


@pytest.mark.parametrize("leftover", ["junk", "junk and a journal", "an older copy"])
def test_a_copy_replaces_what_an_interrupted_one_left_and_stands_on_its_own(
    db: CatalogDB, tmp_path: Path, leftover: str
) -> None:
    """The copy for the peers is a scratch file: whatever a crash left at its path (a torn
    file, a journal beside it, an older copy) is replaced, never an error forever after; the
    copy opens without the catalog's WAL and holds every row."""
    db.add_version(version("a.txt", "a"), T0)
    copy = tmp_path / "catalog.sqlite3.peers-copy"
    if leftover == "an older copy":
        db.copy_to(copy)
    else:
        copy.write_bytes(random.Random(1).randbytes(9000))
        if "journal" in leftover:
            Path(f"{copy}-journal").write_bytes(random.Random(2).randbytes(5000))
    db.add_version(version("b.txt", "b"), T0 + 1)
    db.copy_to(copy)
    assert not Path(f"{copy}-journal").exists()
    check = sqlite3.connect(copy)
    try:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        paths = {p for (p,) in check.execute("SELECT path FROM versions")}
    finally:
        check.close()
    assert paths == {f"{ROOT}/a.txt", f"{ROOT}/b.txt"}


def test_the_copys_own_record_stays_out_of_the_copy_and_an_old_catalogs_moves_over(
    tmp_path: Path,
) -> None:
    """Catalogs before the copy's database of its own kept the copy's chunks and their
    holders in the catalog: opened now, both are where the copy's record is, the old table
    is gone, and a copy of the catalog carries none of it."""
    path = tmp_path / "catalog.sqlite3"
    db = CatalogDB(path)
    db.add_holders([(address("file chunk"), 2)])
    db.close()
    old = sqlite3.connect(path)  # as an older lanvault left it
    old.execute("CREATE TABLE catalog_chunks (address BLOB PRIMARY KEY) WITHOUT ROWID")
    old.executemany(
        "INSERT INTO catalog_chunks VALUES (?)", [(address("copy 1"),), (address("copy 2"),)]
    )
    old.executemany(
        "INSERT INTO holders VALUES (?, ?)",
        [(address("copy 1"), 3), (address("copy 1"), 4), (address("copy 2"), 3)],
    )
    old.commit()
    old.close()
    db = CatalogDB(path)
    assert db.catalog_chunks() == {address("copy 1"), address("copy 2")}
    wanted = [address("copy 1"), address("copy 2"), address("file chunk")]
    assert db.holders_many(wanted) == {
        address("copy 1"): {3, 4},
        address("copy 2"): {3},
        address("file chunk"): {2},
    }
    db.add_copy_holders([(address("copy 2"), 4)])
    assert db.holders(address("copy 2")) == {3, 4}
    # The next copy: "copy 1" no longer in it, its holders' rows go with its deletes.
    assert db.set_catalog_chunks([address("copy 2"), address("copy 3")]) == [address("copy 1")]
    assert db.schedule_deletes([address("copy 1")], [2, 3, 4]) == {2, 3, 4}
    assert db.holders(address("copy 1")) == set()
    db.drop_holders([(address("copy 2"), 3)])
    assert db.holders(address("copy 2")) == {4}
    copy = tmp_path / "copy.sqlite3"
    db.copy_to(copy)
    db.close()
    check = sqlite3.connect(copy)
    try:
        tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master")}
        rows = {bytes(r[0]) for r in check.execute("SELECT address FROM holders")}
    finally:
        check.close()
    assert "catalog_chunks" not in tables and "catalog_holders" not in tables
    assert rows == {address("file chunk")}
