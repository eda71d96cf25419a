"""When a file written through the mount gets its next version.

A file is cut (its version taken) when it is closed, fsync'd or forgotten. One cut less than
``min_interval`` ago makes the next one wait until the interval is over (debounce), so a file
written continuously does not make a version per close; a waiting cut can be fired early (the
file is about to be truncated, renamed or removed, or the mount settles for ``versions/``).
Only trio: the tests drive it on ``MockClock`` without a mount.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pyfuse3
import trio

log = logging.getLogger(__name__)


class CutScheduler:
    def __init__(self, min_interval: float, cut: Callable[[int], Awaitable[object]]) -> None:
        """``cut(inode)`` takes the version now (no debounce)."""
        self.min_interval = min_interval
        self._cut = cut
        self._last: dict[int, float] = {}  # inode -> when its last cut began
        # inode -> ("cut now", "cut done") of a waiting cut
        self._waiting: dict[int, tuple[trio.Event, trio.Event]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Holds the waiting cuts; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def begin(self, inode: int, debounce: bool = True) -> bool:
        """Whether ``inode`` is cut now (then its time is noted). With ``debounce``, a file cut
        less than ``min_interval`` ago is not: its cut waits for the interval's end instead
        (one waiting cut per file). Before ``run`` has started, every cut is now."""
        now = trio.current_time()
        last = self._last.get(inode)
        if debounce and last is not None and now - last < self.min_interval and self._nursery:
            if inode not in self._waiting:
                events = (trio.Event(), trio.Event())
                self._waiting[inode] = events
                self._nursery.start_soon(self._wait, inode, last + self.min_interval, events)
            return False
        self._last[inode] = now
        return True

    def waiting(self, inode: int) -> bool:
        """A cut of ``inode`` waits for its interval's end."""
        return inode in self._waiting

    def forget(self, inode: int) -> None:
        """The kernel forgot ``inode``: nothing is written through it any more."""
        if inode not in self._waiting:
            self._last.pop(inode, None)

    async def settle(self) -> None:
        """Fire every waiting cut now and wait until each is done."""
        for fire, done in list(self._waiting.values()):
            fire.set()
            await done.wait()

    async def _wait(self, inode: int, due: float, events: tuple[trio.Event, trio.Event]) -> None:
        fire, done = events
        try:
            with trio.move_on_at(due):
                await fire.wait()
            # Gone from the table first: a write during this cut schedules the next one.
            if self._waiting.get(inode) is events:
                del self._waiting[inode]
            await self._cut(inode)
        except pyfuse3.FUSEError:
            pass
        except Exception:
            log.exception("a debounced cut failed")
        finally:
            if self._waiting.get(inode) is events:
                del self._waiting[inode]
            done.set()

    @property
    def remembered(self) -> int:
        """Files whose last cut time is kept (bounded by the files the kernel remembers)."""
        return len(self._last)
