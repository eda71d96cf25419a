"""When a written file gets its next version, on trio's mock clock (no mount needed)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from fs.cutschedule import CutScheduler


class Cuts:
    """The scheduler's ``cut`` callback: when each inode was cut."""

    def __init__(self) -> None:
        self.at: list[tuple[int, float]] = []
        self.fail = False

    async def __call__(self, inode: int) -> None:
        if self.fail:
            raise RuntimeError("the disk went away")
        self.at.append((inode, trio.current_time()))


async def test_a_file_cut_again_within_the_interval_waits_for_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cuts = Cuts()
    schedule = CutScheduler(2.0, cuts)
    async with trio.open_nursery() as nursery:
        await nursery.start(schedule.run)
        start = trio.current_time()
        assert schedule.begin(7)  # the first close: cut now
        await trio.sleep(0.5)
        assert not schedule.begin(7)  # closed again 0.5 s later: waits
        assert schedule.waiting(7)
        await trio.sleep(0.5)
        assert not schedule.begin(7)  # and again: still the one waiting cut
        assert schedule.begin(8)  # another file is not held back
        while schedule.waiting(7):
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert cuts.at == [(7, start + 2.0)]  # once, when the interval was over


async def test_settle_fires_waiting_cuts_now_and_waits_for_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cuts = Cuts()
    schedule = CutScheduler(60.0, cuts)
    async with trio.open_nursery() as nursery:
        await nursery.start(schedule.run)
        start = trio.current_time()
        assert schedule.begin(1) and schedule.begin(2)
        await trio.sleep(1)
        assert not schedule.begin(1) and not schedule.begin(2)
        await schedule.settle()
        assert sorted(cuts.at) == [(1, start + 1), (2, start + 1)]  # not a minute later
        assert not schedule.waiting(1) and not schedule.waiting(2)
        nursery.cancel_scope.cancel()


async def test_no_debounce_and_no_nursery_cut_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    schedule = CutScheduler(5.0, Cuts())
    assert schedule.begin(3) and schedule.begin(3)  # not running yet: every cut is now
    async with trio.open_nursery() as nursery:
        await nursery.start(schedule.run)
        assert schedule.begin(3, debounce=False)  # before a truncate, a rename, an unmount
        assert not schedule.waiting(3)
        nursery.cancel_scope.cancel()


async def test_forgotten_files_are_not_remembered(autojump_clock: trio.testing.MockClock) -> None:
    """The last-cut times were kept for every file ever written: a mount's slow leak."""
    schedule = CutScheduler(2.0, Cuts())
    async with trio.open_nursery() as nursery:
        await nursery.start(schedule.run)
        for inode in range(100):
            schedule.begin(inode)
        assert not schedule.begin(5)  # one is waiting: forgetting it must not lose that
        for inode in range(100):
            schedule.forget(inode)
        assert schedule.remembered == 1 and schedule.waiting(5)
        await schedule.settle()
        schedule.forget(5)
        assert schedule.remembered == 0
        nursery.cancel_scope.cancel()


async def test_a_failing_cut_is_logged_and_the_next_one_still_comes(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    cuts = Cuts()
    schedule = CutScheduler(1.0, cuts)
    async with trio.open_nursery() as nursery:
        await nursery.start(schedule.run)
        schedule.begin(9)
        cuts.fail = True
        with caplog.at_level(logging.ERROR, logger="fs.cutschedule"):
            assert not schedule.begin(9)
            await schedule.settle()
        assert [r.getMessage() for r in caplog.records] == ["a debounced cut failed"]
        cuts.fail = False
        await trio.sleep(1)
        assert schedule.begin(9)  # its interval is over: cut now
        assert not schedule.begin(9)
        await schedule.settle()
        assert [inode for inode, _t in cuts.at] == [9]
        nursery.cancel_scope.cancel()
