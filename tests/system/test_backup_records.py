"""What `lanvault backup` records is what a restore gives back (real processes, real CLI)."""

from __future__ import annotations

import os
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
