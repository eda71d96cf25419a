from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkstore.errors import (
    ChunkNotFoundError,
    ChunkstoreError,
    CorruptChunkError,
    DiskFullError,
    InvalidIdError,
    QuotaExceededError,
)
from chunkstore.keys import KeyRing
from chunkstore.pipeline import PreparedChunk, prepare_chunk
from chunkstore.segments import DISK_RESERVE, pwrite_all
from chunkstore.store import ChunkStore, PutItem, parse_address


def chunk(keys: KeyRing, n: int, size: int = 1000) -> PreparedChunk:
    return prepare_chunk(keys, os.urandom(size - 8) + n.to_bytes(8, "big"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ChunkStore]:
    s = ChunkStore.open(tmp_path / "store", capacity=10_000_000)
    yield s
    s.close()


def test_put_get_round_trip_and_persistence(tmp_path: Path, keys: KeyRing) -> None:
    c = chunk(keys, 1)
    with ChunkStore.open(tmp_path / "s", capacity=1_000_000) as s:
        assert s.put(5, c.address, c.envelope, degree=3) is True
        assert s.get(5, c.address) == c.envelope
        assert s.used_bytes == len(c.envelope)
    with ChunkStore.open(tmp_path / "s") as s:
        assert s.capacity == 1_000_000
        assert s.get(5, c.address) == c.envelope
        assert s.used_bytes == len(c.envelope)
        [stored] = s.chunks()
        assert (stored.owner, stored.degree, stored.length) == (5, 3, len(c.envelope))


def test_duplicate_put_stores_nothing_twice(store: ChunkStore, keys: KeyRing) -> None:
    c = chunk(keys, 1)
    assert store.put(1, c.address, c.envelope) is True
    used = store.used_bytes
    again = prepare_chunk(keys, b"")  # a different envelope under a different address
    assert store.put(1, c.address, c.envelope) is False
    assert store.put_many(
        [PutItem(1, c.address, c.envelope), PutItem(1, again.address, again.envelope)]
    ) == [False, True]
    assert store.used_bytes == used + len(again.envelope)
    assert store.garbage_bytes() == 0


def test_batch_with_the_same_chunk_twice(store: ChunkStore, keys: KeyRing) -> None:
    c = chunk(keys, 1)
    assert store.put_many([PutItem(1, c.address, c.envelope)] * 2) == [True, False]
    assert store.chunk_count() == 1


def test_owners_are_isolated(store: ChunkStore, keys: KeyRing) -> None:
    c = chunk(keys, 1)
    store.put(1, c.address, c.envelope)
    # Another owner putting the same address gets its own copy; it can neither read,
    # overwrite nor delete owner 1's.
    assert store.has(2, c.address) is False
    with pytest.raises(ChunkNotFoundError):
        store.get(2, c.address)
    assert store.delete(2, c.address) is False
    assert store.get(1, c.address) == c.envelope
    store.put(2, c.address, c.envelope)
    assert store.delete(2, c.address) is True
    assert store.get(1, c.address) == c.envelope


def test_exact_quota(tmp_path: Path, keys: KeyRing) -> None:
    a, b = chunk(keys, 1), chunk(keys, 2)
    with ChunkStore.open(tmp_path / "s", capacity=len(a.envelope) + len(b.envelope) - 1) as s:
        s.put(1, a.address, a.envelope)
        with pytest.raises(QuotaExceededError, match="quota exceeded"):
            s.put(1, b.address, b.envelope)
        assert s.chunk_count() == 1
        s.set_capacity(len(a.envelope) + len(b.envelope))
        s.put(1, b.address, b.envelope)
        assert s.free_bytes == 0
        # A batch that does not fit writes nothing at all.
        s.set_capacity(s.used_bytes + 10)
        c, d = chunk(keys, 3), chunk(keys, 4)
        with pytest.raises(QuotaExceededError):
            s.put_many([PutItem(1, c.address, c.envelope), PutItem(1, d.address, d.envelope)])
        assert s.chunk_count() == 2


@pytest.mark.parametrize(
    "bad",
    [b"../x", b"", b"\x00" * 31, b"\x00" * 33, "00" * 32, None, 5],
)
def test_hostile_addresses_refused_before_touching_disk(store: ChunkStore, bad: object) -> None:
    before = sorted(os.listdir(store.root / "segments"))
    with pytest.raises(InvalidIdError):
        store.put(1, bad, b"x" * 100)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdError):
        store.get(1, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidIdError):
        store.delete(1, bad)  # type: ignore[arg-type]
    assert sorted(os.listdir(store.root / "segments")) == before


@pytest.mark.parametrize(
    "text", ["../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "a" * 63 + "\x00", "g" * 64, ""]
)
def test_parse_address_refuses_hostile_text(text: str) -> None:
    with pytest.raises(InvalidIdError):
        parse_address(text)
    assert parse_address("ab" * 32) == bytes([0xAB]) * 32


@pytest.mark.parametrize("owner", [-1, 2**32, True, "1", None])
def test_hostile_owner_refused(store: ChunkStore, keys: KeyRing, owner: object) -> None:
    c = chunk(keys, 1)
    with pytest.raises(InvalidIdError):
        store.put(owner, c.address, c.envelope)  # type: ignore[arg-type]


def test_misfiled_envelope_and_bad_degree_refused(store: ChunkStore, keys: KeyRing) -> None:
    a, b = chunk(keys, 1), chunk(keys, 2)
    with pytest.raises(InvalidIdError, match="another address"):
        store.put(1, a.address, b.envelope)
    with pytest.raises(InvalidIdError, match="degree"):
        store.put(1, a.address, a.envelope, degree=0)
    with pytest.raises(InvalidIdError, match="degree"):
        store.put(1, a.address, a.envelope, degree=10)
    with pytest.raises(InvalidIdError, match="outside"):
        store.put(1, a.address, a.envelope[:20])
    assert store.chunk_count() == 0


def test_corruption_found_by_get_and_scrub(store: ChunkStore, keys: KeyRing) -> None:
    good, bad = chunk(keys, 1), chunk(keys, 2)
    store.put(1, good.address, good.envelope)
    store.put(1, bad.address, bad.envelope)
    [segment] = (store.root / "segments").iterdir()
    raw = bytearray(segment.read_bytes())
    position = raw.find(bad.envelope) + 500
    raw[position] ^= 0x40
    segment.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunkError, match="checksum"):
        store.get(1, bad.address)
    assert store.get(1, good.address) == good.envelope
    report = store.scrub()
    assert [(b.owner, b.address) for b in report] == [(1, bad.address)]
    store.scrub(drop_bad=True)
    assert not store.has(1, bad.address)
    assert store.used_bytes == len(good.envelope)


def test_evict_for_reclaim(store: ChunkStore, keys: KeyRing) -> None:
    chunks = [chunk(keys, n) for n in range(10)]
    for n, c in enumerate(chunks):
        store.put(1, c.address, c.envelope, degree=1 + n % 3)
    total = store.used_bytes
    dropped = store.evict(total // 2)
    assert store.used_bytes <= total // 2
    assert sum(d.length for d in dropped) + store.used_bytes == total
    # Highest degree first: what was kept has degree <= what was dropped.
    assert max(c.degree for c in store.chunks()) <= min(d.degree for d in dropped)
    assert store.evict(store.used_bytes) == []
    everything = store.evict(0)
    assert store.used_bytes == 0 and store.chunk_count() == 0 and everything


def test_delete_then_compact_returns_disk_space(store: ChunkStore, keys: KeyRing) -> None:
    chunks = [chunk(keys, n, size=60_000) for n in range(20)]
    for c in chunks:
        store.put(1, c.address, c.envelope)
    removed = store.delete_many(1, [c.address for c in chunks[:15]])
    assert len(removed) == 15
    assert store.garbage_bytes() > 15 * 60_000
    store.close()
    reopened = ChunkStore.open(store.root)
    freed = reopened.compact()
    assert freed > 15 * 60_000
    assert reopened.garbage_bytes() == 0
    for c in chunks[15:]:
        assert reopened.get(1, c.address) == c.envelope
    reopened.close()


def test_check_reports_orphans_and_torn_tails(store: ChunkStore, keys: KeyRing) -> None:
    c = chunk(keys, 1)
    store.put(1, c.address, c.envelope)
    store.close()
    # Simulate a crash after the append but before the index commit, then a torn write.
    segments = sorted((store.root / "segments").iterdir())
    raw = segments[-1].read_bytes()
    orphan = segments[-1].with_name("00000099.seg")
    orphan.write_bytes(raw + raw[:100])
    s = ChunkStore.open(store.root)
    report = s.check()
    assert report.clean and report.verified == 1
    assert report.orphan_records == 1
    assert report.torn_bytes == 100
    repaired = s.check(repair=True)
    assert repaired.repaired
    after = s.check()
    assert after.orphan_records == 0 and after.torn_bytes == 0 and after.verified == 1
    s.close()


def test_check_reads_past_a_damaged_record_and_remembers_what_it_dropped(
    store: ChunkStore, keys: KeyRing
) -> None:
    """Bit rot in the middle of a segment: check names the bad copy, counts the damaged
    record, and still verifies every record after it (it used to stop there and count the
    rest as torn); what a scrub dropped is reported by the next check and kept across opens."""
    items = [chunk(keys, n, 5000) for n in range(10)]
    store.put_many([PutItem(1, c.address, c.envelope) for c in items])
    store.close()
    [segment] = sorted((store.root / "segments").iterdir())
    raw = bytearray(segment.read_bytes())
    record = len(raw) // 10
    raw[3 * record + 200] ^= 0xFF  # the fourth record's body
    raw[6 * record + 1] ^= 0xFF  # the seventh record's magic
    segment.write_bytes(bytes(raw))
    s = ChunkStore.open(store.root)
    report = s.check()
    assert len(report.bad) == 2 and report.verified == 8
    assert report.damaged_records == 2 and report.damaged_bytes == 2 * record
    assert report.torn_bytes == 0 and report.orphan_records == 0
    assert report.found_before.total == 0
    dropped = s.scrub(drop_bad=True)
    assert {b.address for b in dropped} == {items[3].address, items[6].address}
    s.close()
    s = ChunkStore.open(store.root)
    later = s.check()
    assert later.clean and later.verified == 8
    assert later.found_before.total == 2 and later.found_before.by == {"scrub": 2}
    assert later.damaged_records == 2  # still on disk until compaction, named as damage
    s.check(repair=True)
    final = s.check()
    assert final.damaged_records == 0 and final.orphan_records == 0 and final.verified == 8
    s.close()


def test_check_reports_missing_segment(store: ChunkStore, keys: KeyRing) -> None:
    c = chunk(keys, 1)
    store.put(1, c.address, c.envelope)
    store.close()
    for seg in (store.root / "segments").iterdir():
        seg.unlink()
    s = ChunkStore.open(store.root)
    report = s.check()
    assert not report.clean and "missing" in report.bad[0].reason
    s.check(repair=True)
    assert s.chunk_count() == 0 and s.used_bytes == 0
    s.close()


def test_segments_roll_over(
    store: ChunkStore, keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chunkstore.segments as module

    monkeypatch.setattr(module, "SEGMENT_LIMIT", 5_000)
    chunks = [chunk(keys, n, size=2_000) for n in range(10)]
    store.put_many([PutItem(1, c.address, c.envelope) for c in chunks])
    assert len(list((store.root / "segments").iterdir())) >= 4
    for c in chunks:
        assert store.get(1, c.address) == c.envelope


def test_a_compaction_between_writing_and_indexing_keeps_the_records(
    store: ChunkStore, keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction (another thread) that runs after a put wrote its records and before it
    indexed them must not take a segment the put filled and retired for garbage: nothing names
    its records yet, and unlinking it lost the chunks the put then acknowledged."""
    import threading

    import chunkstore.segments as module
    from chunkstore import crashpoints

    monkeypatch.setattr(module, "SEGMENT_LIMIT", 5_000)
    chunks = [chunk(keys, n, size=3_000) for n in range(3)]  # one per segment: two retired
    compacted: list[int] = []

    def compact_meanwhile(name: str) -> None:
        if name == "store.written" and not compacted:
            other = threading.Thread(target=lambda: compacted.append(store.compact(0.0)))
            other.start()
            other.join(30)
            assert not other.is_alive()

    monkeypatch.setattr(crashpoints, "reached", compact_meanwhile)
    assert store.put_many([PutItem(1, c.address, c.envelope) for c in chunks]) == [True] * 3
    assert compacted == [0]  # it ran, and found nothing to free
    for c in chunks:
        assert store.get(1, c.address) == c.envelope
    assert store.check().clean


def test_closed_store_refuses(store: ChunkStore, keys: KeyRing) -> None:
    store.close()
    with pytest.raises(ChunkstoreError, match="closed"):
        store.has(1, bytes(32))


def test_write_failure_surfaces_and_nothing_half_visible(
    store: ChunkStore, keys: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = chunk(keys, 1), chunk(keys, 2)
    store.put(1, a.address, a.envelope)

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full_disk)
    with pytest.raises(DiskFullError, match="No space"):
        store.put(1, b.address, b.envelope)
    monkeypatch.undo()
    assert not store.has(1, b.address)
    assert store.put(1, b.address, b.envelope) is True
    assert store.get(1, b.address) == b.envelope
    assert store.check().clean


def test_concurrent_writers_overlap_and_index_each_chunk_once(
    store: ChunkStore, keys: KeyRing
) -> None:
    """Writers flush outside the lock; the same chunk from two of them is indexed once."""
    import threading

    chunks = [chunk(keys, n) for n in range(120)]
    errors: list[BaseException] = []
    results: dict[int, list[bool]] = {}

    def writer(k: int) -> None:
        try:
            # Both threads put every chunk, in different batches and orders.
            order = chunks if k == 0 else list(reversed(chunks))
            out: list[bool] = []
            for i in range(0, len(order), 7 + k):
                batch = order[i : i + 7 + k]
                out += store.put_many([PutItem(1, c.address, c.envelope, 2) for c in batch])
            results[k] = out
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    # Every chunk was newly written by exactly one of the two.
    assert sum(results[0]) + sum(results[1]) == len(chunks)
    assert store.used_bytes == sum(len(c.envelope) for c in chunks)
    assert store.chunk_count() == len(chunks)
    for c in chunks:
        assert store.get(1, c.address) == c.envelope
    report = store.check()
    assert report.clean
    # The losing copies are garbage that compaction gives back.
    store.compact(0.0)
    assert store.check().clean and store.chunk_count() == len(chunks)


def test_delete_many_of_mostly_absent_addresses(store: ChunkStore, keys: KeyRing) -> None:
    # An outbox releasing a big file's version: thousands of addresses, few of them held.
    held = [chunk(keys, n) for n in range(5)]
    for c in held:
        store.put(1, c.address, c.envelope)
        store.put(2, c.address, c.envelope)  # the same address of another owner stays
    absent = [os.urandom(32) for _ in range(3000)]
    wanted = [*absent[:1500], held[0].address, held[3].address, held[0].address, *absent[1500:]]
    removed = store.delete_many(1, wanted)
    assert removed == [held[0].address, held[3].address]
    assert store.chunk_count() == 8
    assert not store.has(1, held[0].address) and store.has(2, held[0].address)
    assert store.has(1, held[1].address)
    gone = len(held[0].envelope) + len(held[3].envelope)
    assert store.used_bytes == sum(len(c.envelope) for c in held) * 2 - gone


def test_pwrite_all_gathers_more_buffers_than_one_call_takes(tmp_path: Path) -> None:
    buffers = [bytes([i % 256]) * (i % 7) for i in range(3000)]  # over IOV_MAX, empty ones too
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"head", 0)
        assert pwrite_all(fd, buffers, 4) == sum(len(b) for b in buffers)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"head" + b"".join(buffers)


def test_pwrite_all_continues_a_short_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwritev

    def short(fd: int, buffers: list[bytes], offset: int) -> int:
        # Only part of the first buffer, as a nearly full disk may.
        return real(fd, [buffers[0][:1000]], offset)

    monkeypatch.setattr(os, "pwritev", short)
    parts = [b"a" * 5000, b"b" * 7000, b"c" * 3]
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert pwrite_all(fd, parts, 0) == 12003
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"".join(parts)


def test_pwrite_all_raises_instead_of_looping_when_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: 0)
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="no byte could be written"):
            pwrite_all(fd, [b"abc"], 0)
    finally:
        os.close(fd)


def test_a_full_disk_refuses_whole_batches_and_is_advertised(tmp_path: Path, keys: KeyRing) -> None:
    """The quota allows far more than the disk has: chunks are refused, whole batches, before
    the disk is full (the index can still record what was written), and ``room_bytes`` (what
    a holder advertises) says what the disk can take."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        (disk / "other").write_bytes(b"x" * 2_000_000)  # the user's own files
        with ChunkStore.open(disk / "store", capacity=10**12) as s:
            assert s.room_bytes <= 8 * 2**20 - 2_000_000 - DISK_RESERVE < s.free_bytes
            held = 0
            with pytest.raises(DiskFullError, match="disk full"):
                while True:
                    batch = [chunk(keys, held + i, 60_000) for i in range(8)]
                    s.put_many([PutItem(1, c.address, c.envelope) for c in batch])
                    held += 8
            assert held > 0 and s.chunk_count() == held  # the refused batch left nothing
            assert s.room_bytes < 8 * 60_100
            assert s.check().clean
            (disk / "other").unlink()  # the user makes room
            assert s.disk_room(fresh=True) > 8 * 60_100
            one = chunk(keys, 999, 60_000)
            assert s.put(1, one.address, one.envelope) is True
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_which_held_answers_for_many_and_refuses_a_bad_address(
    store: ChunkStore, keys: KeyRing
) -> None:
    held = [chunk(keys, n) for n in range(3)]
    store.put_many([PutItem(1, c.address, c.envelope) for c in held])
    other = chunk(keys, 9).address
    asked = [c.address for c in held] * 2 + [other]  # repeats are fine
    assert store.which_held(1, asked) == {c.address for c in held}
    assert store.which_held(2, asked) == set()  # another owner's: none
    with pytest.raises(InvalidIdError, match="expected 32 bytes"):
        store.which_held(1, [held[0].address, b"short"])
