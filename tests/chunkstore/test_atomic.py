"""Small files replaced durably: the old content or the new, never half, owner-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from chunkstore.atomic import write_atomic


def test_a_new_file_is_owner_only_and_a_replaced_one_is_whole(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_atomic(path, b"first")
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, b"second, longer" * 10_000)
    assert path.read_bytes() == b"second, longer" * 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # nothing left aside


def test_a_write_that_fails_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "roster"
    write_atomic(path, b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:3]))  # a write may take less than asked

    monkeypatch.setattr(os, "write", short_write)
    path = tmp_path / "peers.json"
    write_atomic(path, b"0123456789")
    assert path.read_bytes() == b"0123456789"
