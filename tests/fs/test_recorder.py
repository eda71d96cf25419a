"""What the mount does with writes, without a mount: ``ChangeRecorder`` over a fake cutter
(which records what it is asked to cut) and real files in a temporary folder, on trio's mock
clock."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from chunkstore.catalog import is_own_temp
from fs.capture import VersionCutter
from fs.dirty import DirtyFile
from fs.inodes import InodeTable
from fs.recorder import ChangeRecorder


class FakeCutter:
    """Stands for ``VersionCutter``: each cut is recorded (path, bytes read, chunks, aliases)."""

    def __init__(self) -> None:
        self.cuts: list[tuple[str, bytes, set[int], tuple[str, ...], float]] = []
        self.fail = False
        self.truncated: list[tuple[int, int]] = []

    def ignores(self, relative: str) -> bool:
        return is_own_temp(relative)

    async def cut(
        self,
        relative: str,
        fd: int,
        changes: DirtyFile,
        lock: trio.Lock | None = None,
        inode: int | None = None,
        on_failure: Callable[[DirtyFile], None] | None = None,
        aliases: tuple[str, ...] = (),
    ) -> None:
        assert lock is not None and lock.locked()  # read under the entry's lock: no write slips in
        if self.fail:
            raise OSError("the outbox's disk went away")
        data = os.pread(fd, 1 << 20, 0)
        self.cuts.append((relative, data, set(changes.chunks), aliases, trio.current_time()))

    def before_truncate(self, inode: int, size: int) -> None:
        self.truncated.append((inode, size))

    def before_write(self, inode: int, offset: int, length: int) -> None:
        pass

    def aside_full(self, inode: int) -> None:
        return None

    def busy(self, inode: int) -> bool:
        return False

    async def barrier(self) -> None:
        pass


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_bytes(b"hello")
    return tmp_path


def recorder(
    folder: Path, cutter: FakeCutter, interval: float = 2.0, burst_wait: float = 0.0
) -> ChangeRecorder:
    """``burst_wait`` 0 (the most tests): a close is cut at once, unless debounced."""
    inodes = InodeTable(1)
    inodes.remember(10, "a.txt")

    def open_for_read(path: str) -> int:
        return os.open(folder / path, os.O_RDONLY)

    return ChangeRecorder(cast(VersionCutter, cutter), inodes, interval, open_for_read, burst_wait)


async def test_a_write_is_cut_once_and_a_clean_file_not_at_all(
    folder: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cutter = FakeCutter()
    changes = recorder(folder, cutter)
    async with trio.open_nursery() as nursery:
        await nursery.start(changes.run)
        assert await changes.cut(10) is None and cutter.cuts == []  # nothing written
        changes.wrote(10, 0, 5)
        await changes.cut(10)
        assert [(p, d, c) for p, d, c, _a, _t in cutter.cuts] == [("a.txt", b"hello", {0})]
        assert not changes.is_dirty(10)
        nursery.cancel_scope.cancel()


async def test_a_failed_cut_keeps_the_changes_for_the_next(
    folder: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cutter = FakeCutter()
    changes = recorder(folder, cutter, interval=0.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(changes.run)
        changes.wrote(10, 0, 5)
        cutter.fail = True
        assert await changes.cut(10) is None
        assert changes.is_dirty(10)  # not lost: the next cut takes it
        cutter.fail = False
        changes.wrote(10, 200_000, 1)
        await changes.cut(10)
        assert cutter.cuts[0][2] == {0, 3}  # both writes' chunks
        nursery.cancel_scope.cancel()


async def test_cuts_within_the_interval_wait_and_a_truncation_fires_them_first(
    folder: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cutter = FakeCutter()
    changes = recorder(folder, cutter, interval=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(changes.run)
        start = trio.current_time()
        changes.wrote(10, 0, 5)
        await changes.cut(10)
        await trio.sleep(0.5)
        changes.wrote(10, 0, 5)
        assert await changes.cut(10) is None  # debounced: waits for the interval
        assert len(cutter.cuts) == 1
        fd = os.open(folder / "a.txt", os.O_WRONLY)
        try:
            await changes.truncate(10, fd, 2)  # the waiting state is versioned before
        finally:
            os.close(fd)
        assert [(d, t - start) for _p, d, _c, _a, t in cutter.cuts] == [
            (b"hello", 0.0),
            (b"hello", 0.5),  # at once, not when the interval is over, and whole
        ]
        assert cutter.truncated == [(10, 2)] and (folder / "a.txt").read_bytes() == b"he"
        assert changes.is_dirty(10)  # the truncation is the next version's
        await changes.cut_everything()
        assert cutter.cuts[-1][1] == b"he"
        nursery.cancel_scope.cancel()


async def test_hard_links_are_cut_as_aliases_and_own_temporary_names_not_at_all(
    folder: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cutter = FakeCutter()
    changes = recorder(folder, cutter, interval=0.0)
    os.link(folder / "a.txt", folder / "b.txt")
    changes.inodes.remember(10, "b.txt")
    changes.inodes.remember(11, ".c.txt.lanvault-0123456789abcdef")
    (folder / ".c.txt.lanvault-0123456789abcdef").write_bytes(b"restoring")
    async with trio.open_nursery() as nursery:
        await nursery.start(changes.run)
        changes.wrote(10, 0, 5)
        changes.wrote(11, 0, 9)
        await changes.cut(10)
        await changes.cut(11)
        assert [(p, a) for p, _d, _c, a, _t in cutter.cuts] == [("a.txt", ("b.txt",))]
        assert changes.is_dirty(11)  # cut when it takes its real name
        nursery.cancel_scope.cancel()


async def test_a_close_in_a_burst_is_cut_when_it_pauses_and_a_truncation_first(
    folder: Path, autojump_clock: trio.testing.MockClock
) -> None:
    cutter = FakeCutter()
    changes = recorder(folder, cutter, interval=0.0, burst_wait=5.0)
    (folder / "b.txt").write_bytes(b"other")
    changes.inodes.remember(11, "b.txt")
    async with trio.open_nursery() as nursery:
        await nursery.start(changes.run)
        start = trio.current_time()
        changes.wrote(10, 0, 5)
        assert await changes.cut(10) is None  # closed in a burst: waits
        changes.wrote(11, 0, 5)
        assert await changes.cut(11) is None
        for _ in range(10):  # the burst goes on for a second
            await trio.sleep(0.1)
            changes.changing()
        assert cutter.cuts == []
        fd = os.open(folder / "b.txt", os.O_WRONLY)
        try:
            await changes.truncate(11, fd, 0)  # b's waiting state is versioned first
        finally:
            os.close(fd)
        assert cutter.cuts[0][:2] == ("b.txt", b"other")
        while len(cutter.cuts) < 2:
            await trio.sleep(0.01)
        # a.txt once the burst paused (not during it: nothing was cut in its second).
        assert cutter.cuts[1][0] == "a.txt" and cutter.cuts[1][4] > start + 1.0
        assert changes.is_dirty(11) and not changes.is_dirty(10)
        fsynced = await changes.cut(11, defer=False)  # fsync: at once, whatever the burst
        assert fsynced is None and [c[0] for c in cutter.cuts] == ["b.txt", "a.txt", "b.txt"]
        nursery.cancel_scope.cancel()


def test_the_fake_is_shaped_like_the_cutter() -> None:
    """The fake's methods exist on the real cutter, with the same parameters."""
    for name in ("cut", "before_truncate", "before_write", "aside_full", "busy", "barrier"):
        real = inspect.signature(getattr(VersionCutter, name)).parameters
        fake = inspect.signature(getattr(FakeCutter, name)).parameters
        assert list(fake) == list(real), name
