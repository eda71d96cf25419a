"""One big file's restore: its chunks fetched in windows spread over their holders, several
windows at once, verified and written into the restore's temporary file.

``FileRestorer`` (``restore_files.py``) makes the temporary file and publishes it; this module
fills it. Each window asks every holder of its chunks for its share in one request (no hot
spot: the up holder with the fewest chunks of the window so far, not one that just failed to
give that chunk), asks again for what it did not get, from other holders first, and leaves the
rest to the fetcher's slow path (failover and retries per chunk). The windows in flight halve
after a burst of failed requests and grow back by one after a window without (AIMD).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable

import trio

from chunkstore.catalog import FileVersion
from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import chunk_address, open_chunk
from chunkstore.errors import EnvelopeError
from chunkstore.keys import KeyRing
from chunkstore.segments import pwrite_all
from chunkstore.shares import Code

from .fetch import Fetcher
from .messages import MAX_BATCH
from .node import Node
from .offload import in_thread
from .report import Progress, ProgressFn, RestoreError

log = logging.getLogger(__name__)
# A restore fetches windows of chunks spread over their holders: a window's share per holder
# should fill a GETCHUNKS (MAX_BATCH), or every few chunks cost a request and a thread hop.
RESTORE_WINDOW = 4 * MAX_BATCH
RESTORE_WINDOWS = 8  # windows in flight at most: 480 chunks, about 30 MB
# A window whose requests failed (a reset link fails every request in flight on it) halves the
# windows in flight, down to one; a window without failures adds one back (AIMD, as TCP does).
# What a window did not get is asked for again in batches, from other holders first, this many
# times (0.25 s, 0.5 s, 1 s apart) before falling back to one chunk at a time.
LEFTOVER_ROUNDS = 3


class ChunkWriter:
    """Writes verified chunks into a restore's temporary file, one thread at a time.

    Consecutive chunks go in one ``pwritev``. Every ``WRITEBACK_STEP`` bytes the kernel is
    asked to start writing the file out (``POSIX_FADV_DONTNEED`` starts writeback of dirty
    pages and drops the clean ones), so the final ``fsync`` has little left to wait for and a
    large restore does not push everything else out of the page cache.
    """

    WRITEBACK_STEP = 32 * 1024 * 1024

    def __init__(self, fd: int, *, holes: bool = False) -> None:
        self._fd = fd
        self._holes = holes
        self._lock = threading.Lock()
        self._unflushed = 0

    def write(self, chunks: list[tuple[int, bytes]]) -> int:
        """Write ``(chunk number, plaintext)`` pairs; return the bytes they hold. With
        ``holes`` (the file is new, so what is not written reads as zeros) a chunk of zeros is
        not written: a sparse file comes back sparse (the final truncate sets its size)."""
        chunks = sorted(chunks)
        total = 0
        if self._holes:
            zeros = [(no, p) for no, p in chunks if all_zeros(p)]
            if zeros:
                total = sum(len(p) for _no, p in zeros)
                chunks = [(no, p) for no, p in chunks if not all_zeros(p)]
        with self._lock:
            i = 0
            while i < len(chunks):
                j = i + 1
                while j < len(chunks) and chunks[j][0] == chunks[j - 1][0] + 1:
                    j += 1
                run = [plain for _no, plain in chunks[i:j]]
                total += pwrite_all(self._fd, run, chunks[i][0] * CHUNK_SIZE)
                i = j
            self._unflushed += total
            if self._unflushed >= self.WRITEBACK_STEP:
                self._unflushed = 0
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return total


def all_zeros(data: bytes) -> bool:
    """Whether ``data`` is all zero bytes: most chunks are told by their first byte, without
    scanning 64,000 (a count of every chunk's zeros cost a restore 7 % of its time)."""
    return not data or (data[0] == 0 and data[-1] == 0 and data == bytes(len(data)))


def chunks_in_place(keys: KeyRing, fd: int, version: FileVersion) -> set[int]:
    """Chunks of ``version`` an interrupted restore already wrote correctly to ``fd``."""
    size = os.fstat(fd).st_size
    kept: set[int] = set()
    for no, address in enumerate(version.chunks):
        expected = min(CHUNK_SIZE, version.size - no * CHUNK_SIZE)
        if no * CHUNK_SIZE + expected > size or expected == 0:
            continue
        data = os.pread(fd, expected, no * CHUNK_SIZE)
        if len(data) == expected and chunk_address(keys, data) == address:
            kept.add(no)
    return kept


class WindowedFetch:
    """Fetch and write every chunk of ``version`` not in ``kept``; ``run`` raises the first
    error (a chunk nobody can give, or the destination refusing a write: ``unwritable``)."""

    def __init__(
        self,
        node: Node,
        keys: KeyRing,
        fetcher: Fetcher,
        version: FileVersion,
        writer: ChunkWriter,
        holders: dict[bytes, set[int]],
        kept: set[int],
        report: Progress,
        progress: ProgressFn | None,
        unwritable: Callable[[OSError], RestoreError],
    ) -> None:
        self.node = node
        self.keys = keys
        self.fetcher = fetcher
        self.version = version
        self.writer = writer
        self.holders = holders
        self.kept = kept
        self.report = report
        self.progress = progress
        self.unwritable = unwritable
        self.windows = trio.CapacityLimiter(RESTORE_WINDOWS)
        self.cut_at = fetcher.failed_requests  # failures counted when the windows were cut
        self.write_lock = trio.Lock()
        self.share_holders: dict[bytes, set[int]] | None = None  # a coded version's, once
        self.holders_lock = trio.Lock()
        self.errors: list[RestoreError] = []

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for start in range(0, len(self.version.chunks), RESTORE_WINDOW):
                nursery.start_soon(self._window, start)
        if self.errors:
            raise self.errors[0]

    def _checked(self, no: int, plain: bytes) -> bytes:
        expected = min(CHUNK_SIZE, self.version.size - no * CHUNK_SIZE)
        if len(plain) != expected:
            raise RestoreError(f"chunk {no} of {self.version.path} has the wrong length")
        return plain

    def _write(self, no: int, plain: bytes) -> int:
        return self.writer.write([(no, self._checked(no, plain))])

    def _open_share(
        self, items: list[tuple[int, bytes]]
    ) -> tuple[list[tuple[int, bytes]], list[int]]:
        """Verify fetched chunks; return the plaintexts and the chunks that failed."""
        opened, failed = [], []
        for no, envelope in items:
            try:
                plain = open_chunk(self.keys, self.version.chunks[no], envelope)
                opened.append((no, self._checked(no, plain)))
            except (EnvelopeError, RestoreError) as exc:
                log.warning("chunk %d of %s: %s", no, self.version.path, exc)
                failed.append(no)
        return opened, failed

    async def _from_holder(
        self, holder: int, nos: list[int], opened: list[tuple[int, bytes]], leftovers: list[int]
    ) -> None:
        chunks = self.version.chunks
        got = await self.fetcher.get_envelopes(holder, [chunks[no] for no in nos])
        fetched = [(no, got[chunks[no]]) for no in nos if chunks[no] in got]
        leftovers.extend(no for no in nos if chunks[no] not in got)
        plains, failed = await in_thread(self._open_share, fetched, limiter=self.node.cpu_limiter)
        opened.extend(plains)
        leftovers.extend(failed)

    async def _write_window(self, opened: list[tuple[int, bytes]]) -> None:
        # One writer at a time: threads writing one file at once spin on its inode lock
        # (measured: 5x the CPU of one writer). A window's chunks are consecutive, so they go
        # in a few large writes.
        if not opened:  # every chunk of the window was there already, or failed
            return
        async with self.write_lock:
            self.report.bytes_done += await in_thread(
                self.writer.write, opened, limiter=self.node.disk_limiter
            )

    def _spread(
        self, nos: list[int], avoid: dict[int, set[int]]
    ) -> tuple[dict[int, list[int]], list[int]]:
        """Chunks by the up holder to ask (a window over its holders: parallel reads, no hot
        spot; not one that just failed to give that chunk, if another has it), and the chunks
        no up holder has."""
        groups: dict[int, list[int]] = {}
        none: list[int] = []
        for no in nos:
            holders = self.holders[self.version.chunks[no]]
            live = [h for h in holders if self.node.membership.is_up(h)]
            if not live:
                none.append(no)
                continue
            tried = avoid.get(no, set())
            choice = min(live, key=lambda h: (h in tried, len(groups.get(h, ())), h))
            groups.setdefault(choice, []).append(no)
        return groups, none

    async def _window(self, start: int) -> None:
        async with self.windows:
            if self.errors:
                return
            end = min(start + RESTORE_WINDOW, len(self.version.chunks))
            todo = [n for n in range(start, end) if n not in self.kept]
            code = self.version.code
            if code is not None:  # kept as shares: K of each chunk's, spread over holders
                await self._coded(todo, code)
                return
            failed_requests = self.fetcher.failed_requests
            leftovers = await self._batched(todo)
            if leftovers is None:
                return
            if self.fetcher.failed_requests > max(failed_requests, self.cut_at):
                # One halving per burst of failures (one reset fails every window).
                self.cut_at = self.fetcher.failed_requests
                self.windows.total_tokens = max(1, self.windows.total_tokens // 2)
            elif self.windows.total_tokens < RESTORE_WINDOWS:
                self.windows.total_tokens += 1
            try:
                if self.progress is not None:
                    self.progress(self.report)
                for no in leftovers:  # the slow path: failover and retries per chunk
                    written = await self.fetcher.fetch_chunk(
                        self.version.chunks[no], sink=functools.partial(self._write, no)
                    )
                    assert isinstance(written, int)
                    self.report.bytes_done += written
            except RestoreError as exc:
                self.errors.append(exc)
            except OSError as exc:  # a full or failing destination disk
                self.errors.append(self.unwritable(exc))

    async def _coded(self, todo: list[int], code: Code) -> None:
        chunks = self.version.chunks
        if self.share_holders is None:
            async with self.holders_lock:  # the first window reads every share's holders
                if self.share_holders is None:
                    self.share_holders = await self.fetcher.share_holders(chunks, code)
        found, missing = await self.fetcher.fetch_coded(
            [chunks[no] for no in todo], code, self.share_holders
        )
        try:
            opened = [
                (no, self._checked(no, found[chunks[no]])) for no in todo if chunks[no] in found
            ]
            await self._write_window(opened)
        except RestoreError as exc:
            self.errors.append(exc)
            return
        except OSError as exc:  # a full or failing destination disk
            self.errors.append(self.unwritable(exc))
            return
        if missing:
            self.errors.append(next(iter(missing.values())))
        elif self.progress is not None:
            self.progress(self.report)

    async def _batched(self, todo: list[int]) -> list[int] | None:
        """Fetch ``todo`` in batches, a first round and ``LEFTOVER_ROUNDS`` more for what was
        not got; return what is left for the slow path (None: the destination failed)."""
        tried: dict[int, set[int]] = {}
        leftovers: list[int] = []
        for round_no in range(LEFTOVER_ROUNDS + 1):
            if round_no:
                await trio.sleep(0.25 * 2 ** (round_no - 1))
            groups, nowhere = self._spread(todo, tried)
            leftovers += nowhere
            opened: list[tuple[int, bytes]] = []
            missed: list[int] = []
            async with trio.open_nursery() as inner:
                for holder, nos in groups.items():
                    inner.start_soon(self._from_holder, holder, nos, opened, missed)
            for holder, nos in groups.items():
                for no in nos:
                    tried.setdefault(no, set()).add(holder)
            try:
                await self._write_window(opened)
            except OSError as exc:  # a full or failing destination disk
                self.errors.append(self.unwritable(exc))
                return None
            todo = missed
            if not todo:
                break
        return leftovers + todo
