"""Through the mount to the peers: what is written is at its degree within seconds."""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.store import ChunkStore
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

        # People name their files by the folder they see: the mount's paths work too.
        history = cluster4.json(1, "versions", mnt / "report.odt")
        assert history["path"] == str(source.resolve() / "report.odt")
        shown = cluster4.cli(1, "versions", mnt / "report.odt").stdout.splitlines()[0]
        assert shown == str(mnt / "report.odt")  # for people: the path they see
        assert len(history["versions"]) == 2
        restored = cluster4.json(1, "restore", mnt / "notes", "--to", tmp_path / "notes-back")
        assert (tmp_path / "notes-back" / "todo.txt").read_text() == "buy milk\n"
        # Counted as a plain restore counts: the folder itself too (it said "1 file" only).
        assert (restored["files"], restored["symlinks"], restored["folders"]) == (1, 0, 1)
        # In place while mounted: through the mount, so the restored file is a new version.
        (mnt / "notes" / "todo.txt").write_text("oops\n")
        cluster4.wait(
            lambda: len(cluster4.json(1, "versions", mnt / "notes" / "todo.txt")["versions"]) == 2,
            30,
            "the edit recorded",
        )
        first = cluster4.json(1, "versions", mnt / "notes" / "todo.txt")["versions"][0]
        moment = datetime.datetime.fromtimestamp(first["time"] + 0.001, datetime.UTC)
        cluster4.cli(1, "restore", mnt / "notes" / "todo.txt", "--at", moment.isoformat())
        assert (mnt / "notes" / "todo.txt").read_text() == "buy milk\n"
        assert (source / "notes" / "todo.txt").read_text() == "buy milk\n"
        cluster4.wait(
            lambda: len(cluster4.json(1, "versions", mnt / "notes" / "todo.txt")["versions"]) == 3,
            30,
            "the restore recorded as a version",
        )
    finally:
        mount.stop()
    # Unmounted, the mount's path still names SOURCE's backups.
    history = cluster4.json(1, "versions", mnt / "report.odt")
    assert history["path"] == str(source.resolve() / "report.odt")
    # A mount snapshot listed by name (as versions/ and lanvault snapshots show it).
    snaps = [s for s in cluster4.json(1, "snapshots", mnt)["snapshots"] if s["kind"] == "mount"]
    newest = cluster4.json(1, "ls", snaps[-1]["id"], mnt / "notes")["entries"]
    assert [(e["path"], e["kind"], e["size"]) for e in newest] == [
        (str(source.resolve() / "notes"), "folder", 0),
        (str(source.resolve() / "notes" / "todo.txt"), "file", 9),
    ]
    changes = cluster4.json(1, "diff", snaps[0]["id"], snaps[-1]["id"])
    assert str(source.resolve() / "report.odt") in changes["added"] + changes["changed"]
    # Nothing backed up there: one line naming the path as typed, exit 1, nothing written.
    for command in (("versions",), ("restore", "--to", str(tmp_path / "nothing"))):
        failed = cluster4.cli(1, command[0], mnt / "never.txt", *command[1:], check=False)
        assert failed.returncode == 1
        assert failed.stderr.strip() == failed.stderr.strip().splitlines()[0]
        assert str(mnt / "never.txt") in failed.stderr and str(source) not in failed.stderr
    assert not (tmp_path / "nothing").exists()


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


@contextlib.contextmanager
def mounted(cluster: ProcessCluster, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Node 1's mount of ``tmp_path/data`` at ``tmp_path/Backup``: (SOURCE, the mount)."""
    if fuse_available():
        pytest.skip(str(fuse_available()))
    sweep_stale_mounts()
    source, mnt = tmp_path / "data", tmp_path / "Backup"
    source.mkdir()
    mnt.mkdir()
    mount = Mount(cluster.nodes[1].state, source, mnt, tmp_path / "mount.log")
    mount.start()
    try:
        yield source, mnt
    finally:
        mount.stop()


def outbox_empty(path: Path) -> bool:
    with ChunkStore.open(path) as store:
        return store.chunk_count() == 0


def test_versions_folder_shows_every_snapshot_even_from_peers(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    with mounted(cluster4, tmp_path) as (source, mnt):
        first = os.urandom(150_000)
        (mnt / "report.odt").write_bytes(first)
        cluster4.wait(
            lambda: safe(cluster4, source.resolve() / "report.odt", len(first)), 30, "v1 safe"
        )
        (mnt / "docs").mkdir()
        os.rename(mnt / "report.odt", mnt / "docs" / "report.odt")
        second = os.urandom(70_000)
        (mnt / "docs" / "report.odt").write_bytes(second)
        cluster4.wait(
            lambda: safe(cluster4, source.resolve() / "docs" / "report.odt", len(second)),
            30,
            "v2 safe",
        )

        snapshots = sorted(os.listdir(mnt / "versions"))
        assert "latest" in snapshots and len(snapshots) >= 4
        trees = {name: sorted(os.listdir(mnt / "versions" / name)) for name in snapshots}
        with_v1 = [n for n, t in trees.items() if "report.odt" in t]
        assert with_v1, trees
        assert (mnt / "versions" / with_v1[0] / "report.odt").read_bytes() == first
        assert (mnt / "versions" / "latest" / "docs" / "report.odt").read_bytes() == second
        assert "report.odt" not in trees["latest"]  # the rename is part of the snapshot

        for attempt in (
            lambda: (mnt / "versions" / "latest" / "new").write_text("x"),
            lambda: (mnt / "versions" / "latest" / "docs" / "report.odt").unlink(),
            lambda: (mnt / "versions" / "x").mkdir(),
        ):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS

        # SOURCE and the local outbox wiped: old versions come from the peers.
        os.unlink(source / "docs" / "report.odt")
        outbox = cluster4.nodes[1].state / "outbox"
        cluster4.wait(lambda: outbox_empty(outbox), 30, "outbox emptied once safe")
        assert (mnt / "versions" / with_v1[0] / "report.odt").read_bytes() == first
        assert (mnt / "versions" / "latest" / "docs" / "report.odt").read_bytes() == second


def test_a_folder_set_to_a_code_is_kept_as_shares_and_read_back_from_them(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    with mounted(cluster4, tmp_path) as (source, mnt):
        (mnt / "photos").mkdir()
        said = cluster4.cli(1, "degree", mnt / "photos", "2-of-3").stdout
        assert "code 2-of-3" in said, said
        data = os.urandom(5 * 64_000 + 7)
        (mnt / "photos" / "a.jpg").write_bytes(data)
        path = str(source.resolve() / "photos" / "a.jpg")

        def coded_and_safe() -> bool:
            entry = files_state(cluster4).get(path)
            return bool(
                entry
                and entry.get("code") == "2-of-3"
                and entry["complete"]
                and all(c["degree"] == 3 for c in entry["chunks"])  # type: ignore[attr-defined]
            )

        cluster4.wait(coded_and_safe, 30, "the file's three shares of every chunk held")
        # The file's chunks are shares only: no holder keeps a copy of them.
        chunks = {c["chunk"] for c in files_state(cluster4)[path]["chunks"]}  # type: ignore[attr-defined]
        for node_id in (2, 3, 4):
            held = cluster4.json(node_id, "state")["stored"]
            assert not chunks & {h["chunk"] for h in held if "share_of" not in h}
            assert chunks >= {h["share_of"] for h in held if h.get("code") == "2-of-3"}
        # SOURCE and the outbox wiped, one holder away: versions/ reads it from two shares.
        os.unlink(source / "photos" / "a.jpg")
        cluster4.wait(
            lambda: outbox_empty(cluster4.nodes[1].state / "outbox"), 30, "outbox emptied"
        )
        cluster4.kill(2)
        with_file = [
            n
            for n in os.listdir(mnt / "versions")
            if n != "latest" and (mnt / "versions" / n / "photos" / "a.jpg").exists()
        ]
        newest = sorted(with_file)[-1]
        assert (mnt / "versions" / newest / "photos" / "a.jpg").read_bytes() == data
