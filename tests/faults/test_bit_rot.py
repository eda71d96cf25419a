"""Scenario 8: bit rot on a holder: flipped, truncated, emptied, deleted and swapped copies."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from chunkstore.segments import RECORD_HEADER

from .conftest import ScenarioRun
from .helpers import copies_on_holders, running, same_tree, seconds_until, write_tree

pytestmark = [pytest.mark.slow, pytest.mark.scenario("bit-rot")]


def records(store: Path, owner: int) -> list[tuple[bytes, int, int, int]]:
    """(address, segment, offset, record size) of ``owner``'s chunks, by place on disk."""
    with sqlite3.connect(store / "index.sqlite3") as db:
        rows = db.execute(
            "SELECT address, segment, offset, length FROM chunks WHERE owner=?"
            " ORDER BY segment, offset",
            (owner,),
        ).fetchall()
    return [(bytes(a), int(s), int(o), RECORD_HEADER.size + int(n)) for a, s, o, n in rows]


def segment_path(store: Path, number: int) -> Path:
    return store / "segments" / f"{number:08d}.seg"


def damage(store: Path, run: ScenarioRun) -> set[bytes]:
    """Damage owner 1's copies on a stopped holder in five ways; the addresses damaged."""
    held = records(store, 1)
    segments = sorted({s for _a, s, _o, _n in held})
    assert len(segments) >= 2, "the holder was restarted between backups: two segments"
    damaged: set[bytes] = set()
    # Delete: the smaller segment goes, with every copy in it.
    doomed = min(segments, key=lambda s: sum(1 for r in held if r[1] == s))
    damaged |= {a for a, s, _o, _n in held if s == doomed}
    segment_path(store, doomed).unlink()
    rest = [r for r in held if r[1] != doomed]
    last_segment = max(s for _a, s, _o, _n in rest)
    in_last = [r for r in rest if r[1] == last_segment]
    # Truncate: the segment's last record loses its second half.
    address, segment, offset, size = in_last[-1]
    os.truncate(segment_path(store, segment), offset + size // 2)
    damaged.add(address)
    candidates = [r for r in rest if r[0] != address]
    same_size = [r for r in candidates if r[3] == max(c[3] for c in candidates)]
    picked = run.rng.sample(same_size, 4)
    # Flip one byte of a body; empty (zero) a whole record; swap two records.
    flip, empty, swap_a, swap_b = picked
    damaged |= {r[0] for r in picked}
    with open(segment_path(store, flip[1]), "r+b") as handle:
        position = flip[2] + RECORD_HEADER.size + run.rng.randrange(flip[3] - RECORD_HEADER.size)
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ (1 << run.rng.randrange(8))]))
    with open(segment_path(store, empty[1]), "r+b") as handle:
        handle.seek(empty[2])
        handle.write(bytes(empty[3]))
    with open(segment_path(store, swap_a[1]), "r+b") as a_file:
        a_file.seek(swap_a[2])
        a_bytes = a_file.read(swap_a[3])
        with open(segment_path(store, swap_b[1]), "r+b") as b_file:
            b_file.seek(swap_b[2])
            b_bytes = b_file.read(swap_b[3])
            b_file.seek(swap_b[2])
            b_file.write(a_bytes)
        a_file.seek(swap_a[2])
        a_file.write(b_bytes)
    return damaged


def test_one_check_finds_every_damaged_copy_and_repair_restores_the_degree(
    run: ScenarioRun, tmp_path: Path
) -> None:
    size = run.size(24, 200) * 1_000_000
    with running(tmp_path / "net", 4, "60s") as cluster:
        trees = [tmp_path / "first", tmp_path / "second"]
        write_tree(trees[0], run.rng, size, 8)
        write_tree(trees[1], run.rng, size // 3, 4)
        cluster.cli(1, "backup", trees[0], "--degree", "2", timeout=600)
        holder = max((2, 3, 4), key=lambda n: cluster.json(n, "state")["used_bytes"])
        cluster.stop(holder)
        cluster.start(holder)  # a new segment for what comes next
        cluster.wait_mesh()
        cluster.cli(1, "backup", trees[1], "--degree", "2", timeout=600)
        cluster.stop(holder)
        damaged = damage(cluster.nodes[holder].state / "store", run)
        run.figure("copies damaged", len(damaged))
        cluster.start(holder)
        cluster.wait_mesh()
        # The holder's own check names every damaged copy: those it still lists, and those a
        # read (a peer's, since its restart) found and dropped before the check came.
        own = json.loads(cluster.cli(holder, "check", "--json", check=False).stdout)
        listed = own["store_bad_copies"] + own["bad_copies_found_before"]["recent"]
        named = {line.split(":")[1].split()[0] for line in listed}
        assert named == {a.hex() for a in damaged}, own
        # One read of every copy from the owner finds all of them, nothing else.
        read = cluster.cli(1, "check", "--read-data", "--json", check=False, timeout=600)
        assert read.returncode == 1, read.stderr
        lines = json.loads(read.stdout)["read_data_bad_copies"]
        found = {line.split("chunk ")[1][:16] for line in lines}
        assert all(line.startswith(f"node {holder}: ") for line in lines), lines
        assert found == {a.hex()[:16] for a in damaged}, lines
        run.figure("damaged copies found by one read", 100 * len(found) / len(damaged), "%")
        # The holder dropped what the read found damaged, and the network makes those copies
        # again by itself; a repair deletes whatever is still bad and makes what is missing.
        repaired = cluster.json(1, "check", "--read-data", "--repair")
        run.figure("copies the repair made", repaired["read_data_copies_made"])
        run.figure(
            "time to exactly degree 2",
            seconds_until(
                lambda: set(copies_on_holders(cluster, 1).values()) == {2}, 120, "degree 2"
            ),
            "s",
        )
        clean = cluster.json(1, "check", "--read-data")
        assert clean["read_data_bad_copies"] == [] and clean["read_data_unreadable_copies"] == 0
        # The holder says what it found and dropped, in status, check and its log.
        cluster.wait(
            lambda: cluster.json(holder, "status")["bad_copies_found"]["total"] == len(damaged),
            30,
            "the holder's status counts them",
        )
        assert "bad copies found here and dropped: " in cluster.cli(holder, "status").stdout
        later = cluster.json(holder, "check")
        assert later["store_bad_copies"] == []
        assert later["bad_copies_found_before"]["total"] == len(damaged)
        assert "bad copies found by reads and dropped" in cluster.nodes[holder].log.read_text()
        for tree in trees:
            out = tmp_path / "out" / tree.name
            cluster.cli(1, "restore", tree, "--to", out, timeout=600)
            assert same_tree(tree, out)
