"""Cuts wait out a burst of changes: a ``cp -a`` or a ``git clone`` runs at the mount's speed,
and its files are versioned when it pauses.

Cutting a version reads, seals and records the file and wakes the node, which sends it to its
holders: on a small machine that work competes with the burst itself for the same CPUs and
disk (a third of a ``cp -a``'s speed, measured by ``scripts/bench_smallfiles.py``). So a file
closed through the mount is not cut at once: it waits until the mount has had no request for
``quiet`` seconds, but never longer than ``longest`` seconds (a burst that goes on gets its
files cut in groups that often), and never while more than ``most`` files wait. A file that is
about to change under a waiting cut (truncated, renamed, removed), a settle (``versions/``, an
unmount) or fsync cut at once, as before. A version is still one instant of the file, never
torn: the instant its cut begins (a file written again meanwhile is cut as it is then, as a
debounced one is).

Only trio: the tests drive it on ``MockClock`` without a mount.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pyfuse3
import trio

log = logging.getLogger(__name__)

QUIET = 0.3  # seconds without a request: the burst has paused
LONGEST = 15.0  # seconds a closed file waits at most for its version to be cut
MOST = 10_000  # files waiting at most (each keeps its changes in memory)


class BurstDeferral:
    def __init__(
        self,
        cut: Callable[[int], Awaitable[object]],
        longest: float = LONGEST,
        quiet: float = QUIET,
        most: int = MOST,
    ) -> None:
        """``cut(inode)`` cuts the version now; ``longest`` 0: every file is cut at once."""
        self._cut = cut
        self.quiet = quiet
        self.longest = longest
        self.most = most
        self._waiting: dict[int, float] = {}  # inode -> when it began to wait (oldest first)
        self._last_request = -float("inf")
        self._changed = trio.Event()  # a file began to wait, or someone wants them all now
        self._now = False
        self._round_done = trio.Event()
        self._cutting = False
        self._running = False

    def request(self) -> None:
        """The mount served a request: the burst goes on (cheap: called for every one)."""
        self._last_request = trio.current_time()

    def defer(self, inode: int) -> bool:
        """Whether ``inode``'s cut waits for the burst to pause (False: cut it now, as when
        nothing runs the deferral)."""
        if not self._running or self.longest <= 0:
            return False
        if inode not in self._waiting:
            self._waiting[inode] = trio.current_time()
            if len(self._waiting) == 1 or len(self._waiting) >= self.most:
                self._changed.set()
        return True

    def waiting(self, inode: int) -> bool:
        return inode in self._waiting

    def take(self, inode: int) -> bool:
        """``inode`` is cut now by someone else: it no longer waits (whether it did)."""
        return self._waiting.pop(inode, None) is not None

    @property
    def count(self) -> int:
        return len(self._waiting)

    async def settle(self) -> None:
        """Cut every waiting file now, and wait until those cuts are done."""
        while (self._waiting or self._cutting) and self._running:
            done = self._round_done
            self._now = True
            self._changed.set()
            await done.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Cuts the waiting files when the burst pauses; runs until cancelled."""
        self._running = True
        try:
            task_status.started()
            while True:
                await self._due()
                self._now = False
                batch = list(self._waiting)
                self._waiting.clear()
                self._cutting = True
                for inode in batch:
                    await self._cut_one(inode)
                self._cutting = False
                done, self._round_done = self._round_done, trio.Event()
                done.set()
        finally:
            self._running = False
            self._round_done.set()

    async def _due(self) -> None:
        """Return once the waiting files are due: the mount is quiet, the oldest has waited
        ``longest``, too many wait, or a settle wants them now."""
        while True:
            if self._waiting:
                oldest = next(iter(self._waiting.values()))
                due = min(self._last_request + self.quiet, oldest + self.longest)
                if self._now or len(self._waiting) >= self.most or trio.current_time() >= due:
                    return
            else:
                due = float("inf")
                if self._now:
                    return
            with trio.move_on_at(due):
                await self._changed.wait()
            self._changed = trio.Event()

    async def _cut_one(self, inode: int) -> None:
        try:
            await self._cut(inode)
        except pyfuse3.FUSEError:
            pass  # gone meanwhile
        except Exception:
            log.exception("a deferred cut failed")
