"""Blocking work off the event loop, in one place.

Every call the node makes into the chunk store, the catalog, the disk or the CPU (sealing,
verifying) goes through ``in_thread``: a trio worker thread, bounded by ``limiter``, so the
event loop keeps answering peers meanwhile.

A test may have that work done inline instead (``inline_work``): in the trio thread, between
two checkpoints. No task then ever waits for a thread, so trio's ``MockClock`` with
``autojump_threshold=0`` jumps time exactly when every task is blocked on a timer or on a
peer: a cluster of in-process nodes runs on virtual time, and the same run gives the same
order of events. The setting is a context variable, inherited by every task started after it
is set (trio copies the spawner's context), so it never leaks into another test.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TypeVar, TypeVarTuple

import trio

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("lanvault_inline", default=False)


async def in_thread(
    fn: Callable[[*Ts], T],
    *args: *Ts,
    limiter: trio.CapacityLimiter | None = None,
) -> T:
    """``fn(*args)`` on a worker thread (inline under ``inline_work``)."""
    if _INLINE.get():
        await trio.lowlevel.checkpoint()
        return fn(*args)
    return await trio.to_thread.run_sync(fn, *args, limiter=limiter)


@contextlib.contextmanager
def inline_work() -> Iterator[None]:
    """For tests on a ``MockClock``: the tasks started inside do their blocking work inline."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)


def on_loop(fn: Callable[[*Ts], object], *args: *Ts) -> None:
    """From inside a function ``in_thread`` runs: ``fn(*args)`` on the event loop (such as a
    nursery's ``start_soon``); at once when the work is inline."""
    if _INLINE.get():
        fn(*args)
    else:
        trio.from_thread.run_sync(fn, *args)
