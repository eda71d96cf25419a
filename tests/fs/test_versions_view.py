"""versions/ on a mount without peers: snapshots, read-only, and catching up at mount time."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lanvault.mounts import is_live, unmount
from tests.system.procs import ROOT, env

from .conftest import Mount, fuse_available

pytestmark = pytest.mark.fuse


def latest(mount: Mount) -> Path:
    return mount.mountpoint / "versions" / "latest"


def test_snapshots_follow_the_tree(mounted: Mount) -> None:
    m = mounted.mountpoint
    assert os.listdir(m) == ["versions"]
    mounted.wait_ready()  # it says when it is ready
    (m / "a.txt").write_text("one")
    (m / "dir").mkdir()
    os.symlink("a.txt", m / "dir" / "link")
    (m / "a.txt").write_text("two")
    # Looking at versions/ shows everything saved so far (each commit is one snapshot; a save
    # and a rename committed together would show only the renamed file).
    assert (latest(mounted) / "a.txt").read_text() == "two"
    os.rename(m / "a.txt", m / "dir" / "b.txt")
    assert sorted(os.listdir(latest(mounted))) == ["dir"]
    assert sorted(os.listdir(latest(mounted) / "dir")) == ["b.txt", "link"]
    assert (latest(mounted) / "dir" / "b.txt").read_text() == "two"
    assert os.readlink(latest(mounted) / "dir" / "link") == "a.txt"
    contents = set()
    for snapshot in os.listdir(m / "versions"):
        file = m / "versions" / snapshot / "a.txt"
        if file.exists():
            contents.add(file.read_text())
    assert contents == {"one", "two"}
    with pytest.raises(OSError) as info:
        (latest(mounted) / "dir" / "b.txt").write_text("x")
    assert info.value.errno == errno.EROFS
    with pytest.raises(OSError) as info:
        os.rename(m / "versions", m / "elsewhere")
    assert info.value.errno == errno.EROFS


def test_changes_made_while_unmounted_are_caught_up(mounted: Mount) -> None:
    m, s = mounted.mountpoint, mounted.source
    (m / "keep.txt").write_text("same")
    (m / "edit.txt").write_text("before")
    (m / "gone.txt").write_text("bye")
    os.symlink("keep.txt", m / "pointer")
    mounted.stop()
    os.unlink(s / "pointer")
    os.symlink("edit.txt", s / "pointer")
    (s / "edit.txt").write_text("after, while unmounted")
    (s / "gone.txt").unlink()
    (s / "new").mkdir()
    (s / "new" / "file.bin").write_bytes(os.urandom(100_000))
    mounted.start()
    view = latest(mounted)
    assert sorted(os.listdir(view)) == ["edit.txt", "keep.txt", "new", "pointer"]
    assert os.readlink(view / "pointer") == "edit.txt"
    assert (view / "edit.txt").read_text() == "after, while unmounted"
    assert (view / "new" / "file.bin").read_bytes() == (s / "new" / "file.bin").read_bytes()
    assert (view / "keep.txt").read_text() == "same"


def test_hard_links_and_extended_attributes_in_snapshots(mounted: Mount) -> None:
    m = mounted.mountpoint
    (m / "dir").mkdir()
    (m / "a.txt").write_text("one file")
    os.link(m / "a.txt", m / "dir" / "b.txt")
    (m / "other.txt").write_text("one file")  # same content, its own file
    os.setxattr(m / "a.txt", "user.color", b"blue")
    os.setxattr(m / "dir", "user.kind", b"folder")
    snap = latest(mounted)
    a, b, other = (os.stat(snap / p) for p in ("a.txt", "dir/b.txt", "other.txt"))
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert other.st_ino != a.st_ino and other.st_nlink == 1
    assert os.getxattr(snap / "dir" / "b.txt", "user.color") == b"blue"
    assert os.listxattr(snap / "other.txt") == []
    assert os.getxattr(snap / "dir", "user.kind") == b"folder"
    before = {name for name in os.listdir(m / "versions") if name != "latest"}

    os.setxattr(m / "dir" / "b.txt", "user.color", b"red")  # through the other name
    os.removexattr(m / "dir", "user.kind")
    assert os.getxattr(snap / "a.txt", "user.color") == b"red"
    assert os.listxattr(snap / "dir") == []
    with pytest.raises(OSError) as info:
        os.setxattr(snap / "a.txt", "user.color", b"green")
    assert info.value.errno == errno.EROFS
    # The snapshots from before still show the attributes as they were then.
    old = m / "versions" / max(before)
    assert os.getxattr(old / "a.txt", "user.color") == b"blue"
    assert os.getxattr(old / "dir", "user.kind") == b"folder"
    # Unlinking one name leaves one name in the newest snapshot.
    os.unlink(m / "a.txt")
    assert os.stat(latest(mounted) / "dir" / "b.txt").st_nlink == 1
    assert os.stat(old / "dir" / "b.txt").st_nlink == 2


def test_extended_attributes_set_while_unmounted_are_caught_up(mounted: Mount) -> None:
    m, s = mounted.mountpoint, mounted.source
    (m / "f.txt").write_text("x")
    (m / "d").mkdir()
    mounted.stop()
    os.setxattr(s / "f.txt", "user.tag", b"1")
    os.setxattr(s / "d", "user.tag", b"2")
    mounted.start()
    assert os.getxattr(latest(mounted) / "f.txt", "user.tag") == b"1"
    assert os.getxattr(latest(mounted) / "d", "user.tag") == b"2"


def test_a_source_already_mounted_is_refused_a_second_mount(mounted: Mount, tmp_path: Path) -> None:
    other = tmp_path / "mnt2"
    other.mkdir()
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "lanvault.cli",
            "mount",
            str(mounted.source),
            str(other),
            "--dir",
            str(mounted.state),
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"is already mounted at {mounted.mountpoint}" in second.stderr
    assert not os.path.ismount(other)


def test_mount_daemon_returns_once_mounted_and_says_why_it_could_not(
    node_state: Path, tmp_path: Path
) -> None:
    why = fuse_available()
    if why:
        pytest.skip(why)
    source, mountpoint = tmp_path / "source", tmp_path / "mnt"
    source.mkdir()
    mountpoint.mkdir()
    command = [sys.executable, "-m", "lanvault.cli", "mount", "--dir", str(node_state), "--daemon"]
    started = subprocess.run(
        [*command, str(source), str(mountpoint)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stderr
        assert f"mounted at {mountpoint}" in started.stderr
        assert "runs in the background" in started.stderr
        assert is_live(mountpoint)  # mounted when the command returned, not later
        (mountpoint / "a.txt").write_text("kept")
    finally:
        unmount(mountpoint)
    assert (source / "a.txt").read_text() == "kept"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("not to be hidden")
    refused = subprocess.run(
        [*command, str(source), str(tmp_path / "busy")],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "is not empty" in refused.stderr
    assert not os.path.ismount(tmp_path / "busy")
