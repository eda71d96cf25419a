"""The read descriptors a chunk store keeps open on its segments.

At most ``limit`` idle ones are kept, the least recently used closed first (a store of many
segments held one per segment ever read, for ever). A descriptor being read through is never
closed under its reader: ``forget`` (the segment was rewritten, or may have been by another
process sharing the store) closes it once the last reader releases it. Idle descriptors of
segments deleted meanwhile (another process compacted the store: the daemon reads the mount's
outbox) are closed at the next use, at most once a second: each held a deleted segment's disk
space (the soak found 31 of them in the daemon). Callers hold the store's lock around every
call; the reads themselves happen outside it.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_IDLE_READ_FDS = 32
SWEEP_INTERVAL = 1.0  # seconds between looks for idle descriptors of deleted segments


@dataclass(slots=True)
class _Open:
    fd: int
    users: int = 0
    retired: bool = False  # forgotten while in use: closed at the last release


class ReadFds:
    def __init__(
        self, limit: int = MAX_IDLE_READ_FDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._cached: OrderedDict[int, _Open] = OrderedDict()  # segment -> descriptor
        self._retired: dict[int, _Open] = {}  # fd -> a forgotten descriptor still in use
        self._clock = clock
        self._swept = clock()

    def acquire(self, segment: int, path: Path) -> tuple[int, bool]:
        """A descriptor of ``segment`` for one read, and whether it was opened just now.
        ``FileNotFoundError`` if the segment is not there."""
        if self._clock() - self._swept >= SWEEP_INTERVAL:
            self._close_unlinked()
        entry = self._cached.get(segment)
        fresh = entry is None
        if entry is None:
            entry = self._cached[segment] = _Open(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        self._cached.move_to_end(segment)
        entry.users += 1
        self._trim()
        return entry.fd, fresh

    def release(self, segment: int, fd: int) -> None:
        entry = self._cached.get(segment)
        if entry is not None and entry.fd == fd:
            entry.users -= 1
            self._trim()
            return
        retired = self._retired.get(fd)
        if retired is not None:
            retired.users -= 1
            if retired.users == 0:
                del self._retired[fd]
                os.close(fd)

    def forget(self, segment: int) -> None:
        """Close ``segment``'s descriptor (now, or when its last reader is done)."""
        entry = self._cached.pop(segment, None)
        if entry is None:
            return
        if entry.users:
            entry.retired = True
            self._retired[entry.fd] = entry
        else:
            os.close(entry.fd)

    def close_all(self) -> None:
        for entry in self._cached.values():
            os.close(entry.fd)
        self._cached.clear()
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def _close_unlinked(self) -> None:
        """Close the idle descriptors whose segment file is gone (its last link removed)."""
        self._swept = self._clock()
        for segment, entry in list(self._cached.items()):
            if entry.users == 0 and os.fstat(entry.fd).st_nlink == 0:
                del self._cached[segment]
                os.close(entry.fd)

    def _trim(self) -> None:
        """Close the least recently used idle descriptors beyond the limit."""
        if len(self._cached) <= self.limit:
            return
        for segment in list(self._cached):
            if len(self._cached) <= self.limit:
                return
            entry = self._cached[segment]
            if entry.users == 0:
                del self._cached[segment]
                os.close(entry.fd)

    @property
    def open_count(self) -> int:
        return len(self._cached) + len(self._retired)
