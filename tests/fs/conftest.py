"""A real FUSE mount in a subprocess: waits until mounted, always unmounts, sweeps stale mounts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lanvault.mounts import FSNAME, is_dead, is_live, mounted_fsname, unmount
from tests.system.procs import ROOT, env, lanvault


def fuse_available() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (package fuse3)"
    return None


def sweep_stale_mounts() -> None:
    """Detach test mounts whose process is gone (a killed earlier run's). A live one may be
    another test session's, running at the same time: it is never touched."""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[0] == "lanvault" and "pytest-of-" in fields[1] and is_dead(Path(fields[1])):
                subprocess.run(["fusermount3", "-u", "-z", fields[1]], capture_output=True)


@dataclass
class Mount:
    state: Path
    source: Path
    mountpoint: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()  # more `lanvault mount` options
    log_start: int = 0  # the log's size when the mount was last started

    def start(self) -> None:
        with open(self.log, "ab") as handle:
            self.log_start = handle.tell()  # what this start logs comes after
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lanvault.cli",
                    "mount",
                    str(self.source),
                    str(self.mountpoint),
                    "--dir",
                    str(self.state),
                    *self.extra,
                ],
                cwd=ROOT,
                env=env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not is_live(self.mountpoint):  # a dead mount left there is not this one
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("not mounted after 20 s")
            time.sleep(0.05)

    def wait_ready(self) -> None:
        """Until the mount says it is ready: the catch-up is done and changes are accepted
        (it answers lookups and reads before)."""
        deadline = time.monotonic() + 60
        while (
            f"mounted at {self.mountpoint}".encode() not in self.log.read_bytes()[self.log_start :]
        ):
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the mount never said it is ready: {self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if mounted_fsname(self.mountpoint) == FSNAME:  # alive, or dead (ENOTCONN)
            unmount(self.mountpoint)
        if self.proc is not None:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        log = self.log.read_text() if self.log.exists() else ""
        assert "Traceback" not in log, f"the mount logged a traceback:\n{log[-3000:]}"


@pytest.fixture
def node_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    out = json.loads(lanvault("init", "--dir", state, "--id", "1", "--json").stdout)
    assert out["node_id"] == 1
    return state


@pytest.fixture
def mount_with(tmp_path: Path, node_state: Path) -> Iterator[Callable[..., Mount]]:
    """Start a mount of a fresh SOURCE with extra `lanvault mount` options; stopped after."""
    why = fuse_available()
    if why:
        pytest.skip(why)
    sweep_stale_mounts()
    started: list[Mount] = []

    def start(*extra: str) -> Mount:
        source, mountpoint = tmp_path / "source", tmp_path / "mnt"
        source.mkdir(exist_ok=True)
        mountpoint.mkdir(exist_ok=True)
        mount = Mount(node_state, source, mountpoint, tmp_path / "mount.log", extra=extra)
        mount.start()
        started.append(mount)
        return mount

    try:
        yield start
    finally:
        for mount in started:
            mount.stop()


@pytest.fixture
def mounted(mount_with: Callable[..., Mount]) -> Mount:
    return mount_with()
