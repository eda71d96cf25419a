"""versions/ on a mount without peers: snapshots, read-only, and catching up at mount time."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from .conftest import Mount

pytestmark = pytest.mark.fuse


def latest(mount: Mount) -> Path:
    return mount.mountpoint / "versions" / "latest"


def test_snapshots_follow_the_tree(mounted: Mount) -> None:
    m = mounted.mountpoint
    assert os.listdir(m) == ["versions"]
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
