"""Attacks on the promises in docs/security.md, with real node processes and the real CLI.

Run as root; "another local user" is uid 1000 (files and links chowned to it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from .procs import ProcessCluster

pytestmark = pytest.mark.slow
MALLORY = 1000


def test_restore_never_writes_through_another_users_symlink(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    home = tmp_path / "home" / "mallory"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "passwd").write_text("mallory's notes\n")
    cluster4.cli(1, "backup", home)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (home / "docs" / "passwd").unlink()
    (home / "docs").rmdir()
    (home / "docs").symlink_to(elsewhere)  # mallory points her folder at a system one
    os.lchown(home / "docs", MALLORY, MALLORY)

    result = cluster4.cli(1, "restore", home / "docs" / "passwd", check=False)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"symlink owned by uid {MALLORY}" in result.stderr
    assert list(elsewhere.iterdir()) == []

    cluster4.cli(1, "restore", home)  # the whole folder in place: its folder comes back real
    assert list(elsewhere.iterdir()) == []
    assert (home / "docs").is_dir() and not (home / "docs").is_symlink()
    assert (home / "docs" / "passwd").read_text() == "mallory's notes\n"


def test_a_planted_temporary_file_gets_nothing(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    secret = src / "secret.txt"
    secret.write_text("the owner's secret\n")
    os.chown(secret, 1001, 1001)
    secret.chmod(0o600)
    cluster4.cli(1, "backup", secret)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    planted = shared / ".secret.txt.lanvault-restore"  # the fixed name restores once used
    planted.write_bytes(b"")
    os.chown(planted, MALLORY, MALLORY)
    planted.chmod(0o666)
    cluster4.cli(1, "restore", secret, "--to", shared / "secret.txt")
    st = os.stat(shared / "secret.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1001, 1001, 0o600)
    assert (shared / "secret.txt").read_text() == "the owner's secret\n"
    assert planted.read_bytes() == b"" and planted.stat().st_uid == MALLORY
    assert sorted(p.name for p in shared.iterdir()) == [planted.name, "secret.txt"]
