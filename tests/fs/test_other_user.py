"""The mount as another local user sees it (the mount runs as root with allow_other)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from .conftest import Mount

pytestmark = pytest.mark.fuse

NOBODY = 65534


def as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return subprocess.run(
        command, preexec_fn=drop, capture_output=True, text=True, check=True, timeout=60
    )


def open_to_all(path: Path) -> None:
    """Let another user reach ``path`` (pytest's temporary folders are the owner's only)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if parent == Path("/"):
            break
        os.chmod(parent, stat.S_IMODE(mode) | 0o011)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_cp_a_shows_the_copied_mode_at_once(mounted: Mount, tmp_path: Path) -> None:
    open_to_all(mounted.mountpoint)
    work = tmp_path / "home"
    work.mkdir()
    open_to_all(work)
    os.chown(work, NOBODY, NOBODY)
    os.chown(mounted.source, NOBODY, NOBODY)
    for n in range(3):
        src = work / f"f{n}.txt"
        src.write_text("hello\n")
        os.chown(src, NOBODY, NOBODY)
        os.chmod(src, 0o644)
        dest = mounted.mountpoint / f"f{n}.txt"
        out = as_nobody("sh", "-c", f"cp -a '{src}' '{dest}' && stat -c %a '{dest}'")
        assert out.stdout.strip() == "644", out
