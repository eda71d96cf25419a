"""Relay replication between real node processes over TLS: the owner's link carries each byte
once at degree 3, and the chain's failures (a holder killed mid-backup, a holder that stores
but forwards nothing, a full one) cost nothing acknowledged: every chunk is at its degree on
the holders' own stores, and the restore is identical."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import copies_on_holders

from .procs import ProcessCluster, start_lanvault

pytestmark = pytest.mark.slow

SIZE = 24_000_000


@pytest.fixture
def cluster5(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path / "net", 5)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.assert_no_tracebacks()


def sent_by(cluster: ProcessCluster, node_id: int) -> int:
    return int(cluster.json(node_id, "status")["network_bytes_sent"])


def back_up_and_check(cluster: ProcessCluster, tmp_path: Path, degree: int) -> tuple[int, bytes]:
    """Back up SIZE random bytes from node 1 at ``degree``; check the holders' stores and a
    restore; return (bytes node 1 sent meanwhile, the data)."""
    data = os.urandom(SIZE)
    source = tmp_path / "src" / "data.bin"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(data)
    before = sent_by(cluster, 1)
    cluster.cli(1, "backup", source.parent, "--degree", str(degree))
    sent = sent_by(cluster, 1) - before
    held = copies_on_holders(cluster, 1)
    assert held and min(held.values()) >= degree, sorted(held.values())[:5]
    out = tmp_path / f"restored-{degree}"
    cluster.cli(1, "restore", source.parent, "--to", out)
    assert (out / "data.bin").read_bytes() == data
    return sent, data


def test_the_owner_sends_each_byte_once_at_degree_3(
    cluster5: ProcessCluster, tmp_path: Path
) -> None:
    cluster5.start_all()
    sent, data = back_up_and_check(cluster5, tmp_path, 3)
    # The catalog copy and the queries ride along: a few percent, never a second copy.
    assert sent < 1.15 * len(data), f"sent {sent / len(data):.2f}x the data"


def test_a_holder_that_forwards_nothing_costs_the_owner_sends_not_copies(
    cluster5: ProcessCluster, tmp_path: Path
) -> None:
    """Node 2 stores what it gets and passes nothing on (--no-relay): the chains it heads
    stop there, the owner finds the copies after it missing and sends them itself."""
    cluster5.start(2, "--no-relay")
    cluster5.start_all()
    sent, data = back_up_and_check(cluster5, tmp_path, 3)
    assert sent > 1.2 * len(data)  # it did make up for node 2's chains


def test_a_full_holder_in_the_chains_passes_them_on(
    cluster5: ProcessCluster, tmp_path: Path
) -> None:
    cluster5.start(3, "--quota", "1MB")
    cluster5.start_all()
    back_up_and_check(cluster5, tmp_path, 3)
    stored = cluster5.json(3, "state")
    assert stored["used_bytes"] <= 1_000_000


def test_a_holder_killed_mid_chain_loses_nothing(cluster5: ProcessCluster, tmp_path: Path) -> None:
    """Node 4 dies during a degree-2 backup of 120 MB: the backup goes on, every chunk it
    reports at degree 2 is on two holders' disks (node 4's counted once it is back), and the
    restore is identical."""
    cluster5.start_all()
    data = os.urandom(5 * SIZE)
    source = tmp_path / "big" / "data.bin"
    source.parent.mkdir()
    source.write_bytes(data)
    backup = start_lanvault(
        "backup", source.parent, "--degree", "2", "--dir", cluster5.nodes[1].state
    )
    # Kill it once its copies are arriving (a chain through it is under way).
    deadline = time.monotonic() + 120
    while int(cluster5.json(4, "status")["bytes_received"]) < SIZE:
        assert backup.poll() is None, backup.communicate()
        assert time.monotonic() < deadline, "node 4 received nothing"
        time.sleep(0.1)
    cluster5.kill(4)
    out, err = backup.communicate(timeout=300)
    assert backup.returncode == 0, err
    assert "backed up 1 file" in out
    restored = tmp_path / "restored"  # without node 4
    cluster5.cli(1, "restore", source.parent, "--to", restored)
    assert (restored / "data.bin").read_bytes() == data
    # Every copy acknowledged is on a disk: node 4's count too, once it is back.
    cluster5.start(4)
    cluster5.wait_mesh()
    held = copies_on_holders(cluster5, 1)  # the holders' own stores
    assert min(held.values()) >= 2
