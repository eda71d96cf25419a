"""What runs now: an operation is listed with its latest progress while it runs, whoever
started it, and leaves the list however it ends; its CLI gets the progress too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from lanvault.activities import FORWARD_EVERY, Activities
from node.report import Progress


async def test_a_running_operation_is_listed_with_its_progress_and_leaves_when_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    activities = Activities()
    events: list[dict[str, Any]] = []
    halfway, finish = trio.Event(), trio.Event()

    async def emit(event: dict[str, Any]) -> None:
        events.append(event)

    async def work(progress: Callable[[Progress], None]) -> Progress:
        report = Progress(files_total=4, bytes_total=4000)
        for n in range(1, 3):
            report.files_done, report.bytes_done = n, n * 1000
            progress(report)
            await trio.sleep(FORWARD_EVERY)
        halfway.set()
        await finish.wait()
        return report

    async with trio.open_nursery() as nursery:
        nursery.start_soon(activities.run, "backup", "/home/u/docs", emit, work)
        await halfway.wait()
        [running] = activities.running()
        assert (running["kind"], running["what"], running["unit"]) == (
            "backup",
            "/home/u/docs",
            "files",
        )
        assert (running["files_done"], running["files_total"]) == (2, 4)
        assert (running["bytes_done"], running["bytes_total"]) == (2000, 4000)
        assert running["elapsed"] == pytest.approx(2 * FORWARD_EVERY)
        finish.set()
    assert activities.running() == []
    assert events and events[-1]["event"] == "progress" and events[-1]["files_done"] >= 1


async def test_an_operation_that_fails_leaves_the_list_and_its_error_goes_on() -> None:
    activities = Activities()

    async def emit(event: dict[str, Any]) -> None:
        pass

    async def work(progress: Callable[[Progress], None]) -> Progress:
        assert [a["kind"] for a in activities.running()] == ["restore"]
        raise OSError("the destination is full")

    with pytest.raises(OSError, match="the destination is full"):
        await activities.run("restore", "/x", emit, work)
    assert activities.running() == []


async def test_two_at_once_are_both_listed_oldest_first() -> None:
    activities = Activities()
    both = trio.Event()

    async def emit(event: dict[str, Any]) -> None:
        pass

    async def waits(progress: Callable[[Progress], None]) -> Progress:
        await both.wait()
        return Progress()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(activities.run, "backup", "/a", emit, waits)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(activities.run, "restore", "/b", emit, waits, "files")
        await trio.testing.wait_all_tasks_blocked()
        assert [(a["kind"], a["what"]) for a in activities.running()] == [
            ("backup", "/a"),
            ("restore", "/b"),
        ]
        ids = [a["id"] for a in activities.running()]
        assert ids[0] < ids[1]
        both.set()
    assert activities.running() == []
