"""The mounted folder behaves like a normal folder (real FUSE, real kernel)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import pytest

from .conftest import Mount

pytestmark = pytest.mark.fuse


def test_files_and_offsets(mounted: Mount) -> None:
    m, s = mounted.mountpoint, mounted.source
    (m / "a.txt").write_bytes(b"hello world")
    assert (s / "a.txt").read_bytes() == b"hello world"
    with open(m / "a.txt", "r+b") as handle:
        handle.seek(6)
        handle.write(b"there")
    assert (m / "a.txt").read_bytes() == b"hello there"
    with open(m / "a.txt", "ab") as handle:  # O_APPEND
        handle.write(b"!")
    assert (s / "a.txt").read_bytes() == b"hello there!"
    os.truncate(m / "a.txt", 5)
    assert (m / "a.txt").read_bytes() == b"hello"
    with open(m / "a.txt", "wb") as handle:  # O_TRUNC
        handle.write(b"new")
    assert (s / "a.txt").read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        os.open(m / "a.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_read_only_exclusive_create_as_lock_files_do(mounted: Mount) -> None:
    """open(O_CREAT|O_EXCL|O_RDONLY), as flock(1) and lock-file libraries do, made EINVAL."""
    m, s = mounted.mountpoint, mounted.source
    fd = os.open(m / "app.lock", os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert os.read(fd, 10) == b""
    finally:
        os.close(fd)
    assert (s / "app.lock").read_bytes() == b""
    assert stat.S_IMODE((s / "app.lock").stat().st_mode) == 0o644 & ~current_umask()
    with pytest.raises(FileExistsError):
        os.open(m / "app.lock", os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o644)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_sparse_and_large_offsets(mounted: Mount) -> None:
    path = mounted.mountpoint / "sparse.bin"
    with open(path, "wb") as handle:
        handle.seek(5 * 2**30)  # beyond 4 GiB
        handle.write(b"end")
    assert path.stat().st_size == 5 * 2**30 + 3
    with open(path, "rb") as handle:
        handle.seek(5 * 2**30 - 2)
        assert handle.read() == b"\0\0end"


def test_directories_renames_links(mounted: Mount) -> None:
    m, s = mounted.mountpoint, mounted.source
    (m / "dir" / "sub").mkdir(parents=True)
    (m / "dir" / "sub" / "f").write_text("x")
    os.rename(m / "dir", m / "moved")
    assert (m / "moved" / "sub" / "f").read_text() == "x"
    assert (s / "moved" / "sub" / "f").exists()
    (m / "target").write_text("new")
    os.rename(m / "moved" / "sub" / "f", m / "target")  # over an existing file, atomically
    assert (m / "target").read_text() == "x"
    with pytest.raises(OSError) as info:
        os.rmdir(m / "moved")
    assert info.value.errno == errno.ENOTEMPTY
    os.rmdir(m / "moved" / "sub")
    os.rmdir(m / "moved")
    os.symlink("target", m / "link")
    assert os.readlink(m / "link") == "target" and (m / "link").read_text() == "x"
    os.link(m / "target", m / "hard")
    assert (m / "hard").stat().st_ino == (m / "target").stat().st_ino
    assert (m / "target").stat().st_nlink == 2


def test_unlink_while_open(mounted: Mount) -> None:
    path = mounted.mountpoint / "open.txt"
    path.write_text("still here")
    with open(path) as handle:
        os.unlink(path)
        assert not path.exists()
        assert handle.read() == "still here"


def test_metadata_xattrs_fsync_statfs(mounted: Mount) -> None:
    m = mounted.mountpoint
    path = m / "meta.txt"
    path.write_text("x")
    os.chmod(path, 0o640)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    assert path.stat().st_mtime_ns == 2_000_000_000
    os.chown(path, 1234, 5678)
    assert (path.stat().st_uid, path.stat().st_gid) == (1234, 5678)
    os.setxattr(path, "user.lanvault.degree", b"3")
    assert os.getxattr(path, "user.lanvault.degree") == b"3"
    assert "user.lanvault.degree" in os.listxattr(path)
    os.removexattr(path, "user.lanvault.degree")
    fd = os.open(path, os.O_RDWR)
    os.write(fd, b"y")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    assert os.statvfs(m).f_blocks > 0


def test_names_with_spaces_and_utf8(mounted: Mount) -> None:
    name = "naïve résumé — 2026 (final).odt"
    (mounted.mountpoint / name).write_text("ok")
    assert name in os.listdir(mounted.mountpoint)
    assert (mounted.source / name).read_text() == "ok"


def test_errors_reach_the_application(mounted: Mount) -> None:
    m = mounted.mountpoint
    with pytest.raises(FileNotFoundError):
        (m / "missing").read_text()
    (m / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        os.listdir(m / "file")
    (m / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        (m / "d").read_text()
    assert os.path.ismount(m)  # nothing took the mount down


def test_inode_numbers_are_stable_across_remounts(mounted: Mount) -> None:
    (mounted.mountpoint / "stable").write_text("x")
    before = (mounted.mountpoint / "stable").stat().st_ino
    mounted.stop()
    mounted.start()
    assert (mounted.mountpoint / "stable").stat().st_ino == before
    assert before == (mounted.source / "stable").stat().st_ino


def test_mount_over_the_source_itself(tmp_path: Path, node_state: Path) -> None:
    folder = tmp_path / "inplace"
    folder.mkdir()
    (folder / "old.txt").write_text("kept")
    mount = Mount(node_state, folder, folder, tmp_path / "inplace.log")
    mount.start()
    try:
        assert (folder / "old.txt").read_text() == "kept"
        (folder / "new.txt").write_text("added")
    finally:
        mount.stop()
    assert (folder / "new.txt").read_text() == "added"
