"""Paths inside a mount name SOURCE's backups (lanvault/state.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lanvault.state import StateDir


def test_mount_paths_map_to_source(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    assert state.backup_path(Path("/home/ann/vault/a.txt")) == "/home/ann/vault/a.txt"
    state.record_mount(Path("/home/ann/vault"), Path("/srv/data"))
    state.record_mount(Path("/home/ann/vault/inner"), Path("/srv/other"))
    assert state.backup_path(Path("/home/ann/vault")) == "/srv/data"
    assert state.backup_path(Path("/home/ann/vault/docs/../a.txt")) == "/srv/data/a.txt"
    assert state.backup_path(Path("/home/ann/vault/inner/b")) == "/srv/other/b"  # the longest
    assert state.backup_path(Path("/home/ann/vault2/c")) == "/home/ann/vault2/c"  # a sibling
    assert state.backup_path(Path("/srv/data/a.txt")) == "/srv/data/a.txt"  # SOURCE itself
    assert not state.in_live_mount(Path("/home/ann/vault/a.txt"))  # not mounted now
    state.record_mount(Path("/home/ann/vault"), Path("/srv/moved"))  # mounted again elsewhere
    assert state.backup_path(Path("/home/ann/vault/a.txt")) == "/srv/moved/a.txt"


def test_a_damaged_mount_list_is_ignored(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.mounts_path.write_text("{not json")
    assert state.backup_path(Path("/x/y")) == "/x/y"
    state.record_mount(Path("/x"), Path("/src"))
    assert state.backup_path(Path("/x/y")) == "/src/y"


def test_mounts_starting_at_once_are_all_recorded(tmp_path: Path) -> None:
    # Each mount notes itself at start; several starting together must not lose each other.
    writer = (
        "import sys\nfrom pathlib import Path\nfrom lanvault.state import StateDir\n"
        "state = StateDir(Path(sys.argv[1]))\n"
        "for i in range(25):\n"
        "    state.record_mount(Path(f'/m/{sys.argv[2]}/{i}'), Path(f'/s/{sys.argv[2]}/{i}'))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, str(tmp_path), str(n)]) for n in range(6)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    mounts = StateDir(tmp_path).mounts()
    assert len(mounts) == 6 * 25
    assert mounts["/m/3/7"] == "/s/3/7"
