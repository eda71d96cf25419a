"""Scenario 13: ten nodes on five computers (network namespaces on a bridge, each link shaped
with ``tc tbf``), a backup at degree 3: how evenly placement spreads it, the restore, then one
computer lost for good (both its nodes killed, their directories deleted) and repaired."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.system.netns import Lan, netns_available, sweep_stale
from tests.system.procs import ProcessCluster

from .conftest import ScenarioRun
from .helpers import copies_on_holders, same_tree, seconds_until, write_tree

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.scenario("ten-nodes")]

COMPUTERS = 5
NODES = 10
FAIR_WITHIN = 0.25  # every eligible node within 25 % of its fair share


def held_by_node(cluster: ProcessCluster, owner: int) -> dict[int, int]:
    """Bytes of ``owner``'s chunks each running node holds (its own store, as it says)."""
    return {
        node_id: sum(
            held["size"]
            for held in cluster.json(node_id, "state")["stored"]
            if held["owner"] == owner
        )
        for node_id in cluster.running()
    }


def computers_holding(cluster: ProcessCluster, owner: int) -> Counter[str]:
    """For each chunk of ``owner``'s files, on how many distinct computers a running holder
    has it (the copy of its catalog, at the default degree, is not counted)."""
    files = cluster.json(owner, "state")["files"]
    where: dict[str, set[str]] = {c["chunk"]: set() for f in files for c in f["chunks"]}
    for node_id in cluster.running():
        for held in cluster.json(node_id, "state")["stored"]:
            if held["owner"] == owner and held["chunk"] in where:
                where[held["chunk"]].add(str(cluster.nodes[node_id].host))
    return Counter({chunk: len(hosts) for chunk, hosts in where.items()})


def test_ten_nodes_on_five_computers_spread_evenly_and_survive_a_lost_computer(
    run: ScenarioRun, tmp_path: Path
) -> None:
    why = netns_available()
    if why:
        pytest.skip(why)
    sweep_stale()
    lan = Lan(tag=f"{os.getpid() % 1000}", subnet=os.getpid() % 200 + 20)
    lan.create(COMPUTERS)
    rate = "1gbit"
    for computer in range(COMPUTERS):
        lan.shape(computer, rate)
    where = [index % COMPUTERS for index in range(NODES)]  # nodes 1 and 6 on computer 0, ...
    cluster = ProcessCluster.on_lan(tmp_path / "net", lan, where, "8s")
    try:
        for node_id in cluster.nodes:
            cluster.start(node_id)
        cluster.wait_mesh(120)
        size = run.size(120, 2048) * 2**20
        src = tmp_path / "src"
        write_tree(src, run.rng, size, run.size(24, 64))
        started = time.monotonic()
        cluster.cli(1, "backup", src, "--degree", "3", timeout=7200)
        run.figure("backup rate at degree 3", size / 1e6 / (time.monotonic() - started), "MB/s")
        # Placement: never on the owner's computer; every other node within 25 % of its fair
        # share (equal quotas and disks: an equal part of what was stored).
        owners_computer = {n for n, node in cluster.nodes.items() if node.host == "computer-0"}
        held = held_by_node(cluster, 1)
        assert all(held[n] == 0 for n in owners_computer), held
        eligible = {n: b for n, b in held.items() if n not in owners_computer}
        fair = sum(eligible.values()) / len(eligible)
        spread = max(abs(b - fair) / fair for b in eligible.values())
        run.figure("largest departure from the fair share", 100 * spread, "%")
        assert spread <= FAIR_WITHIN, (fair, eligible)
        assert set(computers_holding(cluster, 1).values()) == {3}  # three computers each
        started = time.monotonic()
        cluster.cli(1, "restore", src, "--to", tmp_path / "out", timeout=7200)
        run.figure("restore rate", size / 1e6 / (time.monotonic() - started), "MB/s")
        assert same_tree(src, tmp_path / "out")
        # One computer lost for good: both its nodes killed, their directories gone.
        lost = run.rng.randrange(1, COMPUTERS)
        for node_id, node in cluster.nodes.items():
            if node.host == f"computer-{lost}":
                cluster.kill(node_id)
                shutil.rmtree(node.state)
        run.figure(
            "time back to degree 3 on three computers",
            seconds_until(
                lambda: (
                    set(computers_holding(cluster, 1).values()) == {3}
                    and min(copies_on_holders(cluster, 1).values()) >= 3
                ),
                1800,
                "degree 3 again",
            ),
            "s",
        )
        shutil.rmtree(tmp_path / "out")
        cluster.cli(1, "restore", src, "--to", tmp_path / "out", timeout=7200)
        assert same_tree(src, tmp_path / "out")
    finally:
        cluster.stop_all()
        lan.destroy()
    cluster.assert_no_tracebacks()
