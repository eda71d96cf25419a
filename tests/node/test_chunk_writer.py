"""The restore's file writer: runs of consecutive chunks in any order, writeback started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkstore.chunking import CHUNK_SIZE
from node.restore_windows import ChunkWriter


def chunk(no: int, size: int = CHUNK_SIZE) -> bytes:
    return bytes([no % 251]) * size


def test_chunks_in_any_order_land_at_their_offsets(tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = ChunkWriter(fd)
        # Two runs (5..7 and 9), out of order; then a gap filled later, and a short last chunk.
        assert writer.write([(7, chunk(7)), (5, chunk(5)), (9, chunk(9)), (6, chunk(6))]) == (
            4 * CHUNK_SIZE
        )
        assert writer.write([(8, chunk(8)), (10, chunk(10, 123)), (11, b"")]) == CHUNK_SIZE + 123
        first = [(no, chunk(no)) for no in range(5)]
        assert writer.write(first) == 5 * CHUNK_SIZE
    finally:
        os.close(fd)
    expected = b"".join(chunk(no) for no in range(10)) + chunk(10, 123)
    assert path.read_bytes() == expected


def test_writeback_is_started_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hints: list[int] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, size, advice: hints.append(advice))
    monkeypatch.setattr(ChunkWriter, "WRITEBACK_STEP", 3 * CHUNK_SIZE)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = ChunkWriter(fd)
        for no in range(7):
            writer.write([(no, chunk(no))])
    finally:
        os.close(fd)
    assert hints == [os.POSIX_FADV_DONTNEED] * 2
