"""The owner's read-write lock (backups share it; pruning and deleting take it alone)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio


class SharedExclusive:
    """A trio read-write lock: backups share it; pruning and deleting take it alone.

    A backup skips chunks the catalog says are held; pruning and deleting forget holders of
    what they drop. Holding this apart keeps a backup from relying on a chunk being dropped.
    Waiting writers go first, so a stream of backups cannot starve a prune.
    """

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._changed = trio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while self._writer or self._writers_waiting:
            await self._wait()
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            self._notify()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        self._writers_waiting += 1
        try:
            while self._writer or self._readers:
                await self._wait()
        finally:
            self._writers_waiting -= 1
        self._writer = True
        try:
            yield
        finally:
            self._writer = False
            self._notify()
