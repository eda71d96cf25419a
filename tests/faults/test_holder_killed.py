"""Scenario 1: a holder killed -9 in the middle of a backup, restarted after a pause."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.system.procs import start_lanvault

from .conftest import ScenarioRun
from .helpers import bytes_moved, copies_on_holders, peak_rss_mb, running, same_tree, write_tree

pytestmark = [pytest.mark.slow, pytest.mark.scenario("holder-killed")]


def test_a_holder_killed_mid_backup_costs_nothing(run: ScenarioRun, tmp_path: Path) -> None:
    size = run.size(100, 1024) * 2**20
    pause = run.size(8, 30)
    with running(tmp_path / "net", 4, "6s") as cluster:
        src = tmp_path / "src"
        write_tree(src, run.rng, size, run.size(20, 64))
        victim = run.rng.choice([2, 3, 4])
        backup = start_lanvault("backup", src, "--degree", "2", "--dir", cluster.nodes[1].state)
        # Kill it once it holds part of this backup (a seeded share of its first megabytes).
        threshold = run.rng.randrange(1, 8) * 1_000_000
        cluster.wait(
            lambda: cluster.json(victim, "state")["used_bytes"] > threshold, 300, "victim fed"
        )
        cluster.kill(victim)
        killed_at = time.monotonic()
        out, err = backup.communicate(timeout=1800)
        assert backup.returncode == 0 and "backed up" in out, err
        run.figure("backup time with a holder killed", time.monotonic() - killed_at, "s")
        # Every chunk on two running holders' stores (the victim's copies made again).
        cluster.wait(
            lambda: min(copies_on_holders(cluster, 1).values()) >= 2, 300, "degree 2 without it"
        )
        run.figure("time back to degree 2 without it", time.monotonic() - killed_at, "s")
        time.sleep(max(0.0, pause - (time.monotonic() - killed_at)))
        cluster.start(victim)
        back = time.monotonic()
        # It returns with copies made again meanwhile: trimmed to exactly degree 2.
        cluster.wait(
            lambda: set(copies_on_holders(cluster, 1).values()) == {2}, 300, "exactly degree 2"
        )
        run.figure("time to exactly degree 2 after its return", time.monotonic() - back, "s")
        out_dir = tmp_path / "out"
        cluster.cli(1, "restore", src, "--to", out_dir, timeout=1800)
        assert same_tree(src, out_dir)
        report = cluster.json(victim, "check")
        assert report["store_bad_copies"] == [] and report["store_chunks_verified"] > 0, report
        run.figure("peak RSS of the owner", peak_rss_mb(cluster, 1), "MB")
        run.figure("bytes moved", bytes_moved(cluster) / 1e6, "MB")
