"""What the scenarios share: trees with seeded contents, and figures read off real processes."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fs.conftest import Mount
from tests.system.procs import ProcessCluster


def seeded_bytes(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def write_tree(root: Path, rng: random.Random, total: int, files: int) -> None:
    """``files`` files of seeded contents, ``total`` bytes in all, in a few folders."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        folder = root / f"d{index % 7}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{index}.bin").write_bytes(seeded_bytes(rng, total // files))


def same_tree(a: Path, b: Path) -> bool:
    result = subprocess.run(["diff", "-r", "-q", str(a), str(b)], capture_output=True)
    return result.returncode == 0


def process_peak_rss_mb(pid: int) -> float:
    """A process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(cluster: ProcessCluster, node_id: int) -> float:
    """A node process's peak resident memory, in MB."""
    proc = cluster.nodes[node_id].proc
    assert proc is not None
    return process_peak_rss_mb(proc.pid)


def bytes_moved(cluster: ProcessCluster) -> int:
    """Chunk bytes the running holders received and sent, in all."""
    total = 0
    for node_id in cluster.running():
        status = cluster.json(node_id, "status")
        total += int(status.get("bytes_received", 0)) + int(status.get("bytes_sent", 0))
    return total


def snapshot_count(cluster: ProcessCluster) -> int:
    """Snapshots of the mounted tree node 1 records."""
    return len(cluster.json(1, "versions")["snapshots"])


def wait_for_snapshots(cluster: ProcessCluster, count: int, timeout: float = 300) -> None:
    cluster.wait(lambda: snapshot_count(cluster) >= count, timeout, f"{count} snapshots")


def seconds_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until it holds; how long that took (fails after ``timeout``)."""
    start = time.monotonic()
    ProcessCluster.wait(predicate, timeout, what)
    return time.monotonic() - start


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted over ``path``, holding what ``path`` held."""
    path.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(path.name + ".aside")
    path.rename(aside)
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        subprocess.run(["cp", "-a", f"{aside}/.", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def copies_on_holders(cluster: ProcessCluster, owner: int) -> dict[str, int]:
    """Ground truth: for each chunk of ``owner``'s files, how many running holders' stores
    list it (asked of each holder, not of the owner's records)."""
    wanted = {c["chunk"] for f in cluster.json(owner, "state")["files"] for c in f["chunks"]}
    counts = dict.fromkeys(wanted, 0)
    for node_id in cluster.running():
        for held in cluster.json(node_id, "state")["stored"]:
            if held["owner"] == owner and held["chunk"] in counts:
                counts[held["chunk"]] += 1
    return counts


def fill_disk(path: Path, leave: int) -> None:
    """Other files take the disk under ``path`` until ``leave`` bytes are left (or none)."""
    piece = b"\0" * (1 << 20)
    with open(path / "other-files", "ab") as handle:
        while True:
            stats = os.statvfs(path)
            if stats.f_bavail * stats.f_frsize <= leave + len(piece):
                break
            try:
                handle.write(piece)
                handle.flush()
            except OSError:
                break


@contextmanager
def running(
    root: Path, count: int, gone_after: str, repair_interval: str = "2"
) -> Iterator[ProcessCluster]:
    """``count`` enrolled nodes started and linked; stopped after, and then no node may have
    logged a traceback (checked only when the scenario itself passed)."""
    cluster = ProcessCluster(root, count, gone_after=gone_after, repair_interval=repair_interval)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()
    cluster.assert_no_tracebacks()


def new_mount(cluster: ProcessCluster, tmp: Path) -> tuple[Mount, Path, Path]:
    """A mount of a fresh SOURCE (``tmp/data``) at ``tmp/Backup`` for node 1, not started yet
    (a scenario may start it with an environment of its own)."""
    source, mnt = tmp / "data", tmp / "Backup"
    source.mkdir()
    mnt.mkdir()
    return Mount(cluster.nodes[1].state, source, mnt, tmp / "mount.log"), source, mnt
