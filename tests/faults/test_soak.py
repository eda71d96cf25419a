"""Scenario 14 (``--full`` only): an hour of mixed work in the mount while a holder is
restarted every few minutes and the retention policy applied every two (keeping five
minutes of history, so that after the warm-up the data stays the same size and any growth is a
leak, not more data); the memory and open files of every long-lived process, sampled all along,
must not grow after the first ten minutes.

``LANVAULT_SOAK_SECONDS`` shortens the hour for a trial run (the figures say how long it ran).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from pathlib import Path

import pytest

from chunkstore.readfds import MAX_IDLE_READ_FDS
from tests.fs.conftest import fuse_available, sweep_stale_mounts
from tests.system.procs import ProcessCluster
from tests.system.test_mount_history import all_safe

from .conftest import ScenarioRun
from .helpers import new_mount, running, same_tree

pytestmark = [pytest.mark.full, pytest.mark.slow, pytest.mark.scenario("soak")]

GROWTH_ALLOWED = 0.10  # RSS may not grow more than this after the warm-up
FD_SLACK = 16  # open files other than segments may vary by this much (links come and go)
# A chunk store keeps up to MAX_IDLE_READ_FDS segments open for reading (a bounded cache that
# fills as segments are read: not a leak, but it grows after the warm-up); a process has up to
# three stores (its own, the unsent one, the mount's outbox), each with a segment being written
# and reads in flight. Segment descriptors are judged against that bound, the rest for growth.
SEGMENT_FDS_ALLOWED = 3 * (MAX_IDLE_READ_FDS + 1) + 16


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def open_files(pid: int) -> tuple[int, int]:
    """(descriptors other than chunk-store segments, segment descriptors)."""
    others = segments = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.endswith(".seg"):
            segments += 1
        else:
            others += 1
    return others, segments


def open_file_kinds(pid: int) -> dict[str, int]:
    """What a process has open, by kind (sockets, pipes) or file name: says what leaked."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":")[0] if ":[" in target else Path(target).name
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


class Workload:
    """Seeded mixed work in a folder: new files, overwrites, appends, renames, deletes, each
    file fsync'd, a steady few operations a second, until stopped."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.operations = 0
        self.errors: list[str] = []

    def run(self) -> None:
        names = [f"d{n % 8}/f{n}.bin" for n in range(200)]
        for folder in {n.split("/")[0] for n in names}:
            (self.root / folder).mkdir(exist_ok=True)
        while not self.stop.wait(0.2):
            name = self.root / self.rng.choice(names)
            try:
                kind = self.rng.random()
                if kind < 0.5 or not name.exists():
                    self.write(name, self.rng.randbytes(self.rng.randrange(1, 400_000)), "wb")
                elif kind < 0.7:
                    self.write(name, self.rng.randbytes(self.rng.randrange(1, 50_000)), "ab")
                elif kind < 0.85:
                    name.rename(self.root / self.rng.choice(names))
                else:
                    name.unlink()
                self.operations += 1
            except OSError as exc:
                self.errors.append(f"{name}: {exc}")

    @staticmethod
    def write(path: Path, data: bytes, mode: str) -> None:
        with open(path, mode) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def test_an_hour_of_work_with_restarts_leaks_nothing(run: ScenarioRun, tmp_path: Path) -> None:
    why = fuse_available()
    if why:
        pytest.skip(why)
    sweep_stale_mounts()
    duration = float(os.environ.get("LANVAULT_SOAK_SECONDS", 3600))
    warm_up = duration / 6  # ten minutes of the hour
    with running(tmp_path / "net", 4, "10m") as cluster:
        mount, source, mnt = new_mount(cluster, tmp_path)
        mount.start()
        work = Workload(mnt, run.seed)
        writer = threading.Thread(target=work.run, daemon=True)
        # process -> (t, rss, descriptors other than segments, segment descriptors)
        samples: dict[str, list[tuple[float, int, int, int]]] = {}
        started = time.monotonic()
        next_restart = started + run.rng.uniform(120, 300) * duration / 3600
        prune_every = duration / 30  # two minutes of the hour
        next_prune = started + prune_every
        restarts = prunes = 0
        writer.start()
        try:
            while (now := time.monotonic()) - started < duration:
                assert mount.proc is not None
                watched = {"mount": mount.proc.pid, **pids(cluster)}
                for name, pid in watched.items():
                    samples.setdefault(name, []).append(
                        (now - started, vm(pid, "VmRSS"), *open_files(pid))
                    )
                if now >= next_restart:  # a holder stopped and started again
                    victim = run.rng.choice([2, 3, 4])
                    cluster.stop(victim)
                    cluster.start(victim)
                    samples.pop(f"node {victim}", None)  # a new process: its own series
                    restarts += 1
                    next_restart = now + run.rng.uniform(120, 300) * duration / 3600
                if now >= next_prune:  # steady state: history older than half the warm-up goes
                    cluster.cli(1, "prune", "--keep", f"all:{round(warm_up / 2)}s", timeout=600)
                    prunes += 1
                    next_prune = now + prune_every
                time.sleep(min(30.0, duration / 120))
        finally:
            work.stop.set()
            writer.join(30)
        assert not work.errors, work.errors[:5]
        assert mount.proc is not None
        kinds = {  # what each process has open as the work ends (says what leaked, if any)
            name: open_file_kinds(pid)
            for name, pid in {"mount": mount.proc.pid, **pids(cluster)}.items()
        }
        cluster.wait(lambda: all_safe(cluster, source.resolve()), 600, "every file safe")
        try:
            cluster.cli(1, "restore", mnt, "--to", tmp_path / "out", timeout=1800)
            assert same_tree(source, tmp_path / "out")
        finally:
            mount.stop()
        run.figure("seconds of work", time.monotonic() - started, "s")
        run.figure("operations", work.operations)
        run.figure("holder restarts", restarts)
        run.figure("prunes", prunes)
        for name, series in samples.items():
            judge(run, name, series, warm_up, kinds.get(name, {}))


def pids(cluster: ProcessCluster) -> dict[str, int]:
    return {
        f"node {n}": node.proc.pid
        for n, node in cluster.nodes.items()
        if node.proc is not None and node.proc.poll() is None
    }


def judge(
    run: ScenarioRun,
    name: str,
    series: list[tuple[float, int, int, int]],
    warm_up: float,
    kinds: dict[str, int],
) -> None:
    """RSS and open files of one process: after the warm-up, the last quarter's median is
    within the allowance of the median just after the warm-up; segment descriptors (a bounded
    cache) within their bound at every sample."""
    after = [s for s in series if s[0] >= warm_up]
    if len(after) < 8:
        return  # a holder restarted late: too short a life to judge
    quarter = max(2, len(after) // 4)
    early, late = after[:quarter], after[-quarter:]
    rss_early = statistics.median(s[1] for s in early)
    rss_late = statistics.median(s[1] for s in late)
    fds_early = statistics.median(s[2] for s in early)
    fds_late = statistics.median(s[2] for s in late)
    growth = rss_late / rss_early - 1
    run.figure(f"RSS growth after the warm-up, {name}", 100 * growth, "%")
    run.figure(f"peak RSS, {name}", max(s[1] for s in series) / 1e6, "MB")
    segments = max(s[3] for s in series)
    run.figure(f"open files at the end, {name}", fds_late)
    run.figure(f"most segments open at once, {name}", segments)
    what = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    assert growth <= GROWTH_ALLOWED, (name, rss_early, rss_late)
    assert fds_late <= fds_early + FD_SLACK, (
        f"{name}: open files other than segments {fds_early} -> {fds_late}; open now: {what}"
    )
    assert segments <= SEGMENT_FDS_ALLOWED, f"{name}: {segments} segments open; now: {what}"
