"""Through a real mount whose closed files wait a whole minute for a burst to pause
(``--burst-wait 60``): waiting changes when a version is cut, never what the history records.
Every file closed in the burst is in ``versions/`` as soon as someone looks; a file removed,
renamed or truncated while it waits keeps the version it had when closed; an fsync'd file is
recorded before fsync returns; an unmount records what still waits."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Mount

pytestmark = [pytest.mark.fuse]


def versions_in_catalog(node_state: Path, name: str) -> int:
    """Versions of files called ``name`` the catalog holds (read without the mount)."""
    with sqlite3.connect(f"file:{node_state / 'catalog.sqlite3'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COUNT(*) FROM versions WHERE path LIKE ?", (f"%/{name}",))
        return int(row.fetchone()[0])


def test_a_burst_is_recorded_whole_when_versions_are_looked_at(
    mount_with: Callable[..., Mount],
) -> None:
    mount = mount_with("--burst-wait", "60")
    mnt = mount.mountpoint
    (mnt / "tree").mkdir()
    for i in range(200):
        (mnt / "tree" / f"f{i:03}").write_bytes(b"%d" % i * 100)
    # Opening versions/ cuts what waits and waits for it: everything closed is there.
    latest = mnt / "versions" / "latest" / "tree"
    assert sorted(os.listdir(latest)) == [f"f{i:03}" for i in range(200)]
    for i in range(200):
        assert (latest / f"f{i:03}").read_bytes() == b"%d" % i * 100


def test_a_waiting_file_removed_renamed_or_truncated_keeps_its_version(
    mount_with: Callable[..., Mount], node_state: Path
) -> None:
    mount = mount_with("--burst-wait", "60", "--min-interval", "0")
    mnt = mount.mountpoint
    (mnt / "gone.txt").write_bytes(b"written, then removed in the burst")
    os.unlink(mnt / "gone.txt")
    (mnt / "old.txt").write_bytes(b"written under its old name")
    os.rename(mnt / "old.txt", mnt / "new.txt")
    (mnt / "doc.txt").write_bytes(b"the first draft")
    (mnt / "doc.txt").write_bytes(b"the second")  # opened with O_TRUNC while the first waits
    os.listdir(mnt / "versions")  # what waits is cut now, and all of it is recorded
    # Each was cut before the change reached it (one commit may record both: then no
    # snapshot shows it, and its version is in the catalog, as `lanvault versions` lists).
    assert versions_in_catalog(node_state, "gone.txt") == 1
    assert versions_in_catalog(node_state, "old.txt") == 1
    assert versions_in_catalog(node_state, "doc.txt") == 2  # the first draft, and the second
    assert (mnt / "versions" / "latest" / "new.txt").read_bytes() == b"written under its old name"
    assert (mnt / "versions" / "latest" / "doc.txt").read_bytes() == b"the second"
    assert not (mnt / "versions" / "latest" / "gone.txt").exists()


def test_fsync_does_not_wait_for_the_burst(
    mount_with: Callable[..., Mount], node_state: Path
) -> None:
    mount = mount_with("--burst-wait", "60")
    mnt = mount.mountpoint
    (mnt / "waits.txt").write_bytes(b"closed only")
    with open(mnt / "synced.txt", "wb") as handle:
        handle.write(b"fsync'd")
        handle.flush()
        os.fsync(handle.fileno())
        # Recorded in the catalog before fsync returned (the other file still waits).
        assert versions_in_catalog(node_state, "synced.txt") == 1
    assert versions_in_catalog(node_state, "waits.txt") == 0


def test_an_unmount_records_what_still_waits(
    mount_with: Callable[..., Mount], node_state: Path
) -> None:
    mount = mount_with("--burst-wait", "60")
    for i in range(20):
        (mount.mountpoint / f"w{i}").write_bytes(b"x" * i)
    mount.stop()
    assert all(versions_in_catalog(node_state, f"w{i}") == 1 for i in range(20))


def test_files_waiting_when_the_mount_is_killed_are_recorded_by_the_next_mount(
    mount_with: Callable[..., Mount], node_state: Path
) -> None:
    """Waiting widens the time between a close and its version: a mount SIGKILLed meanwhile
    leaves the files in SOURCE, and the next mount's catch-up records them."""
    mount = mount_with("--burst-wait", "60")
    mnt = mount.mountpoint
    contents = {f"k{i}.txt": os.urandom(100 + i) for i in range(30)}
    for name, data in contents.items():
        (mnt / name).write_bytes(data)
    assert mount.proc is not None
    mount.proc.kill()  # SIGKILL: no unmount, no settle
    mount.proc.wait(10)
    assert all(versions_in_catalog(node_state, name) == 0 for name in contents)  # still waiting
    mount.start()
    mount.wait_ready()
    latest = mnt / "versions" / "latest"
    assert {name: (latest / name).read_bytes() for name in contents} == contents
    assert all(versions_in_catalog(node_state, name) == 1 for name in contents)
