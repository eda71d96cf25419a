"""What the daemon is doing for someone now: backups, restores, reclaims and checks in progress.

Each long operation of the control socket runs through ``Activities.run``: its progress goes to
the CLI that asked for it (at most twice a second, as ``progress`` events) and is kept in the
registry while it runs, so that the web dashboard shows every running operation, whoever
started it. An operation leaves the registry when it ends, however it ends.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.report import Progress

from .control import Emit

FORWARD_EVERY = 0.5  # seconds between two progress events to the CLI


@dataclass(slots=True)
class Activity:
    """One running operation and its latest progress."""

    id: int
    kind: str  # "backup", "restore", "reclaim", "check"
    what: str  # the path, or the size a reclaim aims at
    unit: str  # what files_done counts: "files", "chunks", "copies"
    started: float = field(default_factory=trio.current_time)  # trio's clock: tests mock it
    progress: Progress = field(default_factory=Progress)

    def as_event(self) -> dict[str, Any]:
        """The CLI's ``progress`` event, and the dashboard's row."""
        report = self.progress
        return {
            "event": "progress",
            "id": self.id,
            "kind": self.kind,
            "what": self.what,
            "unit": self.unit,
            "files_done": report.files_done,
            "files_total": report.files_total,
            "bytes_done": report.bytes_done,
            "bytes_total": report.bytes_total,
            "elapsed": trio.current_time() - self.started,
        }


class Activities:
    def __init__(self) -> None:
        self._running: dict[int, Activity] = {}
        self._ids = itertools.count(1)

    def running(self) -> list[dict[str, Any]]:
        """Every operation in progress, oldest first."""
        return [a.as_event() for a in self._running.values()]

    async def run(
        self,
        kind: str,
        what: str,
        emit: Emit,
        work: Callable[[Callable[[Progress], None]], Awaitable[Progress]],
        unit: str = "files",
    ) -> Progress:
        """Run ``work``, keeping its progress here and forwarding it to the CLI."""
        activity = Activity(next(self._ids), kind, what, unit)
        latest: list[dict[str, Any]] = []
        last = [-FORWARD_EVERY]  # the first report goes at once

        def progress(report: Progress) -> None:
            activity.progress = report
            now = trio.current_time()
            if now - last[0] >= FORWARD_EVERY:
                last[0] = now
                latest[:] = [activity.as_event()]

        done = trio.Event()

        async def forward() -> None:
            while not done.is_set():
                if latest:
                    try:
                        await emit(latest.pop())
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the CLI went away; the control socket stops the work
                with trio.move_on_after(FORWARD_EVERY):
                    await done.wait()

        outcome: list[Progress] = []
        failure: list[Exception] = []
        self._running[activity.id] = activity
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                try:
                    outcome.append(await work(progress))
                except Exception as exc:  # raised outside the nursery: no exception group
                    failure.append(exc)
                finally:
                    done.set()
        finally:
            del self._running[activity.id]
        if failure:
            raise failure[0]
        return outcome[0]
