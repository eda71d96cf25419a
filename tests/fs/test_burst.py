"""Cuts wait out a burst of changes (``fs/burst.py``), on trio's mock clock (no mount needed)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from fs.burst import BurstDeferral


class Cuts:
    """The deferral's ``cut`` callback: when each inode was cut."""

    def __init__(self) -> None:
        self.at: list[tuple[int, float]] = []
        self.fail_on: set[int] = set()

    async def __call__(self, inode: int) -> None:
        await trio.sleep(0.001)  # a cut takes a moment
        if inode in self.fail_on:
            raise RuntimeError("the disk went away")
        self.at.append((inode, trio.current_time()))


@contextlib.asynccontextmanager
async def running(
    longest: float = 15.0, quiet: float = 0.3, most: int = 10_000
) -> AsyncIterator[tuple[BurstDeferral, Cuts, trio.Nursery]]:
    """A deferral running (with its recorded cuts), stopped when the block ends."""
    cuts = Cuts()
    burst = BurstDeferral(cuts, longest=longest, quiet=quiet, most=most)
    async with trio.open_nursery() as nursery:
        await nursery.start(burst.run)
        yield burst, cuts, nursery
        nursery.cancel_scope.cancel()


async def requests_every(burst: BurstDeferral, step: float, until: float) -> None:
    """A burst: a request every ``step`` seconds until ``until``."""
    while trio.current_time() < until:
        burst.request()
        await trio.sleep(step)


async def test_files_closed_in_a_burst_are_cut_once_it_pauses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(longest=5.0, quiet=0.3) as (burst, cuts, _nursery):
        start = trio.current_time()
        for inode in range(10):  # ten files closed 0.1 s apart
            burst.request()
            assert burst.defer(inode)
            assert burst.defer(inode)  # closed again: still the one waiting cut
            await trio.sleep(0.1)
        assert burst.count == 10 and cuts.at == []  # nothing cut during the burst
        await burst.settle()  # waits for the round under way, wants nothing sooner
    assert [inode for inode, _ in cuts.at] == list(range(10))  # in the order they closed
    first_cut = cuts.at[0][1]
    # The last request was at 0.9 s: cut 0.3 s later (settle came at 1.0 s and hurried it).
    assert start + 0.9 <= first_cut <= start + 1.2
    assert burst.count == 0


async def test_a_burst_that_goes_on_gets_its_files_cut_every_longest_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(longest=5.0, quiet=0.3) as (burst, cuts, nursery):
        start = trio.current_time()
        burst.request()
        nursery.start_soon(requests_every, burst, 0.05, start + 12)
        assert burst.defer(1)
        await trio.sleep(4.0)
        assert burst.defer(2)
        await trio.sleep(2.0)
        assert burst.defer(3)
        while len(cuts.at) < 3:
            await trio.sleep(0.1)
    when = dict(cuts.at)
    # 1 and 2 when the oldest (1) had waited 5 s; 3 five seconds after it began to wait:
    # every file waited at most ``longest``, though the burst never paused.
    assert start + 5.0 <= when[1] <= when[2] < start + 5.1
    assert start + 11.0 <= when[3] < start + 11.1


async def test_too_many_waiting_files_are_cut_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(longest=60.0, quiet=0.3, most=5) as (burst, cuts, nursery):
        start = trio.current_time()
        burst.request()
        nursery.start_soon(requests_every, burst, 0.05, start + 30)
        for inode in range(5):
            assert burst.defer(inode)
        while len(cuts.at) < 5:
            await trio.sleep(0.01)
    assert all(at < start + 0.1 for _inode, at in cuts.at)


async def test_a_file_taken_is_cut_by_its_taker_not_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (burst, cuts, _nursery):
        assert burst.defer(1) and burst.defer(2)
        assert burst.waiting(1)
        assert burst.take(1)  # e.g. about to be truncated: its cut is made now, by the caller
        assert not burst.waiting(1) and not burst.take(1)
        await burst.settle()
    assert [inode for inode, _ in cuts.at] == [2]


async def test_a_failed_cut_does_not_stop_the_others(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with running() as (burst, cuts, _nursery):
        cuts.fail_on = {2}
        for inode in (1, 2, 3):
            burst.defer(inode)
        await burst.settle()
    assert [inode for inode, _ in cuts.at] == [1, 3]
    assert "a deferred cut failed" in caplog.text


async def test_without_the_runner_nothing_is_deferred() -> None:
    burst = BurstDeferral(Cuts())
    assert not burst.defer(1)  # before the mount runs (or after): cut at once
    await burst.settle()  # returns


async def test_settle_waits_for_a_round_under_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(quiet=0.3) as (burst, cuts, _nursery):
        burst.request()
        for inode in range(50):
            burst.defer(inode)
        await trio.sleep(0.3 + 0.0105)  # the round began and cut about ten of them
        assert burst.count == 0 and 0 < len(cuts.at) < 50
        await burst.settle()
        assert len(cuts.at) == 50  # settle returned only once every one was cut


@pytest.mark.parametrize("seed", range(20))
async def test_a_random_run_cuts_each_waiting_file_once_in_order_and_never_late(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A model (seeded: a seed repeats its run): random requests, closes, files taken by
    someone else, pauses and settles. Each time a file waits and is not taken, it is cut exactly
    once, in the order the files began to wait, and no file waits longer than ``longest``."""
    rng = random.Random(seed)
    longest = 0.5
    episodes: list[tuple[int, bool]] = []  # (inode, taken) for every time a file began to wait
    waiting: dict[int, tuple[int, float]] = {}  # the model: inode -> (its episode, since when)
    async with running(longest=longest, quiet=0.3, most=6) as (burst, cuts, _nursery):
        for _step in range(600):
            action = rng.random()
            if action < 0.35:
                burst.request()
            elif action < 0.6:
                inode = rng.randrange(12)
                burst.request()
                assert burst.defer(inode)
                if inode not in waiting:
                    waiting[inode] = (len(episodes), trio.current_time())
                    episodes.append((inode, False))
            elif action < 0.7:
                inode = rng.randrange(12)
                assert burst.take(inode) == (inode in waiting)
                if inode in waiting:
                    episode, _since = waiting.pop(inode)
                    episodes[episode] = (inode, True)
            elif action < 0.995:
                # Mostly a burst going on (gaps under ``quiet``), now and then a pause.
                await trio.sleep(rng.choice([0.01, 0.05, 0.1]) if rng.random() < 0.95 else 1.0)
            else:
                await burst.settle()
                assert burst.count == 0
            for inode in [i for i in waiting if not burst.waiting(i)]:
                del waiting[inode]  # its round began: it is being cut, or was
            for inode, (_episode, since) in waiting.items():
                # A round cuts a file a millisecond: 12 files at most are ahead of any.
                assert trio.current_time() <= since + longest + 0.013, (inode, since)
        await burst.settle()
    assert [inode for inode, _at in cuts.at] == [i for i, taken in episodes if not taken]
