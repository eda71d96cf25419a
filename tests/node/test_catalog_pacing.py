"""How often the owner copies its catalog to the peers while it keeps changing (issue 17)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from node.safekeeping import FIRST_COPY_DELAY, MAX_BEHIND, SETTLE, Safekeeping

from .cluster import backed_up, write_files


@pytest.mark.parametrize(
    ("every", "in_backup", "fewest", "most", "lag"),
    [
        # A backup's files: copies every MAX_BEHIND seconds, however often it commits.
        (1.0, True, 3, 120 / MAX_BEHIND + 1, MAX_BEHIND + 1.0),
        (3.0, True, 3, 120 / MAX_BEHIND + 1, MAX_BEHIND + 3.0),
        # A mount's saves: each copied SETTLE seconds after it comes, as before.
        (1.0, False, 120 / (SETTLE + 1.0) / 2, 120 / SETTLE, SETTLE + 2 * 1.0 + 1),
        (3.0, False, 120 / 3 / 2, 120 / 3, SETTLE + 2 * 3.0 + 1),
    ],
)
async def test_a_backup_copies_the_catalog_every_max_behind_seconds_a_mount_after_settle(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    every: float,
    in_backup: bool,
    fewest: float,
    most: float,
    lag: float,
) -> None:
    """A copy re-sends most of the catalog: made two seconds after every file a backup
    committed, a backup of 64 MiB files spent 3-6 % of the owner's link on copies soon
    superseded (bench_lan). While a backup runs the copy now lags by at most MAX_BEHIND seconds
    (the status says so; the backup secures its own copy when it ends); a mount's save is
    copied SETTLE seconds after it, and once changes stop the copy follows SETTLE later."""
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
            await trio.sleep(FIRST_COPY_DELAY + 1)  # the loop's first copy
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
                    assert behind is None or behind <= lag, behind
            during = [t for t in copies if start < t <= start + 120]
            assert fewest <= len(during) <= most, during
            assert max(lags) <= lag, lags  # no copy waited longer than that
            # The changes stop (the backup ends, failed or not: nothing secures a copy here):
            # the copy follows SETTLE seconds after the last change.
            await trio.sleep(SETTLE + 1)
            assert copies[-1] > last_change and keeping.behind() is None
            nursery.cancel_scope.cancel()
