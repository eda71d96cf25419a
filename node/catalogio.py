"""The owner's catalog on worker threads: one call at a time on the catalog's connection, and
reads on a connection of their own that never wait behind a commit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import trio

from .offload import in_thread

T = TypeVar("T")


class CatalogIO:
    def __init__(self) -> None:
        self._call_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on a worker thread, one at a time (writes, and reads that must see
        them)."""
        return await in_thread(functools.partial(fn, *args), limiter=self._call_limiter)

    async def read(self, fn: Callable[..., T], *args: object) -> T:
        """A read of the catalog on its own connection: it never waits behind a commit (it
        sees what was committed when it starts)."""
        return await in_thread(functools.partial(fn, *args), limiter=self._read_limiter)
