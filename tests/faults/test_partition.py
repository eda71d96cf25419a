"""Scenario 6: one computer cut off the network while backups go on, then back."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from chunkstore.keys import KeyRing
from chunkstore.recovery import open_manifest
from chunkstore.store import ChunkStore
from lanvault.state import StateDir
from node.safekeeping import CATALOG_NAME
from tests.system.netns import Lan, netns_available, sweep_stale
from tests.system.procs import ProcessCluster

from .conftest import ScenarioRun
from .helpers import copies_on_holders, same_tree, seconds_until, write_tree

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.scenario("partition")]


def test_a_partitioned_computer_rejoins_without_harm(run: ScenarioRun, tmp_path: Path) -> None:
    why = netns_available()
    if why:
        pytest.skip(why)
    sweep_stale()
    lan = Lan(tag=f"{os.getpid() % 1000}", subnet=os.getpid() % 200 + 20)
    lan.create(4)
    cluster = ProcessCluster.on_lan(tmp_path / "net", lan, list(range(4)), "8s")
    try:
        for node_id in cluster.nodes:
            cluster.start(node_id)
        cluster.wait_mesh(40)
        tree = tmp_path / "tree"
        write_tree(tree, run.rng, run.size(20, 200) * 1_000_000, 10)
        cluster.cli(1, "backup", tree, "--degree", "2", timeout=600)
        sequences = [cluster.json(1, "status")["recovery"]["catalog_seq"]]
        victim = run.rng.choice([1, 2, 3])  # a computer, not the owner's
        lan.link_down(victim)
        end = time.monotonic() + run.size(20, 600)
        backups = 0
        while time.monotonic() < end:
            (tree / f"d0/new-{backups}.bin").write_bytes(run.rng.randbytes(1_500_000))
            cluster.cli(1, "backup", tree, "--degree", "2", timeout=600)
            backups += 1
            sequences.append(cluster.json(1, "status")["recovery"]["catalog_seq"])
            time.sleep(1)
        lan.link_up(victim)
        healed = time.monotonic()
        cluster.wait_mesh(60)
        run.figure("backups while cut off", backups)
        run.figure(
            "time to exactly degree 2 after the heal",
            seconds_until(
                lambda: set(copies_on_holders(cluster, 1).values()) == {2}, 300, "degree 2"
            ),
            "s",
        )
        sequences.append(cluster.json(1, "status")["recovery"]["catalog_seq"])
        assert sequences == sorted(sequences), sequences  # the catalog never goes back
        run.figure("seconds from the heal to the check", time.monotonic() - healed, "s")
        out = tmp_path / "out"
        cluster.cli(1, "restore", tree, "--to", out, timeout=600)
        assert same_tree(tree, out)
        assert cluster.json(1, "check", "--read-data")["read_data_bad_copies"] == []
        # The copy of the owner's catalog the cut-off computer kept is replaced by the newest.
        cluster.wait(
            lambda: cluster.json(1, "status")["recovery"]["catalog_holders"] == 3, 120, "copies"
        )
    finally:
        cluster.stop_all()
        lan.destroy()
    cluster.assert_no_tracebacks()
    seq, blob = catalog_copy(cluster.nodes[victim + 1].state, owner=1)
    assert seq == sequences[-1], (seq, sequences)
    keys = KeyRing.from_master(StateDir(cluster.nodes[1].state).master_key())
    assert open_manifest(keys, blob, 1, seq).seq == seq  # sealed by the owner, not stale


def catalog_copy(state: Path, owner: int) -> tuple[int, bytes]:
    """The (sequence, sealed manifest) of ``owner``'s catalog that a stopped node keeps."""
    with ChunkStore.open(state / "store") as store:
        kept = store.get_blob(owner, CATALOG_NAME)
    assert kept is not None
    return kept
