"""Write-only handles bypass the mount's page cache: what other readers see stays right."""

from __future__ import annotations

import contextlib
import mmap
import os

import pytest

from fs.fuseglue import direct_writes_are_coherent

from .conftest import Mount

pytestmark = pytest.mark.fuse


def test_kernel_versions_are_parsed() -> None:
    assert direct_writes_are_coherent("6.18.44-fc-v973")
    assert direct_writes_are_coherent("6.6.0")
    assert not direct_writes_are_coherent("6.1.0-18-amd64")
    assert not direct_writes_are_coherent("5.15.0-91-generic")
    assert not direct_writes_are_coherent("unknown")


def test_readers_and_mappings_see_a_write_only_handles_bytes(mounted: Mount) -> None:
    path = mounted.mountpoint / "shared.bin"
    path.write_bytes(b"A" * 300_000)
    reader = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(reader, 10, 150_000) == b"A" * 10  # now in the kernel's cache
        mapping = mmap.mmap(reader, 0, prot=mmap.PROT_READ)
        assert mapping[150_000:150_010] == b"A" * 10
        writer = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(writer, b"B" * 100_000, 120_000)
            # Before the writer even closes, the cached reader and the mapping see it.
            assert os.pread(reader, 10, 150_000) == b"B" * 10
            assert mapping[150_000:150_010] == b"B" * 10
        finally:
            os.close(writer)
        appender = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(appender, b"C" * 1000)
        finally:
            os.close(appender)
        assert os.fstat(reader).st_size == 301_000
        assert os.pread(reader, 1002, 299_999) == b"A" + b"C" * 1000
        mapping.close()
    finally:
        os.close(reader)
    expected = b"A" * 120_000 + b"B" * 100_000 + b"A" * 80_000 + b"C" * 1000
    assert (mounted.source / "shared.bin").read_bytes() == expected
    assert (mounted.mountpoint / "versions" / "latest" / "shared.bin").read_bytes() == expected


def test_a_write_only_handle_that_is_killed_loses_nothing_written(mounted: Mount) -> None:
    # write() returns once SOURCE has the bytes, page cache or not: a dead mount loses none.
    path = mounted.mountpoint / "big.bin"
    block = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    for _ in range(8):
        assert os.write(fd, block) == len(block)
    assert mounted.proc is not None
    mounted.proc.kill()
    mounted.proc.wait()
    with contextlib.suppress(OSError):  # the mount is gone: closing may fail (ENOTCONN)
        os.close(fd)
    assert (mounted.source / "big.bin").read_bytes() == block * 8
