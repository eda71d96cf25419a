"""Scenario 12: many files in many folders and many snapshots, written through the mount; then
how long mounting, listing versions/, `status` and `state` take, and the memory they cost."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.fs.conftest import fuse_available, sweep_stale_mounts

from .conftest import ScenarioRun
from .helpers import (
    new_mount,
    peak_rss_mb,
    process_peak_rss_mb,
    running,
    snapshot_count,
    wait_for_snapshots,
)

pytestmark = [pytest.mark.slow, pytest.mark.scenario("many-files")]

ANSWER_WITHIN = 2.0  # seconds: the criterion (asserted with --full, at the sizes)


def timed(action: object) -> float:
    assert callable(action)
    started = time.monotonic()
    action()
    return time.monotonic() - started


def test_many_files_and_snapshots_answer_quickly(run: ScenarioRun, tmp_path: Path) -> None:
    why = fuse_available()
    if why:
        pytest.skip(why)
    sweep_stale_mounts()
    files, folders, snapshots = run.size(5_000, 100_000), run.size(250, 5_000), run.size(20, 200)
    # The shipped repair interval (30 s): the suite's 2 s (for the faults, which wait on
    # repair) would have every holder re-check its 67,000 chunks every 2 s meanwhile.
    with running(tmp_path / "net", 4, "10m", repair_interval="30s") as cluster:
        mount, _source, mnt = new_mount(cluster, tmp_path)
        mount.start()
        written = 0
        started = time.monotonic()
        try:
            for burst in range(snapshots):  # one burst of files, then its snapshot
                wanted = snapshot_count(cluster) + 1
                end = files * (burst + 1) // snapshots
                while written < end:
                    folder = mnt / f"d{written % folders:05d}"
                    folder.mkdir(exist_ok=True)
                    (folder / f"f{written}.txt").write_bytes(
                        run.rng.randbytes(run.rng.randrange(1, 4096))
                    )
                    written += 1
                wait_for_snapshots(cluster, wanted)
            run.figure(
                "files written through the mount per second", files / (time.monotonic() - started)
            )
            cluster.wait(
                lambda: cluster.json(1, "status")["pending_backlog"] == 0, 1800, "all safe"
            )
            assert mount.proc is not None
            run.figure("peak RSS of the mount", process_peak_rss_mb(mount.proc.pid), "MB")
        finally:
            mount.stop()
        run.figure("peak RSS of the node", peak_rss_mb(cluster, 1), "MB")
        answers = {"mount (until it answers)": timed(mount.start)}
        # Changes wait until the catch-up has compared SOURCE with the last snapshot: a figure
        # beside the criterion (lookups and reads are answered meanwhile).
        accepting = answers["mount (until it answers)"] + timed(mount.wait_ready)
        run.figure("mount (until it accepts changes)", accepting, "s")
        answers["listing versions/"] = timed(lambda: os.listdir(mnt / "versions"))
        try:
            listed = sorted(os.listdir(mnt / "versions"))
            assert len(listed) >= snapshots, listed[:5]
            newest = mnt / "versions" / listed[-1]
            walked = 0

            def walk() -> None:
                nonlocal walked
                walked = sum(len(names) for _d, _s, names in os.walk(newest))

            run.figure("walking the newest snapshot (every file)", timed(walk), "s")
            assert walked == files
        finally:
            mount.stop()
        answers["status"] = timed(lambda: cluster.json(1, "status"))
        # What a person or a script waits for: the command's whole answer (29 MB of JSON at
        # full size); parsing it here is the test's own business, not timed.
        out: list[str] = []
        answers["state"] = timed(lambda: out.append(cluster.cli(1, "state", "--json").stdout))
        state = json.loads(out[0])
        assert len(state["files"]) >= files
        for what, seconds in answers.items():
            run.figure(what, seconds, "s")
        if run.full:
            slow = {what: s for what, s in answers.items() if s > ANSWER_WITHIN}
            assert not slow, f"over {ANSWER_WITHIN} s: {slow}"
