"""How often the owner copies its catalog to the peers while it keeps changing (issue 17)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from node.safekeeping import MAX_BEHIND, SETTLE, Safekeeping

from .cluster import backed_up, write_files


@pytest.mark.parametrize(
    ("every", "in_backup", "most"),
    [
        (1.0, False, 120 / MAX_BEHIND + 1),  # never quiet for SETTLE: every MAX_BEHIND
        (3.0, True, 120 / MAX_BEHIND + 1),  # a backup's files: quiet between, but a backup
        (3.0, False, 120 / 3),  # a mount's saves, 3 s apart: each copied SETTLE after it
    ],
)
async def test_the_catalog_copy_lags_by_at_most_max_behind_and_follows_a_burst_by_settle(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    every: float,
    in_backup: bool,
    most: float,
) -> None:
    """A copy re-sends most of the catalog: made two seconds after every pause, a backup of
    64 MiB files copied it after each file and spent 3-6 % of the owner's link on copies soon
    superseded (bench_lan). While changes keep coming, or a backup runs, the copy now lags by
    at most MAX_BEHIND seconds (the status says so); a mount's save is copied SETTLE seconds
    after it, and once changes stop the copy follows SETTLE seconds later."""
    async with backed_up(tmp_path, 3, seed=21) as (_cluster, owner):
        keeping = Safekeeping(owner, lambda: b"{}", None)
        owner.on_catalog_changed.append(keeping.catalog_changed)
        copies: list[float] = []
        lags: list[float] = []
        copy = keeping._backup_catalog

        async def counted(force: bool) -> bool:
            lags.append(keeping.behind() or 0.0)
            made = await copy(force)
            if made:
                copies.append(trio.current_time())
            return made

        keeping._backup_catalog = counted  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            await nursery.start(keeping.run)
            await keeping.backup_catalog()  # the first copy, as the loop makes after it starts
            assert copies and keeping.behind() is None
            start = trio.current_time()
            rng = random.Random(21)
            running = keeping.backup_running() if in_backup else contextlib.nullcontext()
            with running:
                for step in range(int(120 / every)):  # new files for two minutes
                    folder = tmp_path / f"more{step}"
                    write_files(folder, rng)
                    await owner.backup_path(folder, degree=2)
                    last_change = trio.current_time()
                    await trio.sleep_until(start + (step + 1) * every)
                    behind = keeping.behind()
                    assert behind is None or behind <= MAX_BEHIND + every, behind
            during = [t for t in copies if start < t <= start + 120]
            assert 3 <= len(during) <= most, during
            assert max(lags) <= MAX_BEHIND + every  # no copy waited longer than that
            # The changes stop (the backup ends, failed or not: nothing secures a copy here):
            # the copy follows SETTLE seconds after the last change.
            await trio.sleep(SETTLE + 1)
            assert copies[-1] > last_change and keeping.behind() is None
            nursery.cancel_scope.cancel()
