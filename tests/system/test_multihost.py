"""Nodes on separate "computers" (network namespaces): placement, discovery, a link going down."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import Lan, netns_available, sweep_stale
from .procs import ROOT, ProcessCluster, env, start_lanvault

pytestmark = [pytest.mark.netns, pytest.mark.slow]
why_not = netns_available()


@pytest.fixture
def lan_cluster(tmp_path: Path) -> Iterator[tuple[Lan, ProcessCluster]]:
    if why_not:
        pytest.skip(why_not)
    sweep_stale()
    lan = Lan(tag=f"{os.getpid() % 1000}", subnet=os.getpid() % 200 + 20)
    lan.create(3)
    # Computer 0 runs nodes 1 and 2; computers 1 and 2 run nodes 3 and 4.
    computers = [0, 0, 1, 2]
    cluster = ProcessCluster.on_lan(
        tmp_path / "net",
        lan,
        computers,
        gone_after="8s",
        seed_peer=False,  # they must find each other by LAN discovery
    )
    try:
        for node_id in cluster.nodes:
            cluster.start(node_id)
        cluster.wait_mesh(timeout=40)
        yield lan, cluster
    finally:
        cluster.stop_all()
        lan.destroy()


def holders_by_chunk(cluster: ProcessCluster, owner: int) -> dict[str, list[int]]:
    holders: dict[str, list[int]] = collections.defaultdict(list)
    for node_id in cluster.nodes:
        for stored in cluster.json(node_id, "state")["stored"]:
            if stored["owner"] == owner:
                holders[stored["chunk"]].append(node_id)
    return holders


def computer_of(cluster: ProcessCluster, node_id: int) -> str:
    return str(cluster.nodes[node_id].host)


def test_discovery_and_placement_on_distinct_computers(
    lan_cluster: tuple[Lan, ProcessCluster], tmp_path: Path
) -> None:
    _lan, cluster = lan_cluster
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3_000_000))
    cluster.cli(3, "backup", src, "--degree", "2")
    placed = holders_by_chunk(cluster, owner=3)
    assert placed
    for chunk, nodes in placed.items():
        computers = [computer_of(cluster, n) for n in nodes]
        assert len(nodes) == 2, (chunk, nodes)
        assert len(set(computers)) == 2, f"two copies of {chunk[:12]} on one computer: {nodes}"
        assert computer_of(cluster, 3) not in computers  # never on the owner's computer
    # Node 1's copies go to computers 1 and 2, never to node 2 (its own computer).
    cluster.cli(1, "backup", src, "--degree", "2")
    for nodes in holders_by_chunk(cluster, owner=1).values():
        assert 2 not in nodes and sorted(nodes) == [3, 4]


def test_link_down_during_backup_then_back(
    lan_cluster: tuple[Lan, ProcessCluster], tmp_path: Path
) -> None:
    lan, cluster = lan_cluster
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(30_000_000)
    (src / "big.bin").write_bytes(data)
    backup = start_lanvault("backup", src, "--degree", "2", "--dir", cluster.nodes[1].state)
    time.sleep(0.3)
    lan.link_down(2)  # the computer of node 4 is unplugged
    time.sleep(4)
    lan.link_up(2)
    _out, err = backup.communicate(timeout=240)
    assert backup.returncode == 0, err
    cluster.wait(lambda: min(cluster.degrees(1)) >= 2, 60, "every chunk at degree 2")
    for chunk, nodes in holders_by_chunk(cluster, owner=1).items():
        assert len({computer_of(cluster, n) for n in nodes}) == len(nodes), (chunk, nodes)
    out = tmp_path / "out"
    cluster.cli(1, "restore", src, "--to", out)
    assert (out / "big.bin").read_bytes() == data


def test_lost_computer_recovers_by_lan_discovery(
    lan_cluster: tuple[Lan, ProcessCluster], tmp_path: Path
) -> None:
    """Computer 2 (node 4) is lost; on a new disk, `recover` without --peer finds the others."""
    import json
    import shutil

    _lan, cluster = lan_cluster
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(2_000_000)
    (src / "photo.raw").write_bytes(data)
    cluster.cli(4, "backup", src, "--degree", "2")
    cluster.wait(
        lambda: cluster.json(4, "status")["recovery"]["catalog_holders"] >= 2,
        60,
        "node 4's catalog copy on the peers",
    )
    cluster.kill(4)
    shutil.rmtree(cluster.nodes[4].state)
    fresh = tmp_path / "new-disk"
    node = cluster.nodes[4]
    recover = [sys.executable, "-m", "lanvault.cli", "recover", "--dir", str(fresh), "--id", "4"]
    out = subprocess.run(
        [*node.prefix, *recover, "--json", "--listen-seconds", "12"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["files"] == 1 and result["catalog_seq"] > 0
    node.state = fresh
    cluster.start(4)
    cluster.wait(lambda: cluster.json(4, "status")["nodes"][0]["up"], 30, "node 4 back")
    cluster.cli(4, "restore", src, "--to", tmp_path / "back")
    assert (tmp_path / "back" / "photo.raw").read_bytes() == data
