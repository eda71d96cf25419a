"""Scenario 10: retention racing backups that reuse old chunks, and an owner paused past
every timeout."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from tests.system.procs import start_lanvault

from .conftest import ScenarioRun
from .helpers import copies_on_holders, running, same_tree

pytestmark = [pytest.mark.slow, pytest.mark.scenario("retention-race", seeds=(2048279513,))]


def test_pruning_never_deletes_a_chunk_a_kept_snapshot_uses(
    run: ScenarioRun, tmp_path: Path
) -> None:
    rounds = run.size(6, 40)
    with running(tmp_path / "net", 4, "6s") as cluster:
        tree = tmp_path / "tree"
        tree.mkdir()
        # A few contents each file goes back and forth between: later backups reuse the
        # chunks of versions a prune is about to drop.
        pool = [run.rng.randbytes(run.rng.randrange(100_000, 1_500_000)) for _ in range(4)]
        for i in range(6):
            (tree / f"f{i}.bin").write_bytes(run.rng.choice(pool))
        cluster.cli(1, "backup", tree, "--degree", "2")
        pruned = 0
        for round_ in range(rounds):
            for i in run.rng.sample(range(6), 3):
                (tree / f"f{i}.bin").write_bytes(run.rng.choice(pool))
            time.sleep(1.1)
            outcome: dict[str, object] = {}

            def prune(out: dict[str, object] = outcome) -> None:
                out["prune"] = cluster.json(1, "prune", "--keep", "all:1s")

            pruner = threading.Thread(target=prune)
            pruner.start()
            time.sleep(run.rng.uniform(0, 0.3))
            if round_ == rounds // 2:  # the owner paused past every timeout, mid-backup
                backup = start_lanvault(
                    "backup", tree, "--degree", "2", "--dir", cluster.nodes[1].state
                )
                assert cluster.nodes[1].proc is not None
                cluster.nodes[1].proc.send_signal(signal.SIGSTOP)
                time.sleep(run.size(15, 60))
                cluster.nodes[1].proc.send_signal(signal.SIGCONT)
                _out, err = backup.communicate(timeout=300)
                assert backup.returncode == 0, err
            else:
                cluster.cli(1, "backup", tree, "--degree", "2")
            pruner.join(300)
            pruned += int(outcome["prune"]["chunks_deleted"])  # type: ignore[index]
            # Every chunk of what is kept (the files as backed up last) is on two holders.
            copies = copies_on_holders(cluster, 1)
            assert min(copies.values()) >= 2, f"round {round_}: {sorted(copies.values())[:5]}"
        run.figure("prune and backup races", rounds)
        run.figure("chunks pruned meanwhile", pruned)
        out = tmp_path / "out"
        cluster.cli(1, "restore", tree, "--to", out)
        assert same_tree(tree, out)
        assert cluster.json(1, "check", "--read-data")["read_data_bad_copies"] == []
