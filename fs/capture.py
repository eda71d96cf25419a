"""Cutting versions of files written through the mount, and recording the tree's changes.

When a written file is closed or fsync'd, ``VersionCutter.cut`` starts a *cut*: it notes the
file's size and times at that instant and decides which chunks must be read — only the changed
ones; the others keep the addresses of the previous version (the previous cut of the same file
if that one is still in flight).
It returns at once; the chunks are read, addressed and sealed in the background into the
*outbox* (a local chunk store, so the version no longer depends on the file and survives a
crash).

A version is never torn: until a cut has read a chunk, a write or truncation that would change
it first copies the chunk's current bytes aside (``before_write``/``before_truncate``, called
by the mount with the file's lock held). The reads take the same lock, so each chunk is read
either before the write or from the copy.

Every change of the tree (new versions, folders, links, removals, renames, modes) goes through
one ordered queue. A committer takes what is ready from its head — in order — and records it
with one outbox flush and one catalog transaction: one snapshot per commit, however many files
it holds. ``barrier`` waits until everything queued so far is committed.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from chunkstore import crashpoints
from chunkstore.catalog import (
    DEGREE_XATTR,
    FileVersion,
    Xattrs,
    is_own_temp,
    read_xattrs,
    version_from_stat,
)
from chunkstore.catalogbase import TREE_DIR, TREE_SYMLINK
from chunkstore.catalogdb import (
    AttrRecord,
    CatalogDB,
    CutRecord,
    EntryRecord,
    LinkRecord,
    RemovalRecord,
    RenameRecord,
    TreeChange,
)
from chunkstore.chunking import CHUNK_SIZE, chunk_count
from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.exclusions import Exclusions
from chunkstore.keys import KeyRing
from chunkstore.shares import Code, parse_keeping
from chunkstore.store import ChunkStore, PutItem

from .dirty import DirtyFile
from .longpath import is_long, open_folder

log = logging.getLogger(__name__)
BATCH = 15  # chunks per read under the file's lock (about 1 MB: writers wait at most that)
FLUSH_BYTES = 8 << 20  # a big cut puts its sealed chunks into the outbox in groups this large
ASIDE_LIMIT = 64 << 20  # bytes copied aside for one cut before writers wait for it
COMMIT_BATCH = 256  # tree changes per catalog transaction
COMMIT_DELAY = 0.1  # seconds the committer waits for more changes (unless someone waits)


class CutFailed(Exception):
    """A version could not be cut (the file's changes stay dirty and are retried)."""


@dataclass(eq=False)
class CutJob:
    """One version being cut: what to read, and what was copied aside before a write."""

    relative: str
    fd: int  # our own read-only descriptor, closed when the cut ends
    st: os.stat_result
    changes: DirtyFile
    degree: int
    lock: trio.Lock  # the file's lock: held by writers, and by us while reading
    previous: FileVersion | None = None
    before: CutJob | None = None  # the cut of the same file still in flight when this began
    inode: int | None = None
    planned: bool = False
    addresses: list[bytes | None] = field(default_factory=list)
    unread: set[int] = field(default_factory=set)
    aside: dict[int, bytes] = field(default_factory=dict)
    aside_bytes: int = 0
    sealed: list[PutItem] = field(default_factory=list)
    bytes_read: int = 0
    ready: trio.Event = field(default_factory=trio.Event)
    committed: trio.Event = field(default_factory=trio.Event)
    progressed: trio.Event = field(default_factory=trio.Event)
    version: FileVersion | None = None
    error: BaseException | None = None
    on_failure: Callable[[DirtyFile], None] | None = None
    aliases: tuple[str, ...] = ()  # the file's other names (hard links)
    xattrs: Xattrs = ()  # its extended attributes when the cut began

    def length(self, no: int) -> int:
        return max(0, min(CHUNK_SIZE, self.st.st_size - no * CHUNK_SIZE))

    def keep_aside(self, no: int) -> None:
        """Copy chunk ``no`` as the cut must see it, before something changes it."""
        if no < chunk_count(self.st.st_size) and no in self.unread and no not in self.aside:
            data = os.pread(self.fd, self.length(no), no * CHUNK_SIZE)
            self.aside[no] = data
            self.aside_bytes += len(data)

    async def result(self) -> FileVersion:
        await self.committed.wait()
        if self.version is None:
            raise CutFailed(f"{self.relative}: {self.error}")
        return self.version


@dataclass(eq=False)
class _Queued:
    change: TreeChange | None = None
    job: CutJob | None = None
    done: trio.Event = field(default_factory=trio.Event)


class VersionCutter:
    def __init__(
        self,
        keys: KeyRing,
        catalog: CatalogDB,
        outbox: ChunkStore,
        owner: int,
        source_root: str,
        degree_for: Callable[[str], int],
        on_commit: Callable[[list[FileVersion]], None] | None = None,
        exclusions: Exclusions | None = None,
    ) -> None:
        self.keys = keys
        self.exclusions = exclusions or Exclusions()  # what the mount leaves out
        self.catalog = catalog
        self.outbox = outbox
        self.owner = owner
        self.source_root = source_root.rstrip("/")
        self.degree_for = degree_for
        self.on_commit = on_commit
        self.limiter = trio.CapacityLimiter(2)
        self.bytes_read = 0
        self.versions_cut = 0
        self._active: dict[int, list[CutJob]] = {}  # inode -> cuts still reading
        self._latest_job: dict[int, CutJob] = {}  # inode -> its newest cut
        self._queue: deque[_Queued] = deque()
        self._last: _Queued | None = None  # the newest change queued (maybe being committed)
        self._queue_changed = trio.Event()
        self._hurry = trio.Event()  # someone waits for a commit: do not gather more
        self._nursery: trio.Nursery | None = None

    def catalog_path(self, relative: str) -> str:
        return f"{self.source_root}/{relative}"

    def ignores(self, relative: str) -> bool:
        """Whether the entry at ``relative`` is never recorded: lanvault's own temporary file,
        or one the mount's exclusions leave out (or inside a folder they leave out)."""
        if is_own_temp(relative):
            return True
        if not self.exclusions.patterns:
            return False
        parts = relative.split("/")  # a folder left out leaves out everything in it
        return any(
            self.exclusions.excludes(self.catalog_path("/".join(parts[:i])))
            for i in range(1, len(parts) + 1)
        )

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The cuts' readers and the committer; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._committer)
            task_status.started()
            await trio.sleep_forever()

    async def barrier(self) -> None:
        """Wait until everything queued so far is committed (or has failed)."""
        if self._last is not None and not self._last.done.is_set():
            self._hurry.set()
            await self._last.done.wait()

    async def committed(self, job: CutJob) -> None:
        """Wait until ``job`` is committed (fsync asks for it)."""
        if not job.committed.is_set():
            self._hurry.set()
            await job.committed.wait()

    def _enqueue(self, item: _Queued) -> None:
        self._queue.append(item)
        self._last = item
        self._queue_changed.set()

    # -- cuts ----------------------------------------------------------------------------

    async def cut(
        self,
        relative: str,
        fd: int,
        changes: DirtyFile,
        lock: trio.Lock | None = None,
        inode: int | None = None,
        on_failure: Callable[[DirtyFile], None] | None = None,
        aliases: tuple[str, ...] = (),
    ) -> CutJob:
        """Start cutting a version of ``relative`` as it is now; returns once it is queued.

        Called with the file's ``lock`` held (writes wait meanwhile). ``fd`` is only borrowed.
        """
        assert self._nursery is not None, "VersionCutter.run is not running"
        own_fd = os.dup(fd)
        try:
            st = os.fstat(own_fd)
            xattrs = read_xattrs(own_fd)
            in_flight = self._latest_job.get(inode) if inode is not None else None
            if in_flight is not None and in_flight.committed.is_set():
                in_flight = None
            previous = None
            if in_flight is None and changes.truncated_to != 0:  # else nothing is reusable
                # The newest version of the path, if it was cut from this very file (a rename
                # onto the path may still be queued): the one its newest event names, which
                # pruning never takes away (see chunkstore/catalogdb.py).
                previous = await trio.to_thread.run_sync(
                    functools.partial(
                        self.catalog.latest, self.catalog_path(relative), inode=st.st_ino
                    )
                )
        except BaseException:
            os.close(own_fd)
            raise
        job = CutJob(
            relative=relative,
            fd=own_fd,
            st=st,
            changes=changes,
            degree=self.degree_for(relative),
            lock=lock or trio.Lock(),
            previous=previous,
            before=in_flight,
            inode=inode,
            on_failure=on_failure,
            aliases=aliases,
            xattrs=xattrs,
        )
        if in_flight is None:
            self._plan(job)
        else:
            # Until the cut before it is done, nothing is known to be reusable: every chunk
            # is protected as if it had to be read.
            job.addresses = [None] * chunk_count(st.st_size)
            job.unread = set(range(len(job.addresses)))
        if inode is not None:
            self._latest_job[inode] = job
            if job.unread:
                self._active.setdefault(inode, []).append(job)
        self._enqueue(_Queued(job=job))
        self._nursery.start_soon(self._read_and_seal, job, inode)
        return job

    @staticmethod
    def _plan(job: CutJob) -> None:
        """Which chunks keep the previous version's address, and which must be read."""
        job.planned = True
        size = job.st.st_size
        count = chunk_count(size)
        job.addresses = [None] * count
        previous, changes = job.previous, job.changes
        if previous is not None:
            # A chunk keeps its address if it was not written and its bytes lie wholly below
            # the old size, the new size and any size the file was truncated to meanwhile
            # (growing or shrinking changes the last chunk; a truncation zeroes what follows).
            limit = min(previous.size, size)
            if changes.truncated_to is not None:
                limit = min(limit, changes.truncated_to)
            same_end = previous.size == size == limit
            for no in range(count):
                if no in changes.chunks:
                    continue
                if (no + 1) * CHUNK_SIZE <= limit or (same_end and no == count - 1):
                    job.addresses[no] = previous.chunks[no]
        job.unread = {no for no, a in enumerate(job.addresses) if a is None}

    @staticmethod
    def _replan(job: CutJob) -> None:
        """The cut before this one is done: reuse what it had, drop copies no longer needed."""
        before = job.before
        job.previous = before.version if before is not None else None
        job.before = None
        protected = job.unread
        VersionCutter._plan(job)
        for no in protected - job.unread:
            data = job.aside.pop(no, None)
            if data is not None:
                job.aside_bytes -= len(data)

    def before_write(self, inode: int, offset: int, length: int) -> None:
        """A write of ``length`` bytes at ``offset`` is about to happen (file lock held)."""
        jobs = self._active.get(inode)
        if not jobs or length <= 0:
            return
        first, last = offset // CHUNK_SIZE, (offset + length - 1) // CHUNK_SIZE
        for job in jobs:
            for no in range(first, last + 1):
                job.keep_aside(no)

    def before_truncate(self, inode: int, size: int) -> None:
        """The file is about to be truncated (or extended) to ``size`` (file lock held)."""
        for job in self._active.get(inode, ()):
            for no in sorted(job.unread):
                if (no + 1) * CHUNK_SIZE > size:
                    job.keep_aside(no)

    def busy(self, inode: int) -> bool:
        """Whether a cut of ``inode`` is still reading it."""
        return bool(self._active.get(inode))

    def aside_full(self, inode: int) -> CutJob | None:
        """A cut of ``inode`` that has copied so much aside that writers should wait for it."""
        for job in self._active.get(inode, ()):
            if job.aside_bytes >= ASIDE_LIMIT:
                return job
        return None

    def _read_batch(self, job: CutJob, numbers: list[int]) -> list[tuple[int, bytes]]:
        out = []
        for no in numbers:
            data = job.aside.pop(no, None)
            if data is None:
                data = os.pread(job.fd, job.length(no), no * CHUNK_SIZE)
                job.bytes_read += len(data)
            else:
                job.aside_bytes -= len(data)
            out.append((no, data))
        return out

    def _read_and_seal_batch(self, job: CutJob, numbers: list[int]) -> list[tuple[int, PutItem]]:
        return self._seal(job.degree, self._read_batch(job, numbers))

    def _seal(self, degree: int, batch: list[tuple[int, bytes]]) -> list[tuple[int, PutItem]]:
        # A coded chunk is sealed deterministically (its shares made again later match) and
        # waits in the outbox whole (at "degree" 1: its shares are made as it is sent).
        coded = Code.of_degree(degree) is not None
        kept = 1 if coded else degree
        sealed = []
        for no, data in batch:
            address = chunk_address(self.keys, data)
            envelope = seal_chunk(self.keys, address, data, deterministic=coded)
            sealed.append((no, PutItem(self.owner, address, envelope, kept)))
        return sealed

    async def _read_and_seal(self, job: CutJob, inode: int | None) -> None:
        pending_bytes = 0

        async def flush_sealed() -> None:
            nonlocal pending_bytes
            items, job.sealed = job.sealed, []
            pending_bytes = 0
            if items:
                await trio.to_thread.run_sync(self.outbox.put_many, items)

        async def worker() -> None:
            nonlocal pending_bytes
            if job.before is not None:
                await job.before.ready.wait()
                async with job.lock:
                    if not job.planned:
                        self._replan(job)
            while True:
                async with job.lock:
                    numbers = sorted(job.unread)[:BATCH]
                    if not numbers:
                        return
                    job.unread.difference_update(numbers)
                    if len(numbers) == 1:
                        # One chunk (most small files): read and seal in one thread hop.
                        sealed = await trio.to_thread.run_sync(
                            self._read_and_seal_batch, job, numbers, limiter=self.limiter
                        )
                        batch = []
                    else:
                        batch = await trio.to_thread.run_sync(self._read_batch, job, numbers)
                job.progressed.set()
                job.progressed = trio.Event()
                if batch:
                    sealed = await trio.to_thread.run_sync(
                        self._seal, job.degree, batch, limiter=self.limiter
                    )
                for no, item in sealed:
                    job.addresses[no] = item.address
                    job.sealed.append(item)
                    pending_bytes += len(item.envelope)
                if pending_bytes >= FLUSH_BYTES:
                    await flush_sealed()

        try:
            if len(job.unread) <= BATCH and job.before is None:
                await worker()  # one batch: nothing to overlap
            else:
                async with trio.open_nursery() as nursery:
                    for _ in range(2):  # one reads under the lock while the other seals
                        nursery.start_soon(worker)
            if sum(len(i.envelope) for i in job.sealed) >= FLUSH_BYTES // 4:
                await flush_sealed()  # big leftovers go now; small ones ride the group commit
            final = [a for a in job.addresses if a is not None]
            if len(final) != len(job.addresses):
                raise CutFailed("some chunks were not read")
            job.version = version_from_stat(
                self.owner,
                self.catalog_path(job.relative),
                job.st,
                job.degree,
                final,
                xattrs=job.xattrs,
            )
        except Exception as exc:  # an I/O error: the version is not recorded, the changes stay
            log.warning("could not cut a version of %s: %s", job.relative, exc)
            job.error = exc
            job.version = None
        finally:
            self.bytes_read += job.bytes_read
            if inode is not None:
                jobs = self._active.get(inode, [])
                if job in jobs:
                    jobs.remove(job)
                if not jobs:
                    self._active.pop(inode, None)
            job.aside.clear()
            job.aside_bytes = 0
            job.progressed.set()
            os.close(job.fd)
            job.ready.set()
            self._queue_changed.set()

    # -- the tree's structure ----------------------------------------------------------------

    def made(
        self, relative: str, st: os.stat_result, target: str = "", xattrs: Xattrs = ()
    ) -> None:
        """A folder or symlink appeared, or changed (files are recorded when their version is
        cut)."""
        if stat.S_ISDIR(st.st_mode):
            self._enqueue(
                _Queued(EntryRecord(relative, TREE_DIR, st.st_mode, st.st_mtime_ns, "", xattrs))
            )
        elif stat.S_ISLNK(st.st_mode):
            self._enqueue(
                _Queued(
                    EntryRecord(relative, TREE_SYMLINK, st.st_mode, st.st_mtime_ns, target, xattrs)
                )
            )

    def removed(self, relative: str) -> None:
        self._enqueue(_Queued(RemovalRecord(relative)))

    def renamed(self, old: str, new: str) -> None:
        self._enqueue(_Queued(RenameRecord(old, new)))

    def linked(self, existing: str, new: str) -> None:
        self._enqueue(_Queued(LinkRecord(existing, new)))

    def attributes_changed(
        self, relative: str, st: os.stat_result, xattrs: Xattrs | None = None
    ) -> None:
        """chmod, touch or an extended attribute set or removed, without a content change:
        recorded for the entry as it is (``xattrs`` None: they did not change)."""
        self._enqueue(_Queued(AttrRecord(relative, st.st_mode, st.st_mtime_ns, xattrs)))

    def latest_seq(self) -> int:
        return self.catalog.latest_seq(self.source_root)

    # -- committing ----------------------------------------------------------------------

    async def _committer(self) -> None:
        while True:
            while not self._queue or (
                self._queue[0].job is not None and not self._queue[0].job.ready.is_set()
            ):
                await self._queue_changed.wait()
                self._queue_changed = trio.Event()
            if len(self._queue) < COMMIT_BATCH:
                # Gather what comes within a moment into the same commit (one snapshot and one
                # flush for a burst of small files), unless someone is waiting for it.
                with trio.move_on_after(COMMIT_DELAY):
                    await self._hurry.wait()
            self._hurry = trio.Event()
            batch: list[_Queued] = []
            while self._queue and len(batch) < COMMIT_BATCH:
                head = self._queue[0]
                if head.job is not None and not head.job.ready.is_set():
                    break
                batch.append(self._queue.popleft())
            await self._commit(batch)

    async def _commit(self, batch: list[_Queued]) -> None:
        changes: list[TreeChange] = []
        items: list[PutItem] = []
        cut_jobs: list[CutJob] = []
        for queued in batch:
            job = queued.job
            if job is None:
                assert queued.change is not None
                changes.append(queued.change)
            elif job.version is not None:
                changes.append(CutRecord(job.relative, job.version, job.aliases, job.st.st_ino))
                items.extend(job.sealed)
                cut_jobs.append(job)

        def write() -> None:
            if items:
                self.outbox.put_many(items)  # durable before the catalog names them
                crashpoints.reached("cut.outbox")
            if changes:
                self.catalog.commit_tree(self.source_root, changes, time.time_ns())
                crashpoints.reached("cut.committed")

        error: BaseException | None = None
        for attempt in range(5):
            try:
                await trio.to_thread.run_sync(write)
                error = None
                break
            except Exception as exc:
                error = exc
                log.warning("recording %d tree changes failed (%s); retrying", len(changes), exc)
                await trio.sleep(0.2 * 2**attempt)
        for queued in batch:
            job = queued.job
            if job is None:
                continue
            if error is not None and job.version is not None:
                job.error, job.version = error, None
            if job.version is None and job.on_failure is not None:
                job.on_failure(job.changes)
            job.sealed = []
        if error is not None:
            log.error("lost %d tree changes (%s); the next mount catches up", len(changes), error)
        versions = [j.version for j in cut_jobs if j.version is not None]
        self.versions_cut += len(versions)
        for queued in batch:
            job = queued.job
            if job is not None:
                job.committed.set()
                if job.inode is not None and self._latest_job.get(job.inode) is job:
                    del self._latest_job[job.inode]
            queued.done.set()
        if versions and self.on_commit is not None:
            self.on_commit(versions)


def degree_from_xattrs(real_root: str, relative: str, default: int) -> int:
    """The file's ``user.lanvault.degree``, else the nearest folder's above it, else ``default``:
    a number of copies, or a K-of-N code as its recorded degree."""
    parts = relative.split("/") if relative else []
    for depth in range(len(parts), -1, -1):
        path = "/".join([real_root, *parts[:depth]])
        try:
            value = _degree_attribute(real_root, "/".join(parts[:depth]), path)
        except OSError:
            continue
        degree = parse_keeping(value.decode("ascii", "replace"))
        if degree is not None:  # copies (1..9) or a code (2-of-4)
            return degree
    return default


def _degree_attribute(real_root: str, relative: str, path: str) -> bytes:
    """``user.lanvault.degree`` of ``path`` (= ``real_root``/``relative``), also when the path
    is longer than PATH_MAX (then reached through folder descriptors)."""
    if not is_long(path):
        found: bytes = os.getxattr(path, DEGREE_XATTR, follow_symlinks=False)
        return found
    root = os.open(real_root, os.O_PATH | os.O_DIRECTORY)
    try:
        parent, _, name = relative.rpartition("/")
        folder = open_folder(root, parent)
    finally:
        os.close(root)
    try:
        found = os.getxattr(f"/proc/self/fd/{folder}/{name}", DEGREE_XATTR, follow_symlinks=False)
        return found
    finally:
        os.close(folder)
