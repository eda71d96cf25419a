"""The small parts every FUSE handler of the live folder shares: errors mapped to errno,
names checked, attributes and statfs answers built from ``os`` results, the handler guard,
and whether this kernel keeps direct writes coherent."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import platform
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyfuse3
from pyfuse3 import InodeT, ModeT

log = logging.getLogger(__name__)

# Kernels from 6.6 drop the page cache a direct write overlaps (other open files and mmaps
# see the new bytes at once); older ones would leave a reader's cached pages stale.
DIRECT_WRITES_COHERENT_FROM = (6, 6)


def direct_writes_are_coherent(release: str | None = None) -> bool:
    """Whether this kernel keeps cached readers coherent with FOPEN_DIRECT_IO writes."""
    found = re.match(r"(\d+)\.(\d+)", release if release is not None else platform.release())
    return found is not None and (int(found[1]), int(found[2])) >= DIRECT_WRITES_COHERENT_FROM


ENTRY_TIMEOUT = 1.0
DEFAULT_MIN_INTERVAL = 2.0  # seconds between two versions of a file written continuously


@dataclass(slots=True)
class Handle:
    fd: int
    inode: int
    writable: bool
    wrote: bool = False  # a write came through this handle

    def check(self) -> None:
        """Refuse to write or sync through a descriptor that no longer is the file it was
        opened on (its number closed and reused elsewhere in this process): an error the
        writer sees, never bytes acknowledged into another file."""
        # A file's FUSE inode is its st_ino in SOURCE (only the root is renumbered).
        if os.fstat(self.fd).st_ino != self.inode:
            log.error(
                "handle %d of inode %d now refers to another file; refusing to write through it",
                self.fd,
                self.inode,
            )
            raise pyfuse3.FUSEError(errno.EIO)


@contextmanager
def fuse_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


def checked_name(raw: bytes) -> str:
    name = os.fsdecode(raw)
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise pyfuse3.FUSEError(errno.EINVAL)
    return name


# FUSE requests served by every guarded adapter of this process, by handler: the mount logs
# them when it stops (``scripts/bench_smallfiles.py`` reads the requests a file costs).
REQUESTS: Counter[str] = Counter()
REQUEST_SECONDS: defaultdict[str, float] = defaultdict(float)  # and the seconds spent in them


def guarded(cls: type[pyfuse3.Operations]) -> type[pyfuse3.Operations]:
    """Turn any unexpected exception of a handler into EIO: it must never take the mount down."""

    def wrap(
        name: str, method: Callable[..., Awaitable[object]]
    ) -> Callable[..., Awaitable[object]]:
        request = name in vars(pyfuse3.Operations)  # a FUSE handler, not a helper

        @functools.wraps(method)
        async def handler(*args: object, **kwargs: object) -> object:
            if request:
                REQUESTS[name] += 1
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            except pyfuse3.FUSEError:
                raise
            except Exception:
                log.exception("%s failed", name)
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:
                if request:
                    REQUEST_SECONDS[name] += time.perf_counter() - started

        return handler

    for name, method in list(vars(cls).items()):
        if inspect.iscoroutinefunction(method) and not name.startswith("_"):
            setattr(cls, name, wrap(name, method))
    return cls


def entry_attributes(st: os.stat_result, ino: InodeT) -> pyfuse3.EntryAttributes:
    """``st`` as FUSE attributes of inode ``ino``, cached by the kernel ``ENTRY_TIMEOUT``."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = ino
    entry.generation = 0
    entry.entry_timeout = ENTRY_TIMEOUT
    entry.attr_timeout = ENTRY_TIMEOUT
    entry.st_mode = ModeT(st.st_mode)
    entry.st_nlink = st.st_nlink
    entry.st_uid = st.st_uid
    entry.st_gid = st.st_gid
    entry.st_rdev = st.st_rdev
    entry.st_size = st.st_size
    entry.st_blksize = st.st_blksize
    entry.st_blocks = st.st_blocks
    entry.st_atime_ns = st.st_atime_ns
    entry.st_mtime_ns = st.st_mtime_ns
    entry.st_ctime_ns = st.st_ctime_ns
    return entry


_STATFS_FIELDS = (
    "f_bsize",
    "f_frsize",
    "f_blocks",
    "f_bfree",
    "f_bavail",
    "f_files",
    "f_ffree",
    "f_favail",
    "f_namemax",
)


def statfs_data(st: os.statvfs_result) -> pyfuse3.StatvfsData:
    data = pyfuse3.StatvfsData()
    for name in _STATFS_FIELDS:
        setattr(data, name, getattr(st, name))
    return data
