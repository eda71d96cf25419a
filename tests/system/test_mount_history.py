"""The mount's history across real processes: crashes of the mount during writes and backups,
retention pruning that deletes chunks from holders, and restoring a whole tree as of a time
after SOURCE is gone."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import shutil
import signal
import stat
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

from chunkstore.chunking import split_bytes
from chunkstore.envelope import chunk_address
from chunkstore.keys import KeyRing
from tests.fs.conftest import Mount, fuse_available, sweep_stale_mounts

from .procs import ProcessCluster

pytestmark = [pytest.mark.fuse, pytest.mark.slow]


def start_mount(cluster: ProcessCluster, tmp_path: Path, *extra: str) -> tuple[Mount, Path, Path]:
    why = fuse_available()
    if why:
        pytest.skip(why)
    sweep_stale_mounts()
    source, mnt = tmp_path / "data", tmp_path / "Backup"
    source.mkdir(exist_ok=True)
    mnt.mkdir(exist_ok=True)
    mount = Mount(cluster.nodes[1].state, source, mnt, tmp_path / "mount.log", extra=extra)
    mount.start()
    return mount, source.resolve(), mnt


def kill_mount(mount: Mount) -> None:
    """SIGKILL the mount process. Its mount stays (dead: every call fails with ENOTCONN) until
    ``mount.stop()`` or the next ``lanvault mount`` detaches it: unmounting while a program
    still writes would let it write into the bare folder beneath, which is no loss of ours."""
    assert mount.proc is not None
    mount.proc.send_signal(signal.SIGKILL)
    mount.proc.wait(10)
    mount.proc = None


def all_safe(cluster: ProcessCluster, source: Path) -> bool:
    """Every file in SOURCE has a complete version of exactly its current content: its chunks'
    addresses, not only its size (a rewrite of the same size looked safe before the mount had
    cut its version, and two rewrites then made one version: found once commands started
    faster, in 0.15 s instead of 0.35 s)."""
    keys = KeyRing.from_master((cluster.nodes[1].state / "keys" / "master.raw").read_bytes())
    files = {f["path"]: f for f in cluster.json(1, "state")["files"]}
    for path in source.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        entry = files.get(str(path))
        data = path.read_bytes()
        if (
            entry is None
            or not entry["complete"]
            or entry["size"] != len(data)
            or any(c["degree"] < 2 for c in entry["chunks"])
        ):
            return False
        held = [c["chunk"] for c in sorted(entry["chunks"], key=lambda c: c["no"])]
        if data and held != [chunk_address(keys, piece).hex() for piece in split_bytes(data)]:
            return False
    return True


def iso_utc(seconds: float) -> str:
    """A moment as `restore --at` takes it, to the microsecond."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stuck(thread: threading.Thread) -> str:
    """Where a thread waits (its Python frame, its kernel stack) and who holds /dev/fuse."""
    frame = sys._current_frames().get(thread.ident or 0)
    where = "".join(traceback.format_stack(frame)[-2:]) if frame else "?"
    kernel = Path(f"/proc/self/task/{thread.native_id}/stack")
    holders = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            if os.readlink(fd) == "/dev/fuse":
                pid = fd.parts[2]
                holders.append(f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
    with contextlib.suppress(OSError):
        where += kernel.read_text()
    table = [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "Backup" in line
    ]
    return f"{where}; /dev/fuse held by {holders}; mounts: {table}"


def test_prune_drops_old_snapshots_and_deletes_their_chunks(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    mount, source, mnt = start_mount(cluster4, tmp_path, "--min-interval", "0")
    try:
        contents = [os.urandom(200_000) for _ in range(4)]
        for data in contents:
            (mnt / "report.odt").write_bytes(data)
            cluster4.wait(lambda: all_safe(cluster4, source), 30, "version safe")
        (mnt / "keep.txt").write_text("kept")
        cluster4.wait(lambda: all_safe(cluster4, source), 30, "safe")
        snapshots = [n for n in os.listdir(mnt / "versions") if n != "latest"]
        assert len(snapshots) >= 5

        # The chunks of the three older versions, as the owner addresses them.
        keys = KeyRing.from_master((cluster4.nodes[1].state / "keys" / "master.raw").read_bytes())
        old = {
            chunk_address(keys, piece).hex()
            for data in contents[:-1]
            for piece in split_bytes(data)
        }
        kept = {chunk_address(keys, piece).hex() for piece in split_bytes(contents[-1])}
        assert len(old) == 3 * 4 and not old & kept

        def held() -> set[str]:
            return {
                c["chunk"]
                for n in (2, 3, 4)
                for c in cluster4.json(n, "state")["stored"]
                if c["owner"] == 1
            }

        assert old <= held()
        time.sleep(3)
        dry = cluster4.json(1, "prune", "--keep", "all:2s", "--dry-run")
        assert dry["snapshots_dropped"] == len(snapshots) - 1 and dry["dry_run"]
        assert len(os.listdir(mnt / "versions")) == len(snapshots) + 1  # nothing changed yet
        done = cluster4.json(1, "prune", "--keep", "all:2s")
        assert done["snapshots_dropped"] == len(snapshots) - 1
        assert done["chunks_deleted"] >= 3 * 4  # the three older versions' chunks
        assert sorted(os.listdir(mnt / "versions"))[0] != sorted(snapshots)[0]
        assert (mnt / "versions" / "latest" / "report.odt").read_bytes() == contents[-1]
        assert (mnt / "versions" / "latest" / "keep.txt").read_text() == "kept"
        # The holders really give the space back, and what is kept stays at its degree.
        cluster4.wait(lambda: not old & held(), 30, "old chunks deleted from every holder")
        assert kept <= held()
        assert all_safe(cluster4, source)
        history = cluster4.json(1, "versions", source / "report.odt")["versions"]
        assert len(history) == 1
        out = tmp_path / "out.odt"
        cluster4.cli(1, "restore", source / "report.odt", "--to", out)
        assert out.read_bytes() == contents[-1]
    finally:
        mount.stop()


def tree_of(root: Path) -> dict[str, tuple[str, str, int, int]]:
    """Kind, content (or link target), mode and, for files and links, mtime of every entry.

    A folder's mtime is left out: adding entries moves it, and a snapshot keeps the folder's
    time of creation."""
    out: dict[str, tuple[str, str, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and "versions" in dirnames:
            dirnames.remove("versions")  # the view, not part of the tree
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path), 0, st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "", stat.S_IMODE(st.st_mode), 0)
            else:
                out[rel] = ("file", digest(path), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def test_whole_tree_restored_as_of_a_time_from_the_peers(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    mount, source, mnt = start_mount(cluster4, tmp_path)
    try:
        (mnt / "docs" / "deep").mkdir(parents=True)
        (mnt / "docs" / "a.txt").write_text("alpha")
        (mnt / "docs" / "deep" / "big.bin").write_bytes(os.urandom(500_000))
        (mnt / "run.sh").write_text("#!/bin/sh\necho hi\n")
        os.chmod(mnt / "run.sh", 0o755)
        os.chmod(mnt / "docs" / "deep", 0o700)
        os.symlink("docs/a.txt", mnt / "shortcut")
        cluster4.wait(lambda: all_safe(cluster4, source), 30, "tree safe")
        os.listdir(mnt / "versions")  # everything so far is in the newest snapshot
        then = tree_of(mnt)
        time.sleep(1.1)
        moment = iso_utc(time.time() - 0.5)
        time.sleep(1.1)
        # Later changes that must not show in a restore as of `moment`.
        (mnt / "docs" / "a.txt").write_text("changed")
        os.unlink(mnt / "run.sh")
        os.rename(mnt / "docs" / "deep", mnt / "docs" / "shallow")
        (mnt / "new.txt").write_text("new")
        cluster4.wait(lambda: all_safe(cluster4, source), 30, "changes safe")
        now = tree_of(mnt)
    finally:
        mount.stop()
    # The computer's copy is gone: SOURCE wiped, outbox too. Everything comes from peers.
    shutil.rmtree(source)
    shutil.rmtree(cluster4.nodes[1].state / "outbox", ignore_errors=True)
    past = tmp_path / "past"
    cluster4.cli(1, "restore", source, "--at", moment, "--to", past)
    assert tree_of(past) == then
    present = tmp_path / "present"
    cluster4.cli(1, "restore", source, "--to", present)
    assert tree_of(present) == now
    # One file out of the past, and a folder.
    cluster4.cli(1, "restore", source / "run.sh", "--at", moment, "--to", tmp_path / "run.sh")
    assert (tmp_path / "run.sh").stat().st_mode & 0o777 == 0o755
    cluster4.cli(1, "restore", source / "docs", "--at", moment, "--to", tmp_path / "docs-then")
    assert (tmp_path / "docs-then" / "deep" / "big.bin").stat().st_size == 500_000
    # Interrupted restores resume: a second run finds everything in place.
    again = cluster4.json(1, "restore", source, "--to", present)
    assert again["files"] >= 3


def test_a_restore_in_place_through_the_mount_records_only_the_users_files(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    """A restore into the mounted folder writes each file under a temporary name, then gives
    it its own: the history gets the restored file as a new version at its name, never the
    temporary file."""
    mount, source, mnt = start_mount(cluster4, tmp_path)
    try:
        (mnt / "docs").mkdir()
        (mnt / "docs" / "a.txt").write_text("first")
        (mnt / "docs" / "b.bin").write_bytes(os.urandom(150_000))
        cluster4.wait(lambda: all_safe(cluster4, source), 30, "first versions safe")
        time.sleep(1.1)
        moment = iso_utc(time.time() - 0.5)
        time.sleep(1.1)
        (mnt / "docs" / "a.txt").write_text("second, to be undone")
        (mnt / "docs" / "b.bin").write_bytes(os.urandom(150_000))
        cluster4.wait(lambda: all_safe(cluster4, source), 30, "second versions safe")

        cluster4.cli(1, "restore", mnt / "docs", "--at", moment)  # in place, through the mount
        assert (mnt / "docs" / "a.txt").read_bytes() == b"first"
        cluster4.wait(lambda: all_safe(cluster4, source), 30, "restored files safe")

        listed = cluster4.json(1, "versions", source / "docs" / "a.txt")["versions"]
        assert len(listed) == 3  # first, second, and the restored one as the newest
        paths = {f["path"] for f in cluster4.json(1, "state")["files"]}
        assert not [p for p in paths if ".lanvault-" in p], paths
        snapshots = sorted(n for n in os.listdir(mnt / "versions") if n != "latest")
        seen = {
            str(p.relative_to(mnt / "versions"))
            for name in snapshots
            for p in (mnt / "versions" / name).rglob("*")
        }
        assert not [p for p in seen if ".lanvault-" in p], seen
        assert (mnt / "versions" / "latest" / "docs" / "a.txt").read_bytes() == b"first"
    finally:
        mount.stop()


def test_hard_links_and_extended_attributes_of_a_mounted_tree_come_back(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    mount, source, mnt = start_mount(cluster4, tmp_path)
    try:
        (mnt / "d").mkdir()
        (mnt / "a.txt").write_text("shared")
        os.link(mnt / "a.txt", mnt / "d" / "b.txt")
        os.setxattr(mnt / "a.txt", "user.color", b"blue")
        os.setxattr(mnt / "d", "user.kind", b"folder")
        with (mnt / "sparse.img").open("wb") as handle:
            handle.write(b"x")
            handle.seek(3_000_000)
            handle.write(b"y")
        cluster4.wait(lambda: all_safe(cluster4, source), 30, "tree safe")
        os.listdir(mnt / "versions")  # everything so far is in the newest snapshot
    finally:
        mount.stop()
    out = tmp_path / "out"
    said = cluster4.cli(1, "restore", source, "--to", out).stdout
    assert "(1 of them a hard link to another)" in said, said
    a, b = os.stat(out / "a.txt"), os.stat(out / "d" / "b.txt")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert os.getxattr(out / "d" / "b.txt", "user.color") == b"blue"
    assert os.getxattr(out / "d", "user.kind") == b"folder"
    assert (out / "sparse.img").read_bytes() == (source / "sparse.img").read_bytes()
    assert os.stat(out / "sparse.img").st_blocks * 512 < 1_000_000
