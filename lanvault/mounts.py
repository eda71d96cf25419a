"""The kernel's mount table, as the mount command and the demo need it.

A FUSE mount whose process died stays in the table: its folder answers ``ENOTCONN`` to every
call (``os.path.ismount`` then says False) until it is unmounted. Mounting there again, or
writing into the folder after a lazy unmount while programs still run, needs to know.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from pathlib import Path

from .state import CommandError

log = logging.getLogger("lanvault.mount")
FSNAME = "lanvault"


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as \040, \011, \012 and \134.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _absolute(path: Path) -> str:
    # The folder itself may not answer (a dead mount): resolve only its parent.
    return os.path.join(os.path.realpath(path.absolute().parent), path.name)


def mounted_fsname(path: Path) -> str | None:
    """The file system name mounted on ``path`` (the newest mount there), or None."""
    target = _absolute(path)
    found = None
    with open("/proc/self/mounts") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 2 and _unescape(fields[1]) == target:
                found = _unescape(fields[0])
    return found


def is_dead(path: Path) -> bool:
    """Whether ``path`` is a mount whose file system process is gone (ENOTCONN)."""
    try:
        os.statvfs(path)  # always asks the file system (a stat may be answered from cache)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def is_live(path: Path) -> bool:
    """Whether a file system is mounted on ``path`` and answers (a dead one may still look
    mounted to ``os.path.ismount`` while the kernel has its root's attributes cached)."""
    return os.path.ismount(path) and not is_dead(path)


def unmount(path: Path) -> None:
    """Detach the mount at ``path`` (lazily: programs still inside keep what they hold)."""
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)


def clear_dead_mount(path: Path) -> bool:
    """Unmount a lanvault mount left at ``path`` by a process that died; True if one was.

    Another file system's dead mount is not ours to take down: a clear error instead.
    """
    if not is_dead(path):
        return False
    if mounted_fsname(path) != FSNAME:
        raise CommandError(
            f"{path} is a mount whose file system stopped answering; unmount it first"
            f" (fusermount3 -u -z {path})"
        )
    unmount(path)
    if is_dead(path):
        raise CommandError(f"{path} is a dead lanvault mount that could not be unmounted")
    log.warning("%s was left mounted by a lanvault mount that died; unmounted it", path)
    return True
