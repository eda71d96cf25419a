"""The read descriptors a chunk store keeps: bounded, never closed under a reader, and a store
shared with another process (the daemon reads the mount's outbox) reads right through that
process's compactions without holding descriptors of deleted segments for ever."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import chunkstore.readfds as readfds_module
import chunkstore.segments as store_module
from chunkstore.errors import ChunkNotFoundError
from chunkstore.keys import KeyRing
from chunkstore.pipeline import prepare_chunk
from chunkstore.readfds import MAX_IDLE_READ_FDS, ReadFds
from chunkstore.segments import SegmentBackend
from chunkstore.store import ChunkStore, PutItem


def segments(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for n in range(count):
        path = tmp_path / f"{n:08}.seg"
        path.write_bytes(b"x" * 10)
        paths.append(path)
    return paths


def test_idle_descriptors_are_bounded_least_recently_used_first(tmp_path: Path) -> None:
    fds = ReadFds(limit=4)
    paths = segments(tmp_path, 10)
    for n, path in enumerate(paths):
        fd, fresh = fds.acquire(n, path)
        assert fresh
        fds.release(n, fd)
    assert fds.open_count == 4
    fd, fresh = fds.acquire(9, paths[9])  # the most recent is still open
    assert not fresh
    fds.release(9, fd)
    fd, fresh = fds.acquire(0, paths[0])  # the oldest was closed
    assert fresh
    fds.release(0, fd)
    fds.close_all()
    assert fds.open_count == 0


def test_a_descriptor_in_use_is_never_closed_under_its_reader(tmp_path: Path) -> None:
    fds = ReadFds(limit=1)
    paths = segments(tmp_path, 3)
    busy, _ = fds.acquire(0, paths[0])
    for n in (1, 2):  # over the limit while segment 0 is read: the idle ones go
        fd, _ = fds.acquire(n, paths[n])
        fds.release(n, fd)
    assert os.pread(busy, 10, 0) == b"x" * 10
    fds.forget(0)  # rewritten meanwhile: closed when its reader is done, not before
    assert os.pread(busy, 10, 0) == b"x" * 10
    fds.release(0, busy)
    with pytest.raises(OSError):
        os.fstat(busy)
    fds.close_all()


def test_idle_descriptors_of_deleted_segments_are_closed_within_a_second(tmp_path: Path) -> None:
    now = [0.0]
    fds = ReadFds(limit=8, clock=lambda: now[0])
    paths = segments(tmp_path, 4)
    for n, path in enumerate(paths):
        fd, _ = fds.acquire(n, path)
        fds.release(n, fd)
    busy, _ = fds.acquire(1, paths[1])  # being read: kept even once deleted
    paths[0].unlink()
    paths[1].unlink()
    now[0] = 0.5
    fd, _ = fds.acquire(3, paths[3])
    fds.release(3, fd)
    assert fds.open_count == 4  # not looked at yet: at most once a second
    now[0] = 1.0
    fd, _ = fds.acquire(3, paths[3])
    fds.release(3, fd)
    assert fds.open_count == 3  # segment 0's closed; 1's is still read
    assert os.pread(busy, 10, 0) == b"x" * 10
    fds.release(1, busy)
    now[0] = 2.0
    fd, _ = fds.acquire(2, paths[2])
    fds.release(2, fd)
    assert fds.open_count == 2
    fds.close_all()


def deleted_segments_held(root: Path) -> int:
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)) and target.endswith("(deleted)"):
            held += 1
    return held


def read_fds_open(store: ChunkStore) -> int:
    assert isinstance(store.backend, SegmentBackend)
    return store.backend.read_fds_open


def test_a_store_shared_with_another_process_reads_through_its_compactions(
    tmp_path: Path, keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak found the daemon's open files growing: it kept a descriptor of every segment
    of the mount's outbox it ever read, deleted ones included."""
    monkeypatch.setattr(store_module, "SEGMENT_LIMIT", 100_000)  # many small segments
    writer = ChunkStore.open(tmp_path / "outbox", capacity=10**9)  # the mount's
    reader = ChunkStore.open(tmp_path / "outbox", capacity=10**9)  # the daemon's
    try:
        chunks = [prepare_chunk(keys, os.urandom(20_000)) for _ in range(300)]
        writer.put_many([PutItem(1, c.address, c.envelope, 1) for c in chunks])
        for c in chunks:
            assert reader.get(1, c.address) == c.envelope
        assert read_fds_open(reader) <= MAX_IDLE_READ_FDS
        for round_no in range(3):  # the writer drops some, compacts, and the reader goes on
            gone = chunks[round_no::4]
            writer.delete_many(1, [c.address for c in gone])
            writer.compact(0.01)
            chunks = [c for c in chunks if c not in gone]
            for c in chunks:
                assert reader.get(1, c.address) == c.envelope
            assert read_fds_open(reader) <= MAX_IDLE_READ_FDS
        assert deleted_segments_held(tmp_path / "outbox") <= MAX_IDLE_READ_FDS
        assert reader.scrub() == []  # nothing taken for damaged because it moved
        # A second on, the next read closes every idle descriptor of a deleted segment (the
        # hour's soak found 31 held by the daemon, each holding its segment's disk space).
        monkeypatch.setattr(readfds_module, "SWEEP_INTERVAL", 0.0)
        assert reader.get(1, chunks[0].address) == chunks[0].envelope
        assert deleted_segments_held(tmp_path / "outbox") == 0
    finally:
        writer.close()
        reader.close()
    assert deleted_segments_held(tmp_path / "outbox") == 0


def test_a_chunk_removed_by_the_other_process_is_not_taken_for_damaged(
    tmp_path: Path, keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between looking a chunk up and reading it, the other process deleted it and compacted
    its segment away: the read says "not found", not "corrupt" (a corrupt copy is reported
    and re-made; this one is simply gone)."""
    monkeypatch.setattr(store_module, "SEGMENT_LIMIT", 100_000)
    writer = ChunkStore.open(tmp_path / "outbox", capacity=10**9)
    reader = ChunkStore.open(tmp_path / "outbox", capacity=10**9)
    try:
        chunks = [prepare_chunk(keys, os.urandom(20_000)) for _ in range(12)]
        writer.put_many([PutItem(1, c.address, c.envelope, 1) for c in chunks])
        gone = chunks[0]
        stale = reader.index.location(1, gone.address)
        assert stale is not None
        writer.delete_many(1, [gone.address])
        writer.compact(0.01)
        with pytest.raises(ChunkNotFoundError):
            reader.backend.read(1, gone.address, stale)
        assert reader.get(1, chunks[1].address) == chunks[1].envelope
    finally:
        writer.close()
        reader.close()
