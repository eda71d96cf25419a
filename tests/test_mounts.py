"""Reading the kernel's mount table (lanvault/mounts.py): escapes, and what is mounted where."""

from __future__ import annotations

from pathlib import Path

from lanvault.mounts import _unescape, is_dead, is_live, mounted_fsname


def test_mount_table_escapes_are_undone() -> None:
    assert _unescape(r"/home/a\040b/my\011vault") == "/home/a b/my\tvault"
    assert _unescape(r"back\134slash") == "back\\slash"
    assert _unescape("plain") == "plain" and _unescape("end\\04") == "end\\04"


def test_a_plain_folder_is_neither_mounted_nor_dead(tmp_path: Path) -> None:
    assert mounted_fsname(tmp_path) is None
    assert not is_dead(tmp_path) and not is_live(tmp_path)
    assert not is_dead(tmp_path / "missing")
    assert mounted_fsname(Path("/proc")) == "proc" and is_live(Path("/proc"))
