"""Writing restored files: each one into a new temporary file beside its destination, whole
and verified, flushed, then renamed into place (``RestoreTarget`` decides where, safely).

A big file is fetched in windows of chunks spread over their holders, several windows at once
(``restore_windows.py``), and can resume from an interrupted restore's temporary file. Small files go in groups: one
fetch per holder for a whole group, and one worker-thread hop that writes all of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

from chunkstore.catalog import FileVersion, Xattrs, hard_links
from chunkstore.catalogdb import CatalogDB, TreeEvent
from chunkstore.chunking import CHUNK_SIZE
from chunkstore.keys import KeyRing

from .fetch import DbRunner, Fetcher
from .node import Node
from .offload import in_thread
from .report import DestinationError, Progress, ProgressFn, RestoreError
from .restore_target import RestoreTarget, UnsafeDestination, flush_files
from .restore_windows import ChunkWriter, WindowedFetch, chunks_in_place

log = logging.getLogger(__name__)
RESTORE_SMALL = CHUNK_SIZE  # bytes: a file up to this size (one chunk) is small ...
GROUP_FILES = 512  # ... and restored in groups of up to this many files ...
GROUP_BYTES = 8 * 1024 * 1024  # ... or this many bytes,
GROUPS = 2  # this many groups at once: one is fetched while the other is written (four at
# once, with 128 files each, spent the owner's time on the GIL and the kernel's locks: 20,000
# small files restored in 6.5-7.2 s against 5.5-6.2 s; one at a time, 8-9 s)

Entry = tuple[Path, FileVersion, TreeEvent | None]  # where, what, its snapshot entry if any


def _already_restored(
    target: RestoreTarget,
    dest: Path,
    size: int,
    mode: int,
    mtime_ns: int,
    parent_of: Callable[[Path], tuple[int, str]] | None = None,
) -> bool:
    st = target.lstat(dest, parent_of)
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
        if await in_thread(_already_restored, target, dest, version.size, mode, mtime_ns):
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
        fd, tmp, resumed = await in_thread(
            target.partial_file,
            dir_fd,
            name,
            dest,
            mode,
            (version.uid, version.gid),
            len(version.chunks) > 1,
        )
        try:
            if known_holders is None or not all(c in known_holders for c in version.chunks):
                known_holders = await self._db(self.catalog.holders_many, version.chunks)
            kept: set[int] = set()
            if resumed:  # a new temporary file holds nothing yet
                kept = await in_thread(
                    chunks_in_place, self.keys, fd, version, limiter=self.node.cpu_limiter
                )
            if kept:
                log.info("resuming the restore of %s: %d chunks already there", dest, len(kept))
                report.bytes_done += sum(
                    min(CHUNK_SIZE, version.size - no * CHUNK_SIZE) for no in kept
                )

            def unwritable(exc: OSError) -> RestoreError:
                return DestinationError(
                    f"cannot write {dest}: {exc.strerror or exc} (what was restored"
                    f" so far is kept in {tmp} and reused by the next attempt)"
                )

            await WindowedFetch(
                self.node,
                self.keys,
                self.fetcher,
                version,
                ChunkWriter(fd, holes=not resumed),  # a new file: zeros stay holes
                known_holders,
                kept,
                report,
                progress,
                unwritable,
            ).run()
            os.ftruncate(fd, version.size)
            refused = await in_thread(
                target.publish, dir_fd, fd, tmp, name, dest, mode, mtime_ns, xattrs
            )
            report.xattrs_refused.extend(f"{dest}: {n}" for n in refused)
        finally:
            # An unfinished temporary file stays: what it holds is verified and reused.
            os.close(fd)

    async def restore_files(
        self,
        target: RestoreTarget,
        files: list[Entry],
        report: Progress,
        progress: ProgressFn | None,
    ) -> None:
        """Write each file (with the mode, times and attributes of its snapshot entry, if it
        has one); a second name of a file already written becomes a hard link to it. A file
        that cannot be restored does not stop the others: once every file had its turn, one
        ``RestoreError`` names those that could not be (only the destination failing stops
        the restore early)."""
        firsts = hard_links([version for _where, version, _entry in files])
        # Who holds the small files' chunks, in one query (a big file asks for its own).
        holders = await self._db(
            self.catalog.holders_many,
            [c for _w, v, _e in files if v.size <= RESTORE_SMALL for c in v.chunks],
        )
        errors: list[tuple[Path, Exception]] = []  # (where, why): the others still come back
        room = trio.Semaphore(GROUPS)

        def stopped() -> bool:  # the destination failing fails every file after it too
            return any(isinstance(exc, DestinationError) for _where, exc in errors)

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
                if stopped():
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
                    except RestoreError as exc:
                        errors.append((item[0], exc))
                        continue
                    except OSError as exc:
                        errors.append((item[0], _failure(item[0], exc)))
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
            if group and not stopped():
                await room.acquire()
                nursery.start_soon(group_done, group)
        not_made = {where for where, _exc in errors}
        for (where, version, _entry), first in zip(files, firsts, strict=True):
            if first is not None and stopped():
                break
            if first is not None and files[first][0] in not_made:
                errors.append((where, RestoreError(f"a hard link to {files[first][0]}, not made")))
                continue
            if first is not None:  # made once every file they are names of is in place
                try:
                    made = await in_thread(target.make_hard_link, files[first][0], where)
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
        if errors:
            raise _summary(errors, report)

    async def _restore_group(
        self,
        target: RestoreTarget,
        group: list[Entry],
        holders: dict[bytes, set[int]],
        report: Progress,
        progress: ProgressFn | None,
        errors: list[tuple[Path, Exception]],
    ) -> None:
        """Restore a group of small files: the ones not already there are fetched together
        (one GETCHUNKS per holder) and written in one worker-thread hop."""
        there = await in_thread(_already_there, target, group)
        todo = [item for item, done in zip(group, there, strict=True) if not done]
        report.bytes_done += sum(
            v.size for (_w, v, _e), done in zip(group, there, strict=True) if done
        )
        report.files_done += len(group) - len(todo)
        found, missing = await self.fetcher.fetch_found(
            [c for _w, v, _e in todo for c in v.chunks], holders
        )
        outcomes = await in_thread(
            _write_group, target, todo, found, missing, limiter=self.node.disk_limiter
        )
        for (where, version, _entry), outcome in zip(todo, outcomes, strict=True):
            if isinstance(outcome, Exception):
                errors.append((where, outcome))
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
    with target.parents() as parent_of:  # each folder opened once for the group
        for where, version, entry in group:
            mode, mtime_ns, _xattrs = _wanted(version, entry)
            out.append(_already_restored(target, where, version.size, mode, mtime_ns, parent_of))
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
        return DestinationError(f"cannot write {where}: {exc.strerror or exc}")
    return exc


SHOWN_FAILURES = 5  # files named in a restore's error; the count says how many more


def _summary(failed: list[tuple[Path, Exception]], report: Progress) -> RestoreError:
    """One error for a restore in which some files could not be restored: how many, each
    with its reason (a few), and that the others were restored."""
    if report.files_total <= 1 and len(failed) == 1:
        return _as_restore_error(failed[0][1])
    lines = [_with_path(where, exc) for where, exc in failed[:SHOWN_FAILURES]]
    more = len(failed) - len(lines)
    said = (
        f"{len(failed)} of {report.files_total} files could not be restored"
        f" ({report.files_done} were): " + "; ".join(lines)
    )
    if more:
        said += f"; and {more} more"
    if any(isinstance(exc, DestinationError) for _where, exc in failed):
        return DestinationError(said + " (the restore stopped at the destination's error)")
    return RestoreError(said)


def _with_path(where: Path, exc: Exception) -> str:
    text = str(exc)
    return text if str(where) in text else f"{where}: {text}"


def _as_restore_error(exc: Exception) -> RestoreError:
    return exc if isinstance(exc, RestoreError) else RestoreError(str(exc))


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
                    ChunkWriter(fd, holes=True).write(plains)
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
