"""Scenario 3: a process killed at each commit step of a backup, a cut, a repair, a delete, a
prune and a reclaim (``chunkstore/crashpoints.py`` names them); after a restart ``check`` is
clean, what was acknowledged before is intact, and the operation run again completes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkstore.crashpoints import POINTS
from tests.fs.conftest import fuse_available, sweep_stale_mounts
from tests.system.procs import ProcessCluster
from tests.system.test_mount_history import all_safe

from .conftest import ScenarioRun
from .helpers import copies_on_holders, new_mount, running, same_tree, write_tree

pytestmark = [pytest.mark.slow, pytest.mark.scenario("crash-points")]

Case = Callable[[ProcessCluster, ScenarioRun, Path, pytest.MonkeyPatch], None]


def start_crashing(
    cluster: ProcessCluster, nodes: tuple[int, ...], point: str, mp: pytest.MonkeyPatch
) -> None:
    """Restart ``nodes`` so that each kills itself when it reaches ``point``."""
    for node_id in nodes:
        cluster.stop(node_id)
    with mp.context() as patch:
        patch.setenv("LANVAULT_CRASH_AT", point)
        for node_id in nodes:
            cluster.start(node_id)
    cluster.wait_mesh()


def restart_crashed(cluster: ProcessCluster, nodes: tuple[int, ...]) -> list[int]:
    """Wait until one of ``nodes`` killed itself at its crash point (the positive signal that
    the point was reached), then restart every one of them normally; returns those that died."""
    cluster.wait(
        lambda: any(cluster.nodes[n].proc.poll() is not None for n in nodes),  # type: ignore[union-attr]
        180,
        "a node reached the crash point",
    )
    died = []
    for node_id in nodes:
        proc = cluster.nodes[node_id].proc
        assert proc is not None
        if proc.poll() is not None:
            assert proc.returncode == -9, cluster.nodes[node_id].log.read_text()[-2000:]
            died.append(node_id)
            cluster.kill(node_id)  # forgets the process, removes its stale socket
        else:
            cluster.stop(node_id)
        cluster.start(node_id)
    cluster.wait_mesh()
    return died


def assert_clean(cluster: ProcessCluster, owner: int = 1) -> None:
    """Every node's store reads back valid (garbage from the crash allowed: compaction takes
    it) and every chunk the owner's newest versions name is at its degree on the holders."""
    cluster.wait(
        lambda: cluster.json(owner, "status")["pending_backlog"] == 0, 180, "no pending backup"
    )
    cluster.wait(
        lambda: min(copies_on_holders(cluster, owner).values(), default=2) >= 2, 180, "degree 2"
    )
    for node_id in cluster.running():
        report = cluster.json(node_id, "check")
        assert report["store_bad_copies"] == [], (node_id, report)
        assert report["store_damaged_records"] == 0, (node_id, report)
        assert report["own_chunks_below_degree"] == 0 and report["own_chunks_lost"] == 0, report
    read = cluster.json(owner, "check", "--read-data")
    assert read["read_data_bad_copies"] == [] and read["read_data_unreadable_copies"] == 0, read


def assert_clean_and_restored(cluster: ProcessCluster, tree: Path, out: Path) -> None:
    assert_clean(cluster)
    cluster.cli(1, "restore", tree, "--to", out, timeout=600)
    assert same_tree(tree, out)


def backup_crash(point: str, small: bool) -> Case:
    def case(cluster: ProcessCluster, run: ScenarioRun, tmp: Path, mp: pytest.MonkeyPatch) -> None:
        src = tmp / "src"
        if small:  # one group of small files, committed in one transaction
            write_tree(src, run.rng, 200_000, 40)
        else:  # files of several chunks, each recorded on its own
            write_tree(src, run.rng, 12_000_000, 3)
        start_crashing(cluster, (1,), point, mp)
        failed = cluster.cli(1, "backup", src, check=False)
        assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
        restart_crashed(cluster, (1,))
        again = cluster.cli(1, "backup", src, timeout=600)
        assert "backed up" in again.stdout, again.stdout
        assert_clean_and_restored(cluster, src, tmp / "out")

    return case


def holder_write_crash(
    cluster: ProcessCluster, run: ScenarioRun, tmp: Path, mp: pytest.MonkeyPatch
) -> None:
    src = tmp / "src"
    write_tree(src, run.rng, 8_000_000, 8)
    victim = run.rng.choice([2, 3, 4])
    start_crashing(cluster, (victim,), "store.written", mp)
    done = cluster.cli(1, "backup", src, "--degree", "2", timeout=600)  # the others take it
    assert "backed up" in done.stdout, done.stdout
    restart_crashed(cluster, (victim,))
    assert_clean_and_restored(cluster, src, tmp / "out")


def write_fsync(path: Path, data: bytes) -> int:
    """Write and fsync in a separate process (the mount may die under it): its exit status."""
    code = "import os,sys;fd=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT|os.O_TRUNC,0o644);"
    code += "os.write(fd,sys.stdin.buffer.read());os.fsync(fd)"
    return subprocess.run(
        [sys.executable, "-c", code, str(path)], input=data, capture_output=True, timeout=120
    ).returncode


def cut_crash(point: str) -> Case:
    def case(cluster: ProcessCluster, run: ScenarioRun, tmp: Path, mp: pytest.MonkeyPatch) -> None:
        why = fuse_available()
        if why:
            pytest.skip(why)
        sweep_stale_mounts()
        mount, source, mnt = new_mount(cluster, tmp)
        kept = run.rng.randbytes(3_000_000)
        mount.start()
        try:  # acknowledged before the crash: must survive it
            assert write_fsync(mnt / "kept.bin", kept) == 0
        finally:
            mount.stop()
        with mp.context() as patch:
            patch.setenv("LANVAULT_CRASH_AT", point)
            mount.start()
        write_fsync(mnt / "new.bin", run.rng.randbytes(2_000_000))  # may fail: not acknowledged
        assert mount.proc is not None
        mount.proc.wait(120)
        assert mount.proc.returncode == -9, mount.log.read_text()[-2000:]
        mount.proc = None
        mount.stop()  # detaches the dead mount
        mount.start()
        try:
            assert (mnt / "kept.bin").read_bytes() == kept
            cluster.wait(lambda: all_safe(cluster, source.resolve()), 180, "every file safe")
        finally:
            mount.stop()
        assert_clean(cluster)

    return case


def repair_crash(
    cluster: ProcessCluster, run: ScenarioRun, tmp: Path, mp: pytest.MonkeyPatch
) -> None:
    src = tmp / "src"
    write_tree(src, run.rng, 8_000_000, 8)
    cluster.cli(1, "backup", src, "--degree", "2", timeout=600)
    lost = run.rng.choice([2, 3, 4])
    repairers = tuple(n for n in (2, 3, 4) if n != lost)
    start_crashing(cluster, repairers, "repair.copied", mp)
    cluster.kill(lost)  # gone after 6 s: the others make its copies again
    assert restart_crashed(cluster, repairers)
    assert_clean(cluster)
    cluster.start(lost)
    cluster.wait(lambda: set(copies_on_holders(cluster, 1).values()) == {2}, 300, "exact degree")
    cluster.cli(1, "restore", src, "--to", tmp / "out", timeout=600)
    assert same_tree(src, tmp / "out")


def delete_crash(point: str) -> Case:
    def case(cluster: ProcessCluster, run: ScenarioRun, tmp: Path, mp: pytest.MonkeyPatch) -> None:
        gone, kept = tmp / "gone", tmp / "kept"
        write_tree(gone, run.rng, 4_000_000, 6)
        write_tree(kept, run.rng, 4_000_000, 6)
        cluster.cli(1, "backup", gone, timeout=600)
        cluster.cli(1, "backup", kept, timeout=600)
        deleted = chunks_under(cluster, 1, gone)
        assert still_held(cluster, 1, deleted) == 2 * len(deleted)
        start_crashing(cluster, (1,), point, mp)
        cluster.cli(1, "delete", gone, check=False)
        restart_crashed(cluster, (1,))
        if cluster.cli(1, "versions", gone / "d0" / "f0.bin", check=False).returncode == 0:
            cluster.cli(1, "delete", gone)  # the crash came before the delete was recorded
        # The owed deletes reach every holder: none keeps a chunk no version names.
        cluster.wait(lambda: still_held(cluster, 1, deleted) == 0, 180, "deleted everywhere")
        assert_clean_and_restored(cluster, kept, tmp / "out")

    return case


def prune_crash(
    cluster: ProcessCluster, run: ScenarioRun, tmp: Path, mp: pytest.MonkeyPatch
) -> None:
    src = tmp / "src"
    write_tree(src, run.rng, 4_000_000, 4)
    cluster.cli(1, "backup", src, timeout=600)
    first = chunks_under(cluster, 1, src)
    for path in sorted(src.rglob("*.bin")):  # a second version of every file
        path.write_bytes(run.rng.randbytes(path.stat().st_size))
    cluster.cli(1, "backup", src, timeout=600)
    time.sleep(1.5)  # the first versions are older than the policy's second
    start_crashing(cluster, (1,), "prune.recorded", mp)
    cluster.cli(1, "prune", "--keep", "all:1s", check=False)
    restart_crashed(cluster, (1,))
    # The prune was committed before the crash: only the second versions are left.
    assert len(cluster.json(1, "versions", src / "d0" / "f0.bin")["versions"]) == 1
    cluster.wait(lambda: still_held(cluster, 1, first) == 0, 180, "pruned chunks deleted")
    assert_clean_and_restored(cluster, src, tmp / "out")


def reclaim_crash(
    cluster: ProcessCluster, run: ScenarioRun, tmp: Path, mp: pytest.MonkeyPatch
) -> None:
    src = tmp / "src"
    write_tree(src, run.rng, 8_000_000, 8)
    cluster.cli(1, "backup", src, "--degree", "2", timeout=600)
    victim = max((2, 3, 4), key=lambda n: cluster.json(n, "state")["used_bytes"])
    start_crashing(cluster, (victim,), "reclaim.copied", mp)
    cluster.cli(victim, "reclaim", "0", check=False, timeout=600)
    restart_crashed(cluster, (victim,))
    assert_clean_and_restored(cluster, src, tmp / "out")


def chunks_under(cluster: ProcessCluster, owner: int, folder: Path) -> set[str]:
    """The chunks of ``owner``'s newest versions of the files under ``folder``."""
    files = cluster.json(owner, "state")["files"]
    return {c["chunk"] for f in files if f["path"].startswith(f"{folder}/") for c in f["chunks"]}


def still_held(cluster: ProcessCluster, owner: int, chunks: set[str]) -> int:
    """Copies of these chunks of ``owner`` on the running holders' own stores."""
    return sum(
        1
        for node_id in cluster.running()
        for held in cluster.json(node_id, "state")["stored"]
        if held["owner"] == owner and held["chunk"] in chunks
    )


CASES: dict[str, Case] = {
    "store.written": holder_write_crash,
    "backup.sent": backup_crash("backup.sent", small=False),
    "backup.recorded": backup_crash("backup.recorded", small=False),
    "backup.group": backup_crash("backup.group", small=True),
    "cut.outbox": cut_crash("cut.outbox"),
    "cut.committed": cut_crash("cut.committed"),
    "repair.copied": repair_crash,
    "delete.recorded": delete_crash("delete.recorded"),
    "delete.sent": delete_crash("delete.sent"),
    "prune.recorded": prune_crash,
    "reclaim.copied": reclaim_crash,
}


def test_every_crash_point_has_a_case() -> None:
    assert set(CASES) == set(POINTS)


@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_crash_at_a_commit_step_loses_nothing(
    run: ScenarioRun, tmp_path: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.environ.get("LANVAULT_CRASH_AT") is None
    with running(tmp_path / "net", 4, "6s") as cluster:
        started = time.monotonic()
        CASES[point](cluster, run, tmp_path, monkeypatch)
        run.figure("time to crash, restart and be clean", time.monotonic() - started, "s")
