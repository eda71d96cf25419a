"""SOURCE, the real files behind the mount, reached through a folder descriptor opened before
mounting, with ``*at`` calls (``dir_fd=``): mounting over SOURCE itself protects it in place.

Paths are relative to SOURCE ('' is SOURCE itself). A path from SOURCE's top may be longer than
PATH_MAX where no program's call was (it worked relative to a folder deep inside): every call
here reaches those too (``longpath.py``). No FUSE here: ``PassthroughOps`` maps what these
raise (``OSError``) to FUSE errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator

import pyfuse3

from chunkstore.catalog import Xattrs, read_xattrs

from .longpath import is_long, open_folder

log = logging.getLogger(__name__)


class Source:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    @contextlib.contextmanager
    def at(self, path: str) -> Iterator[tuple[int, str]]:
        """(folder descriptor, name) that reach ``path``: SOURCE's and the path itself when it
        is short, else the folder above it, opened a few components at a time."""
        if not is_long(path):
            yield self.fd, path or "."
            return
        parent, _, name = path.rpartition("/")
        fd = open_folder(self.fd, parent)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def stat(self, path: str) -> os.stat_result:
        with self.at(path) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        with self.at(path) as (fd, name):
            return os.open(name, flags, mode, dir_fd=fd)

    def open_for_read(self, path: str) -> int:
        return self.open(path, os.O_RDONLY | os.O_NOFOLLOW)

    def give_to(self, path: str, uid: int, gid: int) -> None:
        with self.at(path) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def names(self, path: str) -> list[str]:
        """A folder's entries, sorted."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def sync_folder(self, path: str) -> None:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        with self.at(path) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    @contextlib.contextmanager
    def xattr_path(self, path: str) -> Iterator[str]:
        """A path the xattr calls (which take no folder descriptor) reach the entry by."""
        with self.at(path) as (fd, name):
            yield f"/proc/self/fd/{fd}/{name}"

    def xattrs_of(self, path: str) -> Xattrs | None:
        """The entry's extended attributes, for its history; None (logged) if unreadable."""
        try:
            with self.at(path) as (fd, name):
                return read_xattrs(name, dir_fd=fd)
        except OSError as exc:
            log.warning("%s: its extended attributes are not recorded: %s", path, exc)
            return None


def set_attributes(
    target: int | tuple[int, str], attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields
) -> os.stat_result:
    """Apply a setattr's mode, owner and times (not its size) to an open descriptor or to
    (folder descriptor, name); the entry's attributes after."""
    fd, (at, name) = (target, (-1, "")) if isinstance(target, int) else (-1, target)

    def now() -> os.stat_result:
        return os.fstat(fd) if fd >= 0 else os.stat(name, dir_fd=at, follow_symlinks=False)

    if fields.update_mode:
        mode = stat.S_IMODE(attr.st_mode)
        os.fchmod(fd, mode) if fd >= 0 else os.chmod(name, mode, dir_fd=at)
    if fields.update_uid or fields.update_gid:
        uid = attr.st_uid if fields.update_uid else -1
        gid = attr.st_gid if fields.update_gid else -1
        if fd >= 0:
            os.fchown(fd, uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=at, follow_symlinks=False)
    if fields.update_atime or fields.update_mtime:
        current = now()
        atime = attr.st_atime_ns if fields.update_atime else current.st_atime_ns
        mtime = attr.st_mtime_ns if fields.update_mtime else current.st_mtime_ns
        if fd >= 0:
            os.utime(fd, ns=(atime, mtime))
        else:
            os.utime(name, ns=(atime, mtime), dir_fd=at, follow_symlinks=False)
    return now()
