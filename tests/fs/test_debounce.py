"""A file written continuously gets a version at most every few seconds, and its last state
always gets one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from .conftest import Mount

pytestmark = [pytest.mark.fuse, pytest.mark.slow]


def test_continuous_writes_are_debounced(mount_with: Callable[..., Mount]) -> None:
    mount = mount_with("--min-interval", "2", "--burst-wait", "0")  # the debounce alone
    mnt = mount.mountpoint
    log = mnt / "app.log"
    started = time.monotonic()
    lines = 0
    while time.monotonic() - started < 5:  # an application appending and closing
        with open(log, "a") as handle:
            handle.write(f"line {lines}\n")
        lines += 1
        time.sleep(0.02)
    assert lines > 100
    # Without looking at versions/: only the debounce has run so far.
    time.sleep(2.5)  # the last debounced version is due by now
    mount.stop()  # (and unmounting records anything still pending)
    mount.start()
    snapshots = [n for n in os.listdir(mnt / "versions") if n != "latest"]
    versions_of_log = {
        (mnt / "versions" / n / "app.log").read_text()
        for n in snapshots
        if (mnt / "versions" / n / "app.log").exists()
    }
    assert 2 <= len(versions_of_log) <= 5, len(versions_of_log)  # 5 s at one per 2 s
    assert (mnt / "versions" / "latest" / "app.log").read_text() == log.read_text()
    assert log.read_text().count("\n") == lines
