"""Scenario 5: every link through a seeded lossy proxy (resets, corrupted and duplicated
data, latency) during a backup and a restore."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.system.procs import ROOT, ProcessCluster, free_port

from .conftest import ScenarioRun
from .helpers import copies_on_holders, same_tree, write_tree

pytestmark = [pytest.mark.slow, pytest.mark.scenario("lossy-links")]

RESET, CORRUPT, DUPLICATE, MAX_DELAY = 0.30, 0.05, 0.05, 0.5


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "fail" in line]


def test_backup_and_restore_through_lossy_links(run: ScenarioRun, tmp_path: Path) -> None:
    size = run.size(40, 200 * 2**20 // 1_000_000) * 1_000_000
    cluster = ProcessCluster(tmp_path / "net", 4, gone_after="120s")
    fronts = {n: free_port() for n in cluster.nodes}
    pairs = [f"127.0.0.1:{fronts[n]}={node.address}" for n, node in cluster.nodes.items()]
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.lossy_proxy", str(run.seed)]
        + [str(x) for x in (RESET, CORRUPT, DUPLICATE, MAX_DELAY)]
        + pairs,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for node_id in cluster.nodes:
            cluster.start(node_id, "--advertise", f"127.0.0.1:{fronts[node_id]}")
        cluster.wait_mesh(120)
        src = tmp_path / "src"
        write_tree(src, run.rng, size, 10)
        started = time.monotonic()
        backup = cluster.cli(1, "backup", src, "--degree", "2", timeout=1800)
        run.figure("backup time", time.monotonic() - started, "s")
        assert "backed up" in backup.stdout
        assert not errors(backup.stderr), backup.stderr  # progress and waiting lines only
        assert min(copies_on_holders(cluster, 1).values()) >= 2
        started = time.monotonic()
        restore = cluster.cli(1, "restore", src, "--to", tmp_path / "out", timeout=1800)
        run.figure("restore time", time.monotonic() - started, "s")
        assert not errors(restore.stderr), restore.stderr
        assert same_tree(src, tmp_path / "out")
    finally:
        cluster.stop_all()
        proxy.send_signal(signal.SIGTERM)
        out, _ = proxy.communicate(timeout=30)
    counts = json.loads(out.strip().splitlines()[-1])
    for name, value in counts.items():
        run.figure(f"proxy {name}", value)
    # Resets come in every run; a corrupted or duplicated piece (5 % of a connection's windows
    # each way) may not, at the fast size's ~20 connections: CI's seed 2351576579 drew none.
    # They are counted in the figures; the run must have faced faults, which resets are.
    assert counts["resets"] > 0, counts
    cluster.assert_no_tracebacks()
