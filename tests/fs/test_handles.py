"""The FUSE adapter's file handles, without a kernel mount: a handle writes only into the file
it was opened on (the adapter's own checks, driven directly)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing

from fs.passthrough import PassthroughOps


async def test_a_reused_descriptor_is_never_written_through(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "mine.bin").write_bytes(b"mine")
    (source / "other.bin").write_bytes(b"other")
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ops = PassthroughOps(source_fd, direct_writes=False)
        ctx = pyfuse3.RequestContext()
        attrs = await ops.lookup(pyfuse3.ROOT_INODE, pyfuse3.FileNameT(b"mine.bin"), ctx)
        info = await ops.open(attrs.st_ino, pyfuse3.FlagT(os.O_WRONLY), ctx)
        fh = info.fh
        assert await ops.write(fh, 0, b"MINE") == 4
        await ops.fsync(fh, False)
        # The descriptor's number now names another file (closed and reused elsewhere in the
        # process): the handle must refuse, not write into that file.
        other = os.open(source / "other.bin", os.O_WRONLY)
        os.dup2(other, fh)
        os.close(other)
        for attempt in (ops.write(fh, 0, b"LOST"), ops.fsync(fh, False)):
            with pytest.raises(pyfuse3.FUSEError) as info_error:
                await attempt
            assert info_error.value.errno == errno.EIO
        assert (source / "other.bin").read_bytes() == b"other"
        assert (source / "mine.bin").read_bytes() == b"MINE"
        await ops.release(fh)
    finally:
        os.close(source_fd)


class _SlowCapture:
    """A capture whose first cut fails (the changes stay pending) and whose next cut waits
    until the test lets it finish."""

    def __init__(self) -> None:
        self.cuts = 0
        self.cutting = trio.Event()
        self.finish = trio.Event()

    def aside_full(self, inode: int) -> None:
        return None

    def before_write(self, inode: int, offset: int, length: int) -> None:
        pass

    def busy(self, inode: int) -> bool:
        return False

    def ignores(self, relative: str) -> bool:
        return False

    async def cut(self, *args: object, **kwargs: object) -> None:
        self.cuts += 1
        if self.cuts == 1:
            raise OSError(errno.EIO, "the first cut fails")
        self.cutting.set()
        await self.finish.wait()


async def test_a_file_looked_up_again_during_its_last_cut_stays_known(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "f.bin").write_bytes(b"")
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        capture = _SlowCapture()
        ops = PassthroughOps(source_fd, capture=capture, direct_writes=False)  # type: ignore[arg-type]
        ctx = pyfuse3.RequestContext()
        name = pyfuse3.FileNameT(b"f.bin")
        inode = (await ops.lookup(pyfuse3.ROOT_INODE, name, ctx)).st_ino
        fh = (await ops.open(inode, pyfuse3.FlagT(os.O_WRONLY), ctx)).fh
        await ops.write(fh, 0, b"data")
        await ops.release(fh)  # its cut fails: the file stays to be cut
        async with trio.open_nursery() as nursery:
            # The kernel forgets the file: its pending version is cut first ...
            nursery.start_soon(ops.forget, [(inode, 1)])
            await capture.cutting.wait()
            # ... and, meanwhile, looks it up again.
            assert (await ops.lookup(pyfuse3.ROOT_INODE, name, ctx)).st_ino == inode
            capture.finish.set()
        assert (await ops.getattr(inode, ctx)).st_size == 4  # still known by its inode
    finally:
        os.close(source_fd)


async def test_changes_wait_for_the_catch_up_while_reads_are_answered(tmp_path: Path) -> None:
    """At mount time the adapter answers lookups and reads at once, while every request that
    would change SOURCE waits until the catch-up has compared it with the last snapshot."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "old.txt").write_bytes(b"old")
    (source / "kept.txt").write_bytes(b"kept")
    source_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ops = PassthroughOps(source_fd, direct_writes=False)
        ctx = pyfuse3.RequestContext()
        ops.hold_changes()
        attrs = await ops.lookup(pyfuse3.ROOT_INODE, pyfuse3.FileNameT(b"old.txt"), ctx)
        info = await ops.open(attrs.st_ino, pyfuse3.FlagT(os.O_RDONLY), ctx)
        assert await ops.read(info.fh, 0, 10) == b"old"
        await ops.release(info.fh)
        kept = await ops.lookup(pyfuse3.ROOT_INODE, pyfuse3.FileNameT(b"kept.txt"), ctx)
        done: list[str] = []

        async def change(what: str, request: object) -> None:
            await request  # type: ignore[misc]
            done.append(what)

        name = pyfuse3.FileNameT
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                change, "mkdir", ops.mkdir(pyfuse3.ROOT_INODE, name(b"d"), 0o755, ctx)
            )
            nursery.start_soon(
                change, "unlink", ops.unlink(pyfuse3.ROOT_INODE, name(b"old.txt"), ctx)
            )
            nursery.start_soon(
                change,
                "create",
                ops.create(pyfuse3.ROOT_INODE, name(b"new.txt"), 0o644, os.O_WRONLY, ctx),
            )
            nursery.start_soon(
                change, "open for writing", ops.open(kept.st_ino, pyfuse3.FlagT(os.O_RDWR), ctx)
            )
            nursery.start_soon(change, "settle", ops.settle())
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            assert sorted(os.listdir(source)) == ["kept.txt", "old.txt"]
            ops.allow_changes()
        assert sorted(done) == sorted(["mkdir", "unlink", "create", "open for writing", "settle"])
        assert sorted(os.listdir(source)) == ["d", "kept.txt", "new.txt"]
        for fh in list(ops.handles):
            await ops.release(pyfuse3.FileHandleT(fh))
    finally:
        os.close(source_fd)
