"""The FUSE adapter's file handles, without a kernel mount: a handle writes only into the file
it was opened on (the adapter's own checks, driven directly)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest

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
