"""Scenario 9: reclaiming space during a backup, with nowhere to go, and a node gone for good."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.system.procs import ProcessCluster, start_lanvault

from .conftest import ScenarioRun
from .helpers import copies_on_holders, running, same_tree, seconds_until, write_tree

pytestmark = [pytest.mark.slow, pytest.mark.scenario("reclaim")]


def used(cluster: ProcessCluster, node_id: int) -> int:
    return int(cluster.json(node_id, "state")["used_bytes"])


def test_reclaim_during_a_backup_ends_within_the_new_quota(
    run: ScenarioRun, tmp_path: Path
) -> None:
    size = run.size(40, 400) * 1_000_000
    with running(tmp_path / "net", 4, "60s") as cluster:
        trees = [tmp_path / "first", tmp_path / "second"]
        write_tree(trees[0], run.rng, size, 10)
        write_tree(trees[1], run.rng, size, 10)
        cluster.cli(1, "backup", trees[0], "--degree", "2", timeout=1200)
        holder = max((2, 3, 4), key=lambda n: used(cluster, n))
        half = used(cluster, holder) // 2
        backup = start_lanvault(
            "backup", trees[1], "--degree", "2", "--dir", cluster.nodes[1].state
        )
        cluster.wait(lambda: used(cluster, holder) > half * 2 + 1_000_000, 120, "the backup")
        started = time.monotonic()
        out = cluster.json(holder, "reclaim", str(half))
        took = time.monotonic() - started
        run.figure("reclaim rate", out["freed_bytes"] / 1e6 / took, "MB/s")
        assert out["kept"] == 0, out
        _out, err = backup.communicate(timeout=1200)
        assert backup.returncode == 0, err
        # Chunks stored while it reclaimed are dropped too: the node ends within its quota.
        assert used(cluster, holder) <= half, (used(cluster, holder), half)
        run.figure(
            "time to exactly degree 2",
            seconds_until(
                lambda: set(copies_on_holders(cluster, 1).values()) == {2}, 120, "degree 2"
            ),
            "s",
        )
        assert used(cluster, holder) <= half
        for tree in trees:
            dest = tmp_path / "out" / tree.name
            cluster.cli(1, "restore", tree, "--to", dest, timeout=1200)
            assert same_tree(tree, dest)


def test_reclaim_with_nowhere_to_go_says_so_and_finishes_later(
    run: ScenarioRun, tmp_path: Path
) -> None:
    with running(tmp_path / "net", 4, "600s") as cluster:
        src = tmp_path / "src"
        write_tree(src, run.rng, run.size(8, 80) * 1_000_000, 6)
        cluster.cli(1, "backup", src, "--degree", "2")
        holder, *others = run.rng.sample([2, 3, 4], 3)
        for other in others:
            cluster.stop(other)
        # Only the owner's node is up besides it: degree-2 chunks have nowhere to go.
        result = cluster.cli(holder, "reclaim", "0", "--json", check=False, timeout=300)
        assert result.returncode == 1, result.stderr
        out = json.loads(result.stdout)
        assert out["kept"] > 0 and out["kept_bytes"] > 0 and out["capacity_bytes"] == 0, out
        human = cluster.cli(holder, "reclaim", "0", check=False, timeout=300)
        assert re.search(
            r"(is|are) kept here for now: no other computer could take a copy", human.stdout
        )
        # It kept exactly what it says (nothing dropped without its copies elsewhere).
        assert len(cluster.json(holder, "state")["stored"]) == out["kept"]
        assert re.search(
            r"chunks? over its quota wait for another computer",
            cluster.cli(holder, "status").stdout,
        )
        for other in others:
            cluster.start(other)
        run.figure(
            "time to move the kept chunks once the others return",
            seconds_until(lambda: cluster.json(holder, "state")["stored"] == [], 120, "moved"),
            "s",
        )
        cluster.wait(lambda: min(copies_on_holders(cluster, 1).values()) >= 2, 60, "degree 2")
        dest = tmp_path / "out"
        cluster.cli(1, "restore", src, "--to", dest)
        assert same_tree(src, dest)


def test_a_node_whose_directory_is_deleted_is_repaired_around(
    run: ScenarioRun, tmp_path: Path
) -> None:
    with running(tmp_path / "net", 4, "6s") as cluster:
        src = tmp_path / "src"
        write_tree(src, run.rng, run.size(30, 300) * 1_000_000, 8)
        cluster.cli(1, "backup", src, "--degree", "2", timeout=1200)
        victim = run.rng.choice([2, 3, 4])
        cluster.kill(victim)
        shutil.rmtree(cluster.nodes[victim].state)
        del cluster.nodes[victim]
        run.figure(
            "time back to degree 2 without it",
            seconds_until(
                lambda: min(copies_on_holders(cluster, 1).values()) >= 2, 300, "degree 2"
            ),
            "s",
        )
        dest = tmp_path / "out"
        cluster.cli(1, "restore", src, "--to", dest, timeout=1200)
        assert same_tree(src, dest)
