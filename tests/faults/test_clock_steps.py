"""Scenario 11: the owner's wall clock steps an hour forward, then two hours back, then to the
right time, while it backs up and its mount takes snapshots (the monotonic clock, which every
timeout and "gone" decision uses, goes on as a stepped wall clock leaves it)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from tests.fs.conftest import fuse_available, sweep_stale_mounts

from .conftest import ScenarioRun
from .helpers import copies_on_holders, new_mount, running, snapshot_count, wait_for_snapshots

pytestmark = [pytest.mark.slow, pytest.mark.scenario("clock-steps")]

CLOCK = Path(__file__).parent / "clock"
STEPS = (0.0, 3600.0, -3600.0, 0.0)  # the owner's clock offset at each step, in seconds


def at_time(seconds: float) -> str:
    """A `--at` argument naming this instant (a millisecond after it)."""
    return datetime.datetime.fromtimestamp(seconds + 0.001, datetime.UTC).isoformat()


def test_a_clock_stepped_forward_and_back_reorders_nothing(
    run: ScenarioRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = fuse_available()
    if why:
        pytest.skip(why)
    sweep_stale_mounts()
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    with running(tmp_path / "net", 4, "6s") as cluster:
        cluster.stop(1)
        with monkeypatch.context() as patch:
            patch.setenv("LANVAULT_TEST_CLOCK_FILE", str(offset))
            patch.setenv(
                "PYTHONPATH",
                os.pathsep.join(filter(None, [str(CLOCK), os.environ.get("PYTHONPATH")])),
            )
            cluster.start(1)
            cluster.wait_mesh()
            mount, _source, mnt = new_mount(cluster, tmp_path)
            mount.start()
        plain = tmp_path / "plain.bin"
        contents: list[bytes] = []
        try:
            for seconds in STEPS:
                offset.write_text(str(seconds))
                data = run.rng.randbytes(run.rng.randrange(1, 3_000_000))
                contents.append(data)
                plain.write_bytes(data)
                cluster.cli(1, "backup", plain, timeout=300)
                wanted = snapshot_count(cluster) + 1
                (mnt / "note.txt").write_bytes(data[:1000])
                wait_for_snapshots(cluster, wanted)
                # Nobody is taken for gone, however far the clock moved.
                nodes = cluster.json(1, "status")["nodes"]
                assert all(n["up"] for n in nodes), nodes
        finally:
            mount.stop()
        # In the order they were made, at times that never go back: made while the clock was
        # behind, a version gets the last time recorded (plus a nanosecond).
        versions = cluster.json(1, "versions", plain)["versions"]
        assert [v["size"] for v in versions] == [len(d) for d in contents], versions
        times = [v["time"] for v in versions]
        assert times == sorted(times), versions
        snapshots = cluster.json(1, "versions")["snapshots"]
        assert [s["time"] for s in snapshots] == sorted(s["time"] for s in snapshots), snapshots
        assert [s["seq"] for s in snapshots] == sorted(s["seq"] for s in snapshots)
        # As of each version's time, the newest version made by then is restored.
        for version in versions:
            out = tmp_path / f"at-{version['time']}"
            cluster.cli(1, "restore", plain, "--at", at_time(version["time"]), "--to", out)
            newest = max(i for i, v in enumerate(versions) if v["time"] <= version["time"])
            assert out.read_bytes() == contents[newest]
        # Retention by time keeps the newest (one per day: the last one made).
        cluster.cli(1, "prune", "--keep", "daily:30d")
        cluster.cli(1, "restore", plain, "--to", tmp_path / "newest")
        assert (tmp_path / "newest").read_bytes() == contents[-1]
        # No copies were made for a holder taken for gone, none dropped: exactly degree 2.
        cluster.wait(
            lambda: set(copies_on_holders(cluster, 1).values()) == {2}, 120, "exactly degree 2"
        )
        run.figure("clock steps", len(STEPS) - 1)
        run.figure("largest step", 2 * 3600, "s")
