"""What `lanvault backup` records is what a restore gives back (real processes, real CLI)."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
from pathlib import Path

import pytest

from .procs import ProcessCluster
from .test_network_cli import same_tree

pytestmark = pytest.mark.slow


def make_tree(root: Path) -> None:
    (root / "sub" / "empty").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (root / "link").symlink_to("sub/b.bin")


def test_backup_after_delete_records_everything_again(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    first = cluster4.json(1, "backup", src, "--degree", "2")
    # 2 files, 1 symlink and 3 folders (src, sub, sub/empty)
    assert (first["new"], first["changed"], first["unmodified"]) == (6, 0, 0)
    assert first["bytes_read"] >= 70_006
    again = cluster4.cli(1, "backup", src, "--degree", "2").stdout
    assert "0 new, 0 changed, 6 unmodified" in again and "nothing new" in again
    assert "0.0 MB read" in again
    cluster4.cli(1, "delete", src)
    after_delete = cluster4.json(1, "backup", src, "--degree", "2")
    assert after_delete["new"] == 6  # recorded again, not taken for the deleted versions
    cluster4.cli(1, "restore", src, "--to", tmp_path / "r1")
    assert same_tree(src, tmp_path / "r1")
    assert os.readlink(tmp_path / "r1" / "link") == "sub/b.bin"
    assert (tmp_path / "r1" / "sub" / "empty").is_dir()

    (src / "a.txt").write_text("alpha, edited\n")  # one change: the rest must still come back
    edited = cluster4.json(1, "backup", src, "--degree", "2")
    assert (edited["new"], edited["changed"], edited["unmodified"]) == (0, 1, 5)
    cluster4.cli(1, "restore", src, "--to", tmp_path / "r2")
    assert same_tree(src, tmp_path / "r2")
    assert min(cluster4.degrees(1)) == 2


def test_a_mode_change_alone_is_backed_up(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    secret = src / "secret.txt"
    secret.write_text("my pin is 1234\n")
    secret.chmod(0o644)
    cluster4.cli(1, "backup", src)
    secret.chmod(0o600)
    cluster4.cli(1, "backup", src)
    cluster4.cli(1, "restore", src, "--to", tmp_path / "out")
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "secret.txt").st_mode) == 0o600
    versions = cluster4.json(1, "versions", secret)
    assert len(versions["versions"]) == 2


def test_hard_links_extended_attributes_and_holes_come_back(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    first = src / "a.txt"
    first.write_text("one file, two names\n")
    os.link(first, src / "sub" / "b.txt")
    os.setxattr(first, "user.color", b"blue")
    os.setxattr(src / "sub", "user.kind", b"\x00binary\xff")
    shutil.copy2(first, src / "copy.txt")  # same content and times, but its own file
    as_root = os.geteuid() == 0
    if as_root:  # a namespace only root may write
        os.setxattr(src / "copy.txt", "trusted.origin", b"root only")
    sparse = src / "sparse.img"
    with sparse.open("wb") as handle:
        handle.write(b"head")
        handle.seek(5_000_000)
        handle.write(b"tail")
    cluster4.cli(1, "backup", src)
    out = tmp_path / "out"
    said = cluster4.cli(1, "restore", src, "--to", out).stdout
    assert "(1 of them a hard link to another)" in said
    a, b, copy = os.stat(out / "a.txt"), os.stat(out / "sub" / "b.txt"), os.stat(out / "copy.txt")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)
    assert copy.st_ino != a.st_ino and copy.st_nlink == 1
    assert os.getxattr(out / "a.txt", "user.color") == b"blue"
    assert os.getxattr(out / "copy.txt", "user.color") == b"blue"
    if as_root:
        assert os.getxattr(out / "copy.txt", "trusted.origin") == b"root only"
    assert os.getxattr(out / "sub", "user.kind") == b"\x00binary\xff"
    assert (out / "sparse.img").read_bytes() == sparse.read_bytes()
    assert os.stat(out / "sparse.img").st_blocks * 512 < 1_000_000  # the hole stayed a hole
    assert same_tree(src, out)

    # An extended attribute changed alone is a new version of the file (both its names).
    between = datetime.datetime.now(datetime.UTC).isoformat()
    os.setxattr(first, "user.color", b"red")
    os.removexattr(src / "sub", "user.kind")
    again = cluster4.json(1, "backup", src)
    assert (again["new"], again["changed"]) == (0, 3)
    cluster4.cli(1, "restore", src, "--to", tmp_path / "now")
    assert os.getxattr(tmp_path / "now" / "sub" / "b.txt", "user.color") == b"red"
    assert os.listxattr(tmp_path / "now" / "sub") == []
    assert len(cluster4.json(1, "versions", first)["versions"]) == 2
    cluster4.cli(1, "restore", first, "--to", tmp_path / "then.txt", "--at", between)
    assert os.getxattr(tmp_path / "then.txt", "user.color") == b"blue"
