"""Scenario 7: a random holder killed or restarted every few seconds under backups."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.system.procs import ProcessCluster, lanvault

from .conftest import ScenarioRun
from .helpers import copies_on_holders, peak_rss_mb, running, same_tree, seconds_until, write_tree

pytestmark = [pytest.mark.slow, pytest.mark.scenario("thrashing")]


class Backups:
    """Backs up a tree again and again, changing one of its files before each run."""

    def __init__(self, cluster: ProcessCluster, tree: Path, run: ScenarioRun) -> None:
        self.cluster, self.tree, self.rng = cluster, tree, run.rng.randbytes
        self.done = 0
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop)

    def loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            (self.tree / f"changing-{n % 5}.bin").write_bytes(self.rng(2_000_000))
            result = lanvault(
                "backup", self.tree, "--degree", "2", "--dir", self.cluster.nodes[1].state,
                check=False, timeout=600,
            )  # fmt: skip
            if result.returncode == 0:
                self.done += 1
            else:
                self.failed.append(result.stderr.strip())
            n += 1


def test_thrashing_holders_under_backups_end_at_exactly_their_degree(
    run: ScenarioRun, tmp_path: Path
) -> None:
    length = run.size(45, 600)
    with running(tmp_path / "net", 5, "4s") as cluster:
        tree = tmp_path / "tree"
        write_tree(tree, run.rng, run.size(20, 200) * 1_000_000, 10)
        backups = Backups(cluster, tree, run)
        backups.thread.start()
        end = time.monotonic() + length
        down: int | None = None
        events = 0
        while time.monotonic() < end:
            time.sleep(run.rng.uniform(2, 5))
            if down is not None:
                cluster.start(down)  # keep every chunk with a live copy: one down at a time
                down = None
            elif run.rng.random() < 0.7:
                down = run.rng.choice([2, 3, 4, 5])
                cluster.kill(down)
            events += 1
        if down is not None:
            cluster.start(down)
        backups.stop.set()
        backups.thread.join(600)
        run.figure("kills and restarts", events)
        run.figure("backups that succeeded", backups.done)
        run.figure("backups that failed", len(backups.failed))
        assert backups.failed == [], backups.failed[:3]
        assert backups.done >= 3
        cluster.wait_mesh(60)
        run.figure(
            "time to exactly degree 2 after the last event",
            seconds_until(
                lambda: set(copies_on_holders(cluster, 1).values()) == {2}, 360, "degree 2"
            ),
            "s",
        )
        out = tmp_path / "out"
        cluster.cli(1, "restore", tree, "--to", out, timeout=600)
        assert same_tree(tree, out)
        run.figure("peak RSS of the owner", peak_rss_mb(cluster, 1), "MB")
