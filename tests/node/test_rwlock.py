"""The owner's read-write lock, on trio's test clock: readers share it, a writer is alone, and
a waiting writer goes before readers that come after it (a stream of backups cannot starve a
prune)."""

from __future__ import annotations

import trio
import trio.testing

from node.rwlock import SharedExclusive


async def test_readers_share_and_a_writer_waits_for_them(autojump_clock: trio.abc.Clock) -> None:
    lock = SharedExclusive()
    events: list[str] = []

    async def reader(name: str, hold: float) -> None:
        async with lock.shared():
            events.append(f"{name} in")
            await trio.sleep(hold)
            events.append(f"{name} out")

    async def writer() -> None:
        await trio.sleep(0.5)  # both readers are in
        async with lock.exclusive():
            events.append("writer in")
            await trio.sleep(1)
            events.append("writer out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, "a", 2)
        nursery.start_soon(reader, "b", 3)
        nursery.start_soon(writer)
    assert sorted(events[:2]) == ["a in", "b in"]  # together, in either order
    assert events[2:] == ["a out", "b out", "writer in", "writer out"]


async def test_a_waiting_writer_goes_before_later_readers(autojump_clock: trio.abc.Clock) -> None:
    lock = SharedExclusive()
    events: list[tuple[float, str]] = []

    async def reader(name: str, start: float) -> None:
        await trio.sleep(start)
        async with lock.shared():
            events.append((trio.current_time(), f"{name} in"))
            await trio.sleep(2)

    async def writer() -> None:
        await trio.sleep(1)
        async with lock.exclusive():
            events.append((trio.current_time(), "writer in"))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader, "first", 0)
        nursery.start_soon(writer)  # waits from t=1 for "first" (until t=2)
        nursery.start_soon(reader, "later", 1.5)  # arrives while the writer waits
    assert [e for _t, e in events] == ["first in", "writer in", "later in"]
    times = dict((e, t) for t, e in events)
    assert times["writer in"] == 2 and times["later in"] == 3


async def test_a_cancelled_waiting_writer_lets_readers_in(autojump_clock: trio.abc.Clock) -> None:
    lock = SharedExclusive()
    entered = trio.Event()

    async with trio.open_nursery() as nursery:

        async def hold_shared() -> None:
            async with lock.shared():
                await trio.sleep(10)

        nursery.start_soon(hold_shared)
        await trio.sleep(0.1)
        with trio.move_on_after(1):  # the writer gives up while the reader holds the lock
            async with lock.exclusive():
                raise AssertionError("the writer got in while a reader held the lock")

        async def late_reader() -> None:
            async with lock.shared():
                entered.set()

        nursery.start_soon(late_reader)
        with trio.fail_after(1):
            await entered.wait()  # not blocked by a writer that is no longer waiting
