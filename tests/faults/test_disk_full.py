"""Scenario 4: a holder's disk fills up while backups go on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.system.procs import ProcessCluster

from .conftest import ScenarioRun
from .helpers import (
    bytes_moved,
    copies_on_holders,
    fill_disk,
    peak_rss_mb,
    same_tree,
    seconds_until,
    tmpfs,
    write_tree,
)

pytestmark = [pytest.mark.slow, pytest.mark.scenario("disk-full")]


def refusals(cluster: ProcessCluster, holder: int) -> int:
    """Copies the owner (node 1) saw refused by ``holder``, from its log."""
    text = cluster.nodes[1].log.read_text()
    return sum(
        1
        for line in text.splitlines()
        if f"to node {holder} failed" in line or f"node {holder} refused" in line
    )


def test_a_holder_whose_disk_fills_takes_what_it_can_and_says_so(
    run: ScenarioRun, tmp_path: Path
) -> None:
    net = tmp_path / "net"
    size = run.size(60, 200) * 1_000_000
    cluster = ProcessCluster(net, 4, gone_after="6s")
    with tmpfs(net / "n3" / "store", "400m") as disk:
        try:
            cluster.start_all()
            trees = []
            for name, share in (("first", 1), ("second", 2), ("third", 1)):
                tree = tmp_path / name
                write_tree(tree, run.rng, size * share // 2, 6 * share)
                trees.append(tree)
            cluster.cli(1, "backup", trees[0], "--degree", "2", timeout=600)
            # Other files fill node 3's disk (2 MB left) while the next backup sends chunks.
            filler = threading.Thread(target=fill_disk, args=(disk, 2_000_000))
            filler.start()
            second = cluster.cli(1, "backup", trees[1], "--degree", "2", timeout=600)
            filler.join()
            assert "backed up" in second.stdout

            # The full holder says what it can really take, not its whole quota.
            # (measured at most once a second, then heard by the owner at the next heartbeat)
            def own() -> dict[str, object]:
                return next(n for n in cluster.json(3, "status")["nodes"] if n.get("self"))

            cluster.wait(lambda: own()["free_bytes"] == 0, 10, "node 3 advertises no room")
            assert own()["disk_full"], own()
            assert "this node's disk has room for" in cluster.cli(3, "status").stdout

            def seen() -> dict[str, object]:
                return next(n for n in cluster.json(1, "status")["nodes"] if n["id"] == 3)

            cluster.wait(lambda: seen()["free_bytes"] == 0, 10, "the owner hears it")
            refused = refusals(cluster, 3)
            # The owner now knows: a third backup aims nothing at node 3.
            cluster.cli(1, "backup", trees[2], "--degree", "2", timeout=600)
            assert refusals(cluster, 3) == refused
            run.figure("copies node 3 refused", refused)
            run.figure(
                "time to degree 2",
                seconds_until(
                    lambda: min(copies_on_holders(cluster, 1).values()) >= 2,
                    120,
                    "every chunk on two holders",
                ),
                "s",
            )
            for tree in trees:
                out = tmp_path / "out" / tree.name
                cluster.cli(1, "restore", tree, "--to", out, timeout=600)
                assert same_tree(tree, out)
            lines = cluster.nodes[3].log.read_text().splitlines()
            full_lines = [line for line in lines if "No space" in line or "full" in line]
            run.figure("disk-full lines logged", len(full_lines))
            # One line when it filled, never one per batch. (A copy may come to it from a
            # repairing holder, or in a batch whose refused items the owner does not log: the
            # owner's count is a lower bound of what node 3 refused.)
            assert len(full_lines) <= 1, "\n".join(full_lines[:20])
            assert len(full_lines) == 1 or not refused, (refused, full_lines)
            run.figure("peak RSS of the owner", peak_rss_mb(cluster, 1), "MB")
            run.figure("bytes moved", bytes_moved(cluster) / 1e6, "MB")
        finally:
            cluster.stop_all()
        cluster.assert_no_tracebacks()
