"""The test LANs' sweep removes only what a dead run left: a run going on beside it keeps its
namespaces (a CI run's sweep once cut every computer of a fault scenario running meanwhile)."""

from __future__ import annotations

import os
import subprocess

import pytest

from .netns import OWNERS, Lan, netns_available, sweep_stale

pytestmark = pytest.mark.netns


def namespaces() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.split()}


def test_a_sweep_leaves_a_live_runs_lan_and_removes_a_dead_ones() -> None:
    why = netns_available()
    if why:
        pytest.skip(why)
    lan = Lan(tag=f"t{os.getpid() % 1000}", subnet=os.getpid() % 200 + 20)
    try:
        lan.create(2)
        mine = {lan.switch, *lan.computers}
        sweep_stale()
        assert mine <= namespaces()  # its maker (this process) is alive
        (OWNERS / lan.tag).write_text(str(_a_dead_pid()))  # as if its maker had been killed
        sweep_stale()
        assert not mine & namespaces()
        assert not (OWNERS / lan.tag).exists()
    finally:
        lan.destroy()


def _a_dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
