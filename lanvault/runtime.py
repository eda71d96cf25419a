"""Process-wide tuning done once at start-up by the composition layer."""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_switch_interval(seconds: float = 0.0005) -> None:
    """Let the event loop take the GIL back soon after a worker thread wants it.

    Hashing, sealing and SQLite run on worker threads; with CPython's default 5 ms switch
    interval the event loop waits up to that long after every system call while a worker
    holds the GIL, which measured here more than halved the files per second of the mount.
    """
    sys.setswitchinterval(seconds)


def tune_allocator() -> bool:
    """Keep freed chunk buffers for reuse instead of returning them to the kernel at once.

    Every 64,000-byte chunk allocates and frees buffers of that size many times a second. With
    glibc's defaults the heap is trimmed and regrown constantly and the kernel zeroes the pages
    again each time; measured here, that costs about 30% of the chunk pipeline's speed. Keeping
    up to 32 MiB free per arena (and at most 2 arenas) removes it at a bounded memory cost.
    Returns False where this is not glibc.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_TRIM_THRESHOLD, 32 << 20) == 1
    ok = mallopt(_M_TOP_PAD, 16 << 20) == 1 and ok
    # Fixing the trim threshold turns off glibc's adaptive mmap threshold, which would leave
    # every buffer over 128 KiB (FUSE writes of 1 MiB, TLS reads, protocol frames) to its own
    # mmap: page faults and zeroed pages on every request. Serve those from the heap too.
    ok = mallopt(_M_MMAP_THRESHOLD, 8 << 20) == 1 and ok
    return bool(mallopt(_M_ARENA_MAX, 2) == 1) and ok


def raise_open_file_limit() -> int:
    """Raise the soft limit on open descriptors to the hard one; return the limit in force.

    A node holds a socket per peer and per client, files of its store and the catalog; the
    usual soft limit of 1024 let a flood of idle connections starve members' requests.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft
