"""Writing restored files: each one into a new temporary file beside its destination, whole
and verified, flushed, then renamed into place (``RestoreTarget`` decides where, safely).

A big file is fetched in windows of chunks spread over their holders, several windows at once,
and can resume from an interrupted restore's temporary file. Small files go in groups: one
fetch per holder for a whole group, and one worker-thread hop that writes all of it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from chunkstore.catalog import FileVersion, Xattrs, hard_links
from chunkstore.catalogdb import CatalogDB, TreeEvent
from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import chunk_address, open_chunk
from chunkstore.errors import EnvelopeError
from chunkstore.keys import KeyRing
from chunkstore.segments import pwrite_all

from .fetch import DbRunner, Fetcher
from .messages import MAX_BATCH
from .node import Node
from .report import Progress, ProgressFn, RestoreError
from .restore_target import RestoreTarget, UnsafeDestination, flush_files

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
RESTORE_SMALL = CHUNK_SIZE  # bytes: a file up to this size (one chunk) is small ...
GROUP_FILES = 128  # ... and restored in groups of up to this many files ...
GROUP_BYTES = 8 * 1024 * 1024  # ... or this many bytes,
GROUPS = 4  # this many groups at once (their fetches, writes and fsyncs overlap)

Entry = tuple[Path, FileVersion, TreeEvent | None]  # where, what, its snapshot entry if any


def _already_restored(
    target: RestoreTarget, dest: Path, size: int, mode: int, mtime_ns: int
) -> bool:
    st = target.lstat(dest)
    done = (
        st is not None
        and stat.S_ISREG(st.st_mode)
        and st.st_size == size
        and st.st_mtime_ns == mtime_ns
        and stat.S_IMODE(st.st_mode) == stat.S_IMODE(mode)
    )
    if done and st is not None:
        target.adopt(dest, st)  # what a second name of it may be linked to
    return done


class _ChunkWriter:
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
            zeros = [(no, p) for no, p in chunks if p.count(0) == len(p)]
            if zeros:
                total = sum(len(p) for _no, p in zeros)
                chunks = [(no, p) for no, p in chunks if p.count(0) != len(p)]
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


class FileRestorer:
    def __init__(
        self, node: Node, keys: KeyRing, catalog: CatalogDB, db: DbRunner, fetcher: Fetcher
    ) -> None:
        self.node = node
        self.keys = keys
        self.catalog = catalog
        self._db = db
        self.fetcher = fetcher
        self._restoring: dict[str, list[Any]] = {}  # destination -> [lock, users]

    async def restore_version(
        self,
        version: FileVersion,
        dest: Path,
        target: RestoreTarget,
        report: Progress | None = None,
        mode: int | None = None,
        mtime_ns: int | None = None,
        progress: ProgressFn | None = None,
        xattrs: Xattrs | None = None,
        holders: dict[bytes, set[int]] | None = None,
    ) -> None:
        """Write ``version`` to ``dest`` (below ``target``'s anchor) atomically: a new temporary
        file with the version's owner and mode, its data, fsync, times, rename.

        Resumable: a destination that already is this version (same size, time and mode) is
        left alone, and the chunks already in an interrupted restore's temporary file (one
        this daemon made and recorded) are verified and kept rather than fetched again.
        """
        async with self._destination_lock(dest):  # two restores never share a temp file
            await self._restore_version(
                version,
                dest,
                target,
                report or Progress(),
                mode,
                mtime_ns,
                progress,
                version.xattrs if xattrs is None else xattrs,
                holders,
            )

    @contextlib.asynccontextmanager
    async def _destination_lock(self, dest: Path) -> AsyncIterator[None]:
        key = str(dest)
        entry = self._restoring.setdefault(key, [trio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._restoring[key]

    async def _restore_version(
        self,
        version: FileVersion,
        dest: Path,
        target: RestoreTarget,
        report: Progress,
        mode: int | None,
        mtime_ns: int | None,
        progress: ProgressFn | None,
        xattrs: Xattrs,
        holders: dict[bytes, set[int]] | None = None,
    ) -> None:
        mode = version.mode if mode is None else mode
        mtime_ns = version.mtime_ns if mtime_ns is None else mtime_ns
        if await trio.to_thread.run_sync(
            _already_restored, target, dest, version.size, mode, mtime_ns
        ):
            report.bytes_done += version.size
            return
        try:
            with target.parent(dest) as (dir_fd, name):
                await self._restore_into(
                    version,
                    dest,
                    target,
                    dir_fd,
                    name,
                    report,
                    mode,
                    mtime_ns,
                    progress,
                    xattrs,
                    holders,
                )
        except UnsafeDestination as exc:
            raise RestoreError(str(exc)) from None

    async def _restore_into(
        self,
        version: FileVersion,
        dest: Path,
        target: RestoreTarget,
        dir_fd: int,
        name: str,
        report: Progress,
        mode: int,
        mtime_ns: int,
        progress: ProgressFn | None,
        xattrs: Xattrs,
        known_holders: dict[bytes, set[int]] | None,
    ) -> None:
        fd, tmp, resumed = await trio.to_thread.run_sync(
            target.partial_file,
            dir_fd,
            name,
            dest,
            mode,
            (version.uid, version.gid),
            len(version.chunks) > 1,
        )
        try:
            windows = trio.CapacityLimiter(RESTORE_WINDOWS)
            cut_at = [self.fetcher.failed_requests]  # failures counted when windows were cut
            write_lock = trio.Lock()
            writer = _ChunkWriter(fd, holes=not resumed)  # a new file: zeros stay holes
            errors: list[RestoreError] = []
            if known_holders is None or not all(c in known_holders for c in version.chunks):
                known_holders = await self._db(self.catalog.holders_many, version.chunks)
            holders = known_holders
            count = len(version.chunks)
            kept: set[int] = set()
            if resumed:  # a new temporary file holds nothing yet
                kept = await trio.to_thread.run_sync(
                    self._chunks_in_place, fd, version, limiter=self.node.cpu_limiter
                )
            if kept:
                log.info("resuming the restore of %s: %d chunks already there", dest, len(kept))
                report.bytes_done += sum(
                    min(CHUNK_SIZE, version.size - no * CHUNK_SIZE) for no in kept
                )

            def checked(no: int, plain: bytes) -> bytes:
                expected = min(CHUNK_SIZE, version.size - no * CHUNK_SIZE)
                if len(plain) != expected:
                    raise RestoreError(f"chunk {no} of {version.path} has the wrong length")
                return plain

            def write(no: int, plain: bytes) -> int:
                return writer.write([(no, checked(no, plain))])

            def open_share(
                items: list[tuple[int, bytes]],
            ) -> tuple[list[tuple[int, bytes]], list[int]]:
                """Verify fetched chunks; return the plaintexts and the chunks that failed."""
                opened, failed = [], []
                for no, envelope in items:
                    try:
                        opened.append(
                            (no, checked(no, open_chunk(self.keys, version.chunks[no], envelope)))
                        )
                    except (EnvelopeError, RestoreError) as exc:
                        log.warning("chunk %d of %s: %s", no, version.path, exc)
                        failed.append(no)
                return opened, failed

            async def from_holder(
                holder: int, nos: list[int], opened: list[tuple[int, bytes]], leftovers: list[int]
            ) -> None:
                got = await self.fetcher.get_envelopes(holder, [version.chunks[no] for no in nos])
                fetched = [(no, got[version.chunks[no]]) for no in nos if version.chunks[no] in got]
                leftovers.extend(no for no in nos if version.chunks[no] not in got)
                plains, failed = await trio.to_thread.run_sync(
                    open_share, fetched, limiter=self.node.cpu_limiter
                )
                opened.extend(plains)
                leftovers.extend(failed)

            async def write_window(opened: list[tuple[int, bytes]]) -> None:
                # One writer at a time: threads writing one file at once spin on its inode lock
                # (measured: 5x the CPU of one writer). A window's chunks are consecutive, so
                # they go in a few large writes.
                if not opened:  # every chunk of the window was there already, or failed
                    return
                async with write_lock:
                    report.bytes_done += await trio.to_thread.run_sync(
                        writer.write, opened, limiter=self.node.disk_limiter
                    )

            def spread(
                nos: list[int], avoid: dict[int, set[int]]
            ) -> tuple[dict[int, list[int]], list[int]]:
                """Chunks by the up holder to ask (a window over its holders: parallel reads,
                no hot spot; not one that just failed to give that chunk, if another has it),
                and the chunks no up holder has."""
                groups: dict[int, list[int]] = {}
                none: list[int] = []
                for no in nos:
                    live = [h for h in holders[version.chunks[no]] if self.node.membership.is_up(h)]
                    if not live:
                        none.append(no)
                        continue
                    tried = avoid.get(no, set())
                    choice = min(live, key=lambda h: (h in tried, len(groups.get(h, ())), h))
                    groups.setdefault(choice, []).append(no)
                return groups, none

            async def window(start: int) -> None:
                async with windows:
                    if errors:
                        return
                    todo = [
                        n for n in range(start, min(start + RESTORE_WINDOW, count)) if n not in kept
                    ]
                    tried: dict[int, set[int]] = {}
                    leftovers: list[int] = []
                    failed_requests = self.fetcher.failed_requests
                    for round_no in range(LEFTOVER_ROUNDS + 1):
                        if round_no:
                            await trio.sleep(0.25 * 2 ** (round_no - 1))
                        groups, nowhere = spread(todo, tried)
                        leftovers += nowhere
                        opened: list[tuple[int, bytes]] = []
                        missed: list[int] = []
                        async with trio.open_nursery() as inner:
                            for holder, nos in groups.items():
                                inner.start_soon(from_holder, holder, nos, opened, missed)
                        for holder, nos in groups.items():
                            for no in nos:
                                tried.setdefault(no, set()).add(holder)
                        try:
                            await write_window(opened)
                        except OSError as exc:  # a full or failing destination disk
                            errors.append(unwritable(exc))
                            return
                        todo = missed
                        if not todo:
                            break
                    leftovers += todo
                    if self.fetcher.failed_requests > max(failed_requests, cut_at[0]):
                        # One halving per burst of failures (one reset fails every window).
                        cut_at[0] = self.fetcher.failed_requests
                        windows.total_tokens = max(1, windows.total_tokens // 2)
                    elif windows.total_tokens < RESTORE_WINDOWS:
                        windows.total_tokens += 1
                    try:
                        if progress is not None:
                            progress(report)
                        for no in leftovers:  # the slow path: failover and retries per chunk
                            written = await self.fetcher.fetch_chunk(
                                version.chunks[no], sink=functools.partial(write, no)
                            )
                            assert isinstance(written, int)
                            report.bytes_done += written
                    except RestoreError as exc:
                        errors.append(exc)
                    except OSError as exc:  # a full or failing destination disk
                        errors.append(unwritable(exc))

            def unwritable(exc: OSError) -> RestoreError:
                return RestoreError(
                    f"cannot write {dest}: {exc.strerror or exc} (what was restored"
                    f" so far is kept in {tmp} and reused by the next attempt)"
                )

            async with trio.open_nursery() as nursery:
                for start in range(0, count, RESTORE_WINDOW):
                    nursery.start_soon(window, start)
            if errors:
                raise errors[0]
            os.ftruncate(fd, version.size)
            refused = await trio.to_thread.run_sync(
                target.publish, dir_fd, fd, tmp, name, dest, mode, mtime_ns, xattrs
            )
            report.xattrs_refused.extend(f"{dest}: {n}" for n in refused)
        finally:
            # An unfinished temporary file stays: what it holds is verified and reused.
            os.close(fd)

    def _chunks_in_place(self, fd: int, version: FileVersion) -> set[int]:
        """Chunks of ``version`` an interrupted restore already wrote correctly to ``fd``."""
        size = os.fstat(fd).st_size
        kept: set[int] = set()
        for no, address in enumerate(version.chunks):
            expected = min(CHUNK_SIZE, version.size - no * CHUNK_SIZE)
            if no * CHUNK_SIZE + expected > size or expected == 0:
                continue
            data = os.pread(fd, expected, no * CHUNK_SIZE)
            if len(data) == expected and chunk_address(self.keys, data) == address:
                kept.add(no)
        return kept

    async def restore_files(
        self,
        target: RestoreTarget,
        files: list[Entry],
        report: Progress,
        progress: ProgressFn | None,
    ) -> None:
        """Write each file (with the mode, times and attributes of its snapshot entry, if it
        has one); a second name of a file already written becomes a hard link to it. The first
        error is raised once every other file had its turn."""
        firsts = hard_links([version for _where, version, _entry in files])
        # Who holds the small files' chunks, in one query (a big file asks for its own).
        holders = await self._db(
            self.catalog.holders_many,
            [c for _w, v, _e in files if v.size <= RESTORE_SMALL for c in v.chunks],
        )
        errors: list[Exception] = []
        room = trio.Semaphore(GROUPS)

        async def group_done(group: list[Entry]) -> None:
            try:
                await self._restore_group(target, group, holders, report, progress, errors)
            finally:
                room.release()

        # Small files in groups, several groups at once; a big file alone, as it already
        # fetches many windows at once.
        async with trio.open_nursery() as nursery:
            group: list[Entry] = []
            size = 0
            for item, first in zip(files, firsts, strict=True):
                if errors:
                    break
                if first is not None:
                    continue
                version = item[1]
                if version.size > RESTORE_SMALL:
                    try:
                        mode, mtime_ns, xattrs = _as_entry(item[2])
                        await self.restore_version(
                            version, item[0], target, report, mode, mtime_ns, progress, xattrs
                        )
                    except (RestoreError, OSError) as exc:
                        errors.append(exc)
                        continue
                    report.files_done += 1
                    if progress:
                        progress(report)
                    continue
                group.append(item)
                size += version.size
                if len(group) >= GROUP_FILES or size >= GROUP_BYTES:
                    await room.acquire()
                    nursery.start_soon(group_done, group)
                    group, size = [], 0
            if group and not errors:
                await room.acquire()
                nursery.start_soon(group_done, group)
        if errors:
            raise errors[0]
        for (where, version, _entry), first in zip(files, firsts, strict=True):
            if first is not None:  # made once every file they are names of is in place
                try:
                    made = await trio.to_thread.run_sync(
                        target.make_hard_link, files[first][0], where
                    )
                except UnsafeDestination as exc:
                    raise RestoreError(str(exc)) from None
                if made:
                    report.hard_links += 1
                else:
                    log.warning("%s: a folder is there now; the hard link is not made", where)
                    report.links_not_made.append(str(where))
                report.bytes_done += version.size
                report.files_done += 1
                if progress:
                    progress(report)

    async def _restore_group(
        self,
        target: RestoreTarget,
        group: list[Entry],
        holders: dict[bytes, set[int]],
        report: Progress,
        progress: ProgressFn | None,
        errors: list[Exception],
    ) -> None:
        """Restore a group of small files: the ones not already there are fetched together
        (one GETCHUNKS per holder) and written in one worker-thread hop."""
        there = await trio.to_thread.run_sync(_already_there, target, group)
        todo = [item for item, done in zip(group, there, strict=True) if not done]
        report.bytes_done += sum(
            v.size for (_w, v, _e), done in zip(group, there, strict=True) if done
        )
        report.files_done += len(group) - len(todo)
        found, missing = await self.fetcher.fetch_found(
            [c for _w, v, _e in todo for c in v.chunks], holders
        )
        outcomes = await trio.to_thread.run_sync(
            _write_group, target, todo, found, missing, limiter=self.node.disk_limiter
        )
        for (where, version, _entry), outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, Exception):
                errors.append(outcome)
                continue
            report.xattrs_refused.extend(f"{where}: {n}" for n in outcome)
            report.bytes_done += version.size
            report.files_done += 1
        if progress:
            progress(report)


def _as_entry(entry: TreeEvent | None) -> tuple[int | None, int | None, Xattrs | None]:
    """(mode, mtime, xattrs) a snapshot entry gives a file; None for each without one."""
    if entry is None:
        return None, None, None
    return entry.mode, entry.mtime_ns, entry.xattrs


def _wanted(version: FileVersion, entry: TreeEvent | None) -> tuple[int, int, Xattrs]:
    """(mode, mtime, xattrs) the restored file gets: its snapshot entry's, else the version's."""
    mode, mtime_ns, xattrs = _as_entry(entry)
    return (
        version.mode if mode is None else mode,
        version.mtime_ns if mtime_ns is None else mtime_ns,
        version.xattrs if xattrs is None else xattrs,
    )


def _already_there(target: RestoreTarget, group: list[Entry]) -> list[bool]:
    out = []
    for where, version, entry in group:
        mode, mtime_ns, _xattrs = _wanted(version, entry)
        out.append(_already_restored(target, where, version.size, mode, mtime_ns))
    return out


def _plains(
    version: FileVersion, found: dict[bytes, bytes], missing: dict[bytes, RestoreError]
) -> list[tuple[int, bytes]]:
    plains = []
    for no, address in enumerate(version.chunks):
        if address in missing:
            raise missing[address]
        plain = found[address]
        if len(plain) != min(CHUNK_SIZE, version.size - no * CHUNK_SIZE):
            raise RestoreError(f"chunk {no} of {version.path} has the wrong length")
        plains.append((no, plain))
    return plains


def _failure(where: Path, exc: Exception) -> Exception:
    if isinstance(exc, UnsafeDestination):
        return RestoreError(str(exc))
    if isinstance(exc, OSError):
        return RestoreError(f"cannot write {where}: {exc.strerror or exc}")
    return exc


def _write_group(
    target: RestoreTarget,
    group: list[Entry],
    found: dict[bytes, bytes],
    missing: dict[bytes, RestoreError],
) -> list[list[str] | Exception]:
    """Write the small files of ``group`` from their fetched chunks (on a worker thread):
    for each, the extended attributes it refused, or why it could not be restored.

    Each goes into a new temporary file (a small file has nothing to resume) with its data,
    attributes and mode; then all of them are flushed at once, and only then each takes its
    times and its name. A temporary file that did not take its name is removed.
    """
    outcomes: list[list[str] | Exception] = [[] for _ in group]
    made: list[tuple[int, int, int, str, str]] = []  # (index, folder fd, fd, temp name, name)
    named: set[int] = set()
    with target.parents() as parent_of:
        try:
            for i, (where, version, entry) in enumerate(group):
                mode, _mtime_ns, xattrs = _wanted(version, entry)
                try:
                    plains = _plains(version, found, missing)
                    dir_fd, name = parent_of(where)
                    fd, tmp, _resumed = target.partial_file(
                        dir_fd, name, where, mode, (version.uid, version.gid), resumable=False
                    )
                    made.append((i, dir_fd, fd, tmp, name))
                    _ChunkWriter(fd, holes=True).write(plains)
                    os.ftruncate(fd, version.size)
                    outcomes[i] = target.prepare(fd, mode, xattrs)
                except (UnsafeDestination, RestoreError, OSError) as exc:
                    outcomes[i] = _failure(where, exc)
            ready = [m for m in made if not isinstance(outcomes[m[0]], Exception)]
            flushed = flush_files([fd for _i, _d, fd, _t, _n in ready])
            for (i, dir_fd, fd, tmp, name), error in zip(ready, flushed, strict=True):
                where, version, entry = group[i]
                try:
                    if error is not None:
                        raise error
                    target.commit(dir_fd, fd, tmp, name, where, _wanted(version, entry)[1])
                    named.add(i)
                except OSError as exc:
                    outcomes[i] = _failure(where, exc)
        finally:
            for i, dir_fd, fd, tmp, _name in made:
                os.close(fd)
                if i not in named:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=dir_fd)
    return outcomes
