"""Where a disk store keeps its envelopes: append-only segment files of records.

    STORE/segments/NNNNNNNN.seg   records: header | envelope   (``docs/formats.md``)

A put reserves byte ranges at the active segment's end under the store's lock, writes and
``fdatasync``s them outside it (so one writer's flush overlaps another's work), and only then
does the index record them: a crash before the index commit leaves unreferenced records
(garbage, never visible). ``compact`` rewrites a segment's live records elsewhere, commits the
new locations, and only then unlinks the old segment. Segment names come from integers this
backend chose, never from an id it was given.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .chunkindex import BadChunk, ChunkIndex, IndexedChunk, Location, PutItem, Record
from .envelope import MAX_ENVELOPE_SIZE
from .errors import ChunkNotFoundError, CorruptChunkError, DiskFullError
from .readfds import ReadFds

RECORD_MAGIC = b"LVR1"
# magic(4) owner(u32) address(32) length(u32) sha256-of-envelope(32)
RECORD_HEADER = struct.Struct(">4sI32sI32s")
SEGMENT_LIMIT = 64 * 1024 * 1024
# Room kept free on the store's disk for its index, its journal and the owners' records: chunks
# are refused before the disk is full, so that the index can always record what was written.
DISK_RESERVE = 4 * 1024 * 1024
DISK_ROOM_TTL = 1.0  # seconds a measure of the disk's free space is reused
_SEGMENT_NAME = re.compile(r"^([0-9]{8})\.seg$")
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
T = TypeVar("T")


def pwrite_all(fd: int, buffers: Sequence[bytes], offset: int) -> int:
    """Write every byte of ``buffers`` at ``offset``, gathering them with ``pwritev`` (no
    joined copy); a short write is continued. Returns the bytes written."""
    position = offset
    for start in range(0, len(buffers), _IOV_MAX):
        group = buffers[start : start + _IOV_MAX]
        size = sum(len(b) for b in group)
        done = os.pwritev(fd, group, position)
        if done < size:
            rest = memoryview(b"".join(group))[done:]
            while rest:
                written = os.pwrite(fd, rest, position + done)
                if written == 0:  # never for a regular file; guards against looping forever
                    raise OSError(errno.ENOSPC, "no byte could be written")
                done += written
                rest = rest[written:]
        position += size
    return position - offset


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Reservation:
    """Where a put's records go: byte ranges at segments' ends, written outside the lock."""

    groups: list[tuple[int, int, int, list[bytes]]] = field(default_factory=list)
    placed: list[tuple[int, int]] = field(default_factory=list)  # (segment, offset) per record


@dataclass(slots=True)
class StorageReport:
    """What a backend found beside the index's entries (``CheckReport`` carries it)."""

    orphan_records: int = 0  # records no index entry names: deleted or written twice
    orphan_bytes: int = 0  # (garbage that compaction reclaims)
    damaged_records: int = 0  # records inside a segment that fail their checksum
    damaged_bytes: int = 0
    torn_bytes: int = 0  # an incomplete record at a segment's end (a write cut short)


class SegmentBackend:
    """Envelopes in segment files under ``root/segments`` (see the module's docstring)."""

    def __init__(self, root: Path, index: ChunkIndex) -> None:
        self._dir = root / "segments"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._index = index
        self._lock = index.lock
        self._read_fds = ReadFds()  # descriptors kept open for reading, bounded
        self._active: tuple[int, int] | None = None  # (segment, reserved size) appended to
        self._write_fds: dict[int, list[int]] = {}  # segment -> [fd, reservations in flight]
        self._room: tuple[float, int] = (-DISK_ROOM_TTL, 0)  # (when measured, bytes)
        existing = self._segment_numbers()
        self._next_segment = (max(existing) + 1) if existing else 1

    def close(self) -> None:
        with self._lock:
            self._active = None
            for fd, _inflight in self._write_fds.values():
                os.close(fd)
            self._write_fds.clear()
            self._read_fds.close_all()

    @property
    def read_fds_open(self) -> int:
        """Descriptors kept open for reading (bounded by ``readfds.MAX_IDLE_READ_FDS``)."""
        return self._read_fds.open_count

    def room(self, fresh: bool = False) -> int:
        """Bytes of chunks the disk under the store can still take (its free space less
        ``DISK_RESERVE``), measured at most once a second unless ``fresh``."""
        measured, room = self._room
        now = time.monotonic()
        if fresh or now - measured >= DISK_ROOM_TTL:
            stats = os.statvfs(self._dir)
            room = max(0, stats.f_bavail * stats.f_frsize - DISK_RESERVE)
            self._room = (now, room)
        return room

    # -- writing -------------------------------------------------------------------------

    def begin(self, records: Sequence[Record]) -> Reservation:
        """(lock held) Room for the records at the segments' end."""
        reservation = Reservation()
        segment, size = self._active_segment()
        start, parts = size, list[bytes]()
        for item, digest in records:
            record_size = RECORD_HEADER.size + len(item.envelope)
            if size > 0 and size + record_size > SEGMENT_LIMIT:
                self._add_group(reservation, segment, start, parts)
                self._active = (segment, size)
                self._retire_active()
                segment, size = self._active_segment()
                start, parts = size, list[bytes]()
            parts.append(
                RECORD_HEADER.pack(
                    RECORD_MAGIC, item.owner, item.address, len(item.envelope), digest
                )
            )
            parts.append(item.envelope)
            reservation.placed.append((segment, size))
            size += record_size
        self._add_group(reservation, segment, start, parts)
        self._active = (segment, size)
        return reservation

    @staticmethod
    def write(reservation: Reservation) -> list[tuple[int, int]]:
        """Write and flush the reserved records (lock not held: flushes overlap); where each
        lies. The disk filling meanwhile is a ``DiskFullError``."""
        try:
            for _segment, fd, offset, parts in reservation.groups:
                pwrite_all(fd, parts, offset)
                os.fdatasync(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"disk full: {exc.strerror}") from exc
            raise
        return reservation.placed

    def end(self, reservation: Reservation, failed: bool) -> None:
        """(lock held) The reservation's writes are over. A failed write may leave a partial
        record: nothing is ever appended after it (the segment is retired)."""
        for segment, _fd, _offset, _parts in reservation.groups:
            self._write_fds[segment][1] -= 1
            if failed and self._active is not None and self._active[0] == segment:
                self._retire_active()
            self._close_if_done(segment)
        self._room = (-DISK_ROOM_TTL, 0)  # measure again at the next ask

    def lost_race(self, raced: Sequence[tuple[Record, Location]]) -> None:
        """(lock held) Our records of chunks a concurrent put indexed first are garbage for
        compaction: nothing to do."""

    def _add_group(
        self, reservation: Reservation, segment: int, start: int, parts: list[bytes]
    ) -> None:
        if parts:
            entry = self._write_fds[segment]
            entry[1] += 1
            reservation.groups.append((segment, entry[0], start, parts))

    def _close_if_done(self, segment: int) -> None:
        entry = self._write_fds.get(segment)
        active = self._active[0] if self._active is not None else None
        if entry is not None and entry[1] == 0 and segment != active:
            os.close(entry[0])
            del self._write_fds[segment]

    def _active_segment(self) -> tuple[int, int]:
        if self._active is not None:
            return self._active
        number = self._next_segment
        self._next_segment += 1
        # No O_APPEND: only this store writes, always at offsets it reserved.
        fd = os.open(self._segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fsync_dir(self._dir)  # the new name must survive a crash too
        self._write_fds[number] = [fd, 0]
        self._active = (number, 0)
        return self._active

    def _retire_active(self) -> None:
        if self._active is not None:
            segment = self._active[0]
            self._active = None
            self._close_if_done(segment)

    # -- reading -------------------------------------------------------------------------

    def read(self, owner: int, address: bytes, loc: Location) -> bytes:
        """The verified envelope at ``loc``, read outside the lock. A process sharing this
        store (the mount's outbox is read by the daemon) may have rewritten the segment
        meanwhile, or reused its number: a failed read from a descriptor opened earlier is
        tried once more on a fresh one, at the chunk's location as the index says now."""
        for attempt in range(2):
            segment = loc.segment
            with self._lock:
                try:
                    fd, fresh = self._read_fds.acquire(segment, self._segment_path(segment))
                except FileNotFoundError:
                    fd, fresh = -1, True
            try:
                if fd < 0:
                    raise CorruptChunkError(f"segment {loc.segment} is missing")
                return self._read_verified(fd, owner, address, loc)
            except CorruptChunkError:
                with self._lock:
                    now = self._index.location(owner, address)
                if now is None:  # deleted meanwhile (by another process): not damaged
                    raise ChunkNotFoundError(f"no chunk {address.hex()} of owner {owner}") from None
                with self._lock:
                    if attempt or (fresh and now == loc):
                        raise
                    self._read_fds.forget(loc.segment)
                    loc = now
            finally:
                if fd >= 0:
                    with self._lock:
                        self._read_fds.release(segment, fd)
        raise AssertionError("unreachable")

    @staticmethod
    def map_reads(read: Callable[[bytes], T], addresses: Sequence[bytes]) -> list[T]:
        return [read(address) for address in addresses]  # a local disk: one at a time

    @staticmethod
    def _read_verified(fd: int, owner: int, address: bytes, loc: Location) -> bytes:
        total = RECORD_HEADER.size + loc.length
        data = os.pread(fd, total, loc.offset)
        short = address.hex()[:16]
        if len(data) != total:
            raise CorruptChunkError(f"chunk {short}… is cut short on disk")
        header = RECORD_HEADER.unpack_from(data)
        if header != (RECORD_MAGIC, owner, address, loc.length, loc.digest):
            raise CorruptChunkError(f"chunk {short}… has a damaged record header")
        envelope = data[RECORD_HEADER.size :]
        if hashlib.sha256(envelope).digest() != loc.digest:
            raise CorruptChunkError(f"chunk {short}… failed its checksum")
        return envelope

    # -- removing, verifying, upkeep -------------------------------------------------------

    def forgetting(self, removed: Sequence[IndexedChunk]) -> None:
        """(transaction open) Removed chunks' records become garbage for ``compact``."""

    def forgotten(self) -> None:
        """After a removal's commit: nothing more to do on a disk."""

    def scrub(self) -> list[BadChunk]:
        """Re-read and verify every chunk."""
        bad: list[BadChunk] = []
        for owner, address, loc in self._index.located():
            try:
                self.read(owner, address, loc)
            except ChunkNotFoundError:
                continue  # removed since the rows were read: not a bad copy
            except CorruptChunkError as exc:
                bad.append(BadChunk(owner, address, str(exc)))
        return bad

    def check(self, repair: bool) -> StorageReport:
        """Every segment read through: records no entry names, damaged ones, a torn tail;
        with ``repair`` the segments are compacted."""
        report = StorageReport()
        with self._lock:
            live = {
                (int(s), int(o))
                for s, o in self._index.db.execute("SELECT segment, offset FROM chunks")
            }
            for number in self._segment_numbers():
                for offset, size, state in self._scan_segment(number):
                    if state == "torn":
                        report.torn_bytes += size
                    elif state == "damaged":
                        report.damaged_records += 1
                        report.damaged_bytes += size
                    elif (number, offset) not in live:
                        report.orphan_records += 1
                        report.orphan_bytes += size
        if repair:
            self.compact(min_garbage_ratio=0.0)
        return report

    def _scan_segment(self, number: int) -> Iterator[tuple[int, int, str]]:
        """Yield ``(offset, size, state)`` for each record of a segment: ``"good"``;
        ``"damaged"`` (bytes that fail their checksum, or that are no record, up to the next
        good one: the scan goes on past them); ``"torn"`` (an incomplete last record)."""
        try:
            with open(self._segment_path(number), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return
        offset = 0
        while offset < len(data):
            end = _good_record_end(data, offset)
            if end is not None:
                yield offset, end - offset, "good"
                offset = end
                continue
            # Not a good record here: resynchronise at the next good one, if any.
            following = data.find(RECORD_MAGIC, offset + 1)
            while following != -1 and _good_record_end(data, following) is None:
                following = data.find(RECORD_MAGIC, following + 1)
            if following == -1:
                state = "torn" if _may_be_torn(data, offset) else "damaged"
                yield offset, len(data) - offset, state
                return
            yield offset, following - offset, "damaged"
            offset = following

    def garbage_bytes(self) -> int:
        """Bytes on disk not referenced by the index (reclaimable by ``compact``)."""
        with self._lock:
            live = self._index.query_int(
                f"SELECT COALESCE(SUM(length + {RECORD_HEADER.size}), 0) FROM chunks"
            )
            on_disk = sum(self._segment_path(n).stat().st_size for n in self._segment_numbers())
        return on_disk - live

    def compact(self, min_garbage_ratio: float = 0.5) -> int:
        """Rewrite segments whose garbage share is at least ``min_garbage_ratio``; return the
        bytes freed."""
        freed = 0
        with self._lock:
            self._index.ensure_open()
            busy = set(self._write_fds)  # being appended to, or writes still in flight
            live_by_segment = dict(
                self._index.db.execute(
                    f"SELECT segment, SUM(length + {RECORD_HEADER.size}) FROM chunks GROUP BY segment"
                ).fetchall()
            )
            for number in self._segment_numbers():
                if number in busy:
                    continue
                size = self._segment_path(number).stat().st_size
                garbage = size - int(live_by_segment.get(number, 0))
                if size == 0 or (garbage > 0 and garbage / size >= min_garbage_ratio):
                    freed += garbage
                    self._rewrite_segment(number)
        return freed

    def _rewrite_segment(self, number: int) -> None:
        """(lock held) A segment's live records appended anew, the index moved to them, and
        the segment unlinked; records that fail their checksum are dropped from the index."""
        index = self._index
        rows = index.db.execute(
            "SELECT owner, address, offset, length, digest, degree FROM chunks WHERE segment=?",
            (number,),
        ).fetchall()
        moved: list[Record] = []
        lost: list[tuple[int, bytes]] = []
        if rows:
            try:
                fd, _fresh = self._read_fds.acquire(number, self._segment_path(number))
            except FileNotFoundError:
                raise CorruptChunkError(f"segment {number} is missing") from None
            try:
                for owner, address, offset, length, digest, degree in rows:
                    loc = Location(number, int(offset), int(length), bytes(digest))
                    try:
                        envelope = self._read_verified(fd, int(owner), bytes(address), loc)
                    except CorruptChunkError:
                        lost.append((int(owner), bytes(address)))
                        continue
                    moved.append(
                        (PutItem(int(owner), bytes(address), envelope, int(degree)), digest)
                    )
            finally:
                self._read_fds.release(number, fd)
        placed: list[tuple[int, int]] = []
        if moved:
            reservation = self.begin(moved)
            failed = True
            try:
                placed = self.write(reservation)
                failed = False
            finally:
                self.end(reservation, failed)
        with index.transaction():
            index.db.executemany(
                "UPDATE chunks SET segment=?, offset=? WHERE owner=? AND address=?",
                [
                    (seg, off, item.owner, item.address)
                    for (item, _), (seg, off) in zip(moved, placed, strict=True)
                ],
            )
            index.db.executemany("DELETE FROM chunks WHERE owner=? AND address=?", lost)
        index.used = index.stored_bytes()
        self._read_fds.forget(number)
        with contextlib.suppress(FileNotFoundError):
            self._segment_path(number).unlink()
        fsync_dir(self._dir)

    def _segment_path(self, number: int) -> Path:
        return self._dir / f"{number:08d}.seg"

    def _segment_numbers(self) -> list[int]:
        numbers = []
        for entry in os.listdir(self._dir):
            match = _SEGMENT_NAME.match(entry)
            if match:
                numbers.append(int(match.group(1)))
        return sorted(numbers)


def _good_record_end(data: bytes, offset: int) -> int | None:
    header = data[offset : offset + RECORD_HEADER.size]
    if len(header) < RECORD_HEADER.size:
        return None
    magic, _owner, _address, length, digest = RECORD_HEADER.unpack(header)
    end: int = offset + RECORD_HEADER.size + length
    if magic != RECORD_MAGIC or end > len(data) or length > MAX_ENVELOPE_SIZE:
        return None
    if hashlib.sha256(data[offset + RECORD_HEADER.size : end]).digest() != digest:
        return None
    return end


def _may_be_torn(data: bytes, offset: int) -> bool:
    """The last bytes look like a write cut short: a header (or part of one) whose record
    runs past the end of the segment."""
    header = data[offset : offset + RECORD_HEADER.size]
    if len(header) < RECORD_HEADER.size:
        return RECORD_MAGIC.startswith(header[:4])
    magic, _owner, _address, length, _digest = RECORD_HEADER.unpack(header)
    return bool(magic == RECORD_MAGIC and offset + RECORD_HEADER.size + length > len(data))
