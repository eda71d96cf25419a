"""What the live folder does with what is written: which byte ranges of each file changed
since its version (``DirtyTracker``), when its next version is cut (``BurstDeferral``: after a
burst of changes; ``CutScheduler``: the debounce), cutting it (``VersionCutter``), truncating
under the same rules, and holding writers back while a cut of their file keeps too much copied
aside.

No FUSE here: ``PassthroughOps`` turns requests into these calls, and reaches the real files
for it through ``open_for_read`` (a path relative to SOURCE -> a read-only descriptor).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import trio

from .burst import LONGEST, BurstDeferral
from .capture import CutJob, VersionCutter
from .cutschedule import CutScheduler
from .dirty import DirtyTracker
from .inodes import InodeTable

log = logging.getLogger(__name__)


class ChangeRecorder:
    def __init__(
        self,
        capture: VersionCutter | None,
        inodes: InodeTable,
        min_interval: float,
        open_for_read: Callable[[str], int],
        burst_wait: float = LONGEST,
    ) -> None:
        self.capture = capture
        self.inodes = inodes
        self.dirty = DirtyTracker()
        self.schedule = CutScheduler(min_interval, lambda inode: self.cut(inode, debounce=False))
        self.burst = BurstDeferral(lambda inode: self.cut(inode, after_burst=True), burst_wait)
        self._open_for_read = open_for_read

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Holds the deferred and the debounced cuts; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.burst.run)
            await nursery.start(self.schedule.run)
            task_status.started()

    def changing(self) -> None:
        """The mount is asked to change something: a burst goes on (``BurstDeferral``)."""
        self.burst.request()

    async def settle(self) -> None:
        """Cut every deferred or debounced file now and wait until all is recorded (versions/
        is exact)."""
        await self.burst.settle()
        await self.schedule.settle()
        if self.capture is not None:
            await self.capture.barrier()

    def is_dirty(self, inode: int) -> bool:
        return self.dirty.is_dirty(inode)

    def busy(self, inode: int) -> bool:
        """A cut still reads this file under its entry's lock."""
        return self.capture is not None and self.capture.busy(inode)

    def forget(self, inode: int) -> None:
        """The kernel forgot the inode (and nothing is left to cut of it)."""
        self.dirty.forget(inode)
        self.schedule.forget(inode)
        self.burst.take(inode)

    async def forgotten(self, inode: int, count: int) -> None:
        """The kernel drops ``count`` lookups of ``inode``: once none is left and no handle is
        open, its pending version is cut (never dropped) and its entry goes."""
        entry = self.inodes.get(inode)
        if entry is None:
            return
        entry.lookups -= count
        if entry.lookups > 0 or entry.open_handles:
            return
        if self.is_dirty(inode):
            await self.cut(inode, debounce=False)
            # The kernel may have looked it up or opened it again meanwhile.
            if entry.lookups > 0 or entry.open_handles or self.inodes.get(inode) is not entry:
                return
        if self.busy(inode):
            return  # a cut still reads it under this entry's lock: keep the entry
        self.inodes.drop(inode)
        self.forget(inode)

    def wrote(self, inode: int, offset: int, size: int) -> None:
        self.burst.request()
        self.dirty.write(inode, offset, size)

    def before_write(self, inode: int, offset: int, size: int) -> None:
        """Under the entry's lock, just before the bytes change in SOURCE."""
        if self.capture is not None:
            self.capture.before_write(inode, offset, size)

    async def wait_for_room(self, inode: int) -> None:
        """Writers wait while a cut of this file holds too much copied aside."""
        while self.capture is not None:
            job = self.capture.aside_full(inode)
            if job is None:
                return
            await job.progressed.wait()

    async def truncate(self, inode: int, fd: int, size: int) -> None:
        """Truncate the file open as ``fd``: a state waiting for its version gets it first,
        and a cut reading it meanwhile keeps the bytes that go aside."""
        if self.schedule.waiting(inode) or self.burst.waiting(inode):
            await self.cut(inode, debounce=False)
        await self.wait_for_room(inode)
        entry = self.inodes.ensure(inode)
        async with entry.lock:
            if self.capture is not None:
                self.capture.before_truncate(inode, size)
            await trio.to_thread.run_sync(os.ftruncate, fd, size)  # freeing a big file's
            self.dirty.truncate(inode, size)  # blocks may take a while: off the event loop

    def created(self, inode: int) -> None:
        """A new empty file: its empty version is due."""
        self.dirty.truncate(inode, 0)

    def all_of(self, inode: int, size: int) -> None:
        """Read the whole file at its next cut (written before this mount began)."""
        if not self.dirty.is_dirty(inode):
            self.dirty.write(inode, 0, size)

    async def cut(
        self,
        inode: int,
        fd: int | None = None,
        debounce: bool = True,
        *,
        defer: bool = True,
        after_burst: bool = False,
    ) -> CutJob | None:
        """Hand a written file's changes over for backup (a version of this instant).

        With ``defer`` (a close), the cut waits for a burst of changes to pause
        (``BurstDeferral``). A file cut less than ``min_interval`` ago gets its next version
        when the interval is over (debounce), so a file written continuously does not make a
        version per close. ``debounce`` False (the file is about to change, or the mount
        settles) cuts now. ``fd``, if given, is a descriptor the file is open on (it may have
        been renamed).
        """
        if not after_burst:
            self.burst.request()
        if self.capture is None or not self.dirty.is_dirty(inode):
            return None
        entry = self.inodes.get(inode)
        if entry is None or not entry.paths:
            self.dirty.forget(inode)  # unlinked: nothing to version under a name
            self.burst.take(inode)
            return None
        if after_burst or not debounce or not defer:
            self.burst.take(inode)
        elif self.burst.defer(inode):
            return None  # cut when the burst pauses
        if not self.schedule.begin(inode, debounce):
            return None  # cut when its interval is over (``CutScheduler``)
        names = sorted(p for p in entry.paths if not self.capture.ignores(p))
        if not names:
            return None  # never recorded (ours, or left out): cut if it takes a recorded name
        async with entry.lock:
            changes = self.dirty.take(inode)
            if changes is None:
                return None
            path = names[0]
            read_fd = None
            try:
                # A read-only descriptor of our own: the writer's may be write-only. Reopening
                # through /proc reaches the same inode even if it was renamed meanwhile.
                if fd is not None:
                    read_fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
                else:
                    read_fd = self._open_for_read(path)
                return await self.capture.cut(
                    path,
                    read_fd,
                    changes,
                    lock=entry.lock,
                    inode=inode,
                    on_failure=functools.partial(self.dirty.restore, inode),
                    aliases=tuple(names[1:]),  # its hard links
                )
            except Exception:
                # The changes stay recorded and are retried at the next cut.
                log.exception("could not record a new version of %s", path)
                self.dirty.restore(inode, changes)
                return None
            finally:
                if read_fd is not None:
                    os.close(read_fd)

    async def cut_everything(self) -> None:
        """At unmount: a version of every file with unrecorded changes, then wait for them."""
        await self.settle()
        for inode in list(self.inodes):
            if self.dirty.is_dirty(inode):
                await self.cut(inode, debounce=False)
        if self.capture is not None:
            await self.capture.barrier()
