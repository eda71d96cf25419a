"""A mount that leaves things out (`lanvault mount --exclude`): node_modules and object files
are real files in SOURCE but never in the history; moving them in or out of what is left out
records or removes them; the patterns are kept for the next mounts and their catch-ups."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.system.procs import lanvault

from .conftest import Mount

pytestmark = [pytest.mark.fuse]


def recorded(mount: Mount) -> set[str]:
    """Every path in the newest snapshot (versions/latest), relative."""
    latest = mount.mountpoint / "versions" / "latest"
    found = set()
    for dirpath, dirnames, filenames in os.walk(latest):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), latest))
    return found


def test_what_a_mount_leaves_out_is_never_recorded(mount_with: Callable[..., Mount]) -> None:
    mount = mount_with("--exclude", "node_modules", "--exclude", "*.o")
    mount.wait_ready()
    assert "never recorded: node_modules, *.o" in mount.log.read_text()
    m = mount.mountpoint
    (m / "a.txt").write_text("kept")
    (m / "node_modules" / "pkg").mkdir(parents=True)
    (m / "node_modules" / "pkg" / "index.js").write_text("left out")
    (m / "main.o").write_bytes(b"\x7fELF")
    (m / "src").mkdir()
    (m / "src" / "x.c").write_text("int x;")
    (m / "src" / "x.o").write_bytes(b"\x7fELF")
    assert recorded(mount) == {"a.txt", "src", "src/x.c"}
    assert (mount.source / "node_modules" / "pkg" / "index.js").read_text() == "left out"
    # Out of what is left out: recorded, whole (a file, and a folder with what it holds).
    os.rename(m / "main.o", m / "main.bin")
    os.rename(m / "node_modules", m / "vendor")
    assert recorded(mount) == {
        "a.txt", "main.bin", "src", "src/x.c", "vendor", "vendor/pkg", "vendor/pkg/index.js"
    }  # fmt: skip
    assert (m / "versions" / "latest" / "vendor" / "pkg" / "index.js").read_text() == "left out"
    # Into it: gone from the newest snapshot (still in the older ones).
    os.rename(m / "src", m / "node_modules")
    assert recorded(mount) == {
        "a.txt", "main.bin", "vendor", "vendor/pkg", "vendor/pkg/index.js"
    }  # fmt: skip
    mount.stop()

    # Changed while unmounted; mounted again without options: the kept patterns apply to the
    # catch-up and to what comes through the mount.
    s = mount.source
    (s / "later" / "node_modules").mkdir(parents=True)
    (s / "later" / "node_modules" / "y.js").write_text("left out")
    (s / "b.txt").write_text("kept")
    mount.extra = ()
    mount.start()
    mount.wait_ready()
    (m / "c.o").write_bytes(b"\x7fELF")
    assert recorded(mount) >= {"b.txt", "later"}
    assert not {p for p in recorded(mount) if "node_modules" in p or p.endswith(".o")}
    mount.stop()

    # --no-exclude: everything is recorded again (the catch-up finds what was left out).
    mount.extra = ("--no-exclude",)
    mount.start()
    mount.wait_ready()
    assert {"c.o", "node_modules/x.o", "later/node_modules/y.js"} <= recorded(mount)


def test_a_bad_pattern_or_mixed_options_are_wrong_usage(node_state: Path, tmp_path: Path) -> None:
    state = node_state
    (tmp_path / "src").mkdir()
    (tmp_path / "mnt2").mkdir()
    for extra in (["--exclude", "[abc"], ["--no-exclude", "--exclude", "x"]):
        result = lanvault(
            "mount", tmp_path / "src", tmp_path / "mnt2", "--dir", state, *extra, check=False
        )
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
