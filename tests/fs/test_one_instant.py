"""Through a real mount: a file rewritten continuously while its versions are cut gets
versions that are each one instant's content, never a mix of two writes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from .conftest import Mount

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

CHUNK = 64_000
CHUNKS = 160  # 10 MB: a cut takes long enough for the writer to race it


def generation_of(data: bytes) -> set[int]:
    return {data[i] for i in range(0, len(data), CHUNK // 4)}


def test_versions_cut_while_the_file_is_rewritten_are_never_torn(
    mount_with: Callable[..., Mount],
) -> None:
    mount = mount_with("--min-interval", "0")
    mnt = mount.mountpoint
    path = mnt / "busy.bin"
    deadline = time.monotonic() + 8
    generation = 0
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    while time.monotonic() < deadline:
        generation = generation % 250 + 1
        block = bytes([generation]) * CHUNK
        # Chunks in an order a cut does not read in: back to front.
        for no in reversed(range(CHUNKS)):
            os.pwrite(fd, block, no * CHUNK)
        # A version is cut here, and the next generation starts at once, racing it.
        os.fsync(fd) if generation % 3 == 0 else os.close(os.dup(fd))
    os.close(fd)
    snapshots = [n for n in os.listdir(mnt / "versions") if n != "latest"]
    assert len(snapshots) >= 5, snapshots
    seen = set()
    for name in snapshots:
        data = (mnt / "versions" / name / "busy.bin").read_bytes()
        assert len(data) == CHUNKS * CHUNK
        mixed = generation_of(data)
        assert len(mixed) == 1, f"snapshot {name} mixes generations {sorted(mixed)}"
        seen |= mixed
    assert len(seen) >= 3  # the test did race several cuts
