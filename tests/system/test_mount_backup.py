"""Through the mount to the peers: what is written is at its degree within seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.fs.conftest import Mount, fuse_available, sweep_stale_mounts

from .procs import ProcessCluster

pytestmark = [pytest.mark.fuse, pytest.mark.slow]


def files_state(cluster: ProcessCluster) -> dict[str, dict[str, object]]:
    return {f["path"]: f for f in cluster.json(1, "state")["files"]}


def safe(cluster: ProcessCluster, path: Path, size: int) -> bool:
    entry = files_state(cluster).get(str(path))
    return bool(
        entry
        and entry["size"] == size
        and entry["complete"]
        and all(c["degree"] >= 2 for c in entry["chunks"])  # type: ignore[attr-defined]
    )


def test_written_files_reach_their_degree(cluster4: ProcessCluster, tmp_path: Path) -> None:
    if fuse_available():
        pytest.skip(str(fuse_available()))
    sweep_stale_mounts()
    source, mnt = tmp_path / "data", tmp_path / "Backup"
    source.mkdir()
    mnt.mkdir()
    mount = Mount(cluster4.nodes[1].state, source, mnt, tmp_path / "mount.log")
    mount.start()
    try:
        data = bytearray(os.urandom(20 * 64_000 + 123))
        (mnt / "report.odt").write_bytes(data)
        (mnt / "notes").mkdir()
        (mnt / "notes" / "todo.txt").write_text("buy milk\n")
        started = time.monotonic()
        cluster4.wait(
            lambda: safe(cluster4, source.resolve() / "report.odt", len(data)), 30, "report safe"
        )
        seconds = time.monotonic() - started
        assert seconds < 15
        cluster4.wait(
            lambda: safe(cluster4, source.resolve() / "notes" / "todo.txt", 9), 30, "todo safe"
        )

        # Rewrite one chunk in the middle: one new chunk address, the rest unchanged.
        before = files_state(cluster4)[str(source.resolve() / "report.odt")]
        with open(mnt / "report.odt", "r+b") as handle:
            handle.seek(10 * 64_000 + 5)
            handle.write(b"changed")
            handle.flush()
            os.fsync(handle.fileno())
        data[10 * 64_000 + 5 : 10 * 64_000 + 12] = b"changed"
        cluster4.wait(
            lambda: (
                files_state(cluster4)[str(source.resolve() / "report.odt")]["file_id"]
                != before["file_id"]
                and safe(cluster4, source.resolve() / "report.odt", len(data))
            ),
            30,
            "new version safe",
        )
        out = tmp_path / "restored.odt"
        cluster4.cli(1, "restore", source.resolve() / "report.odt", "--to", out)
        assert out.read_bytes() == bytes(data)
    finally:
        mount.stop()


def test_mount_killed_then_remounted_loses_nothing(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    if fuse_available():
        pytest.skip(str(fuse_available()))
    sweep_stale_mounts()
    source, mnt = tmp_path / "data", tmp_path / "Backup"
    source.mkdir()
    mnt.mkdir()
    cluster4.kill(2)  # fewer peers: some backups wait in the backlog
    mount = Mount(cluster4.nodes[1].state, source, mnt, tmp_path / "mount.log")
    mount.start()
    payload = os.urandom(300_000)
    fd = os.open(mnt / "synced.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, payload)
    os.fsync(fd)  # returns once durable locally, and a version is cut
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(10)
    with contextlib.suppress(OSError):
        os.close(fd)  # the mount is gone
    mount.proc = None
    mount.stop()  # lazy-unmounts the dead mount
    assert (source / "synced.bin").read_bytes() == payload
    cluster4.start(2)
    cluster4.wait(
        lambda: safe(cluster4, source.resolve() / "synced.bin", len(payload)), 60, "backlog done"
    )
