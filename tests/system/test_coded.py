"""A backup kept with a K-of-N code on real processes and the real CLI: `backup --code 2-of-4`
keeps each chunk as four shares on four computers; any two computers lost, the files come back
identical; a holder gone, the others rebuild its shares; `delete` takes every share away. The
holders' own stores are the ground truth."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .procs import ProcessCluster
from .test_network_cli import same_tree

pytestmark = pytest.mark.slow


def shares_on_holders(cluster: ProcessCluster, owner: int) -> dict[str, set[int]]:
    """Ground truth: each share a running holder's store lists for ``owner``, and where."""
    found: dict[str, set[int]] = {}
    for node_id in cluster.running():
        for held in cluster.json(node_id, "state")["stored"]:
            if held["owner"] == owner and "share_of" in held:
                found.setdefault(held["chunk"], set()).add(node_id)
    return found


def test_a_2_of_4_backup_survives_two_lost_computers_and_is_repaired(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path / "net", 6, gone_after="6s")
    try:
        cluster.start_all()
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "big.bin").write_bytes(os.urandom(3 * 64_000 + 123))
        (src / "sub" / "small.txt").write_text("a small file\n")
        (src / "empty").write_bytes(b"")
        said = cluster.cli(1, "backup", src, "--code", "2-of-4").stdout
        assert "as 2-of-4 shares" in said, said
        state = cluster.json(1, "state")
        chunks = [c for f in state["files"] for c in f["chunks"]]
        assert all(f["code"] == "2-of-4" and f["complete"] for f in state["files"])
        assert all(c["degree"] == 4 for c in chunks), "every chunk's four shares are held"
        held = shares_on_holders(cluster, 1)
        # Four shares of each chunk (the folders' is the empty file's), each share on one
        # node, and no copies.
        assert len(held) == 4 * len({c["chunk"] for c in chunks})
        assert all(len(nodes) == 1 for nodes in held.values())

        # Two computers lost: every file comes back from the other shares.
        cluster.kill(2)
        cluster.kill(3)
        cluster.cli(1, "restore", src, "--to", tmp_path / "out1")
        assert same_tree(src, tmp_path / "out1")

        # Node 3 comes back; node 2 stays away and is gone after 6 s: the holders rebuild its
        # shares on the computers that hold none of their chunk's shares.
        cluster.start(3)
        lost = {item for item, nodes in held.items() if 2 in nodes}
        assert lost, "node 2 held some shares"
        cluster.wait(
            lambda: all(shares_on_holders(cluster, 1).get(item) for item in lost),
            120,
            "the shares node 2 held rebuilt on other holders",
        )
        now = shares_on_holders(cluster, 1)
        assert set(now) == set(held) and 2 not in set().union(*now.values())
        check = cluster.json(1, "check")
        assert check["own_coded_chunks_short"] == 0 and check["own_coded_chunks_lost"] == 0

        # Two more lost, after the repair: the files still come back.
        cluster.kill(3)
        cluster.kill(4)
        cluster.cli(1, "restore", src, "--to", tmp_path / "out2")
        assert same_tree(src, tmp_path / "out2")
        cluster.start(3)
        cluster.start(4)

        # Deleted: no share stays on any holder.
        cluster.cli(1, "delete", src)
        cluster.wait(
            lambda: not shares_on_holders(cluster, 1), 60, "every share deleted from the holders"
        )
    finally:
        cluster.stop_all()
        cluster.assert_no_tracebacks()
