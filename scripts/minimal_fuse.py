#!/usr/bin/env python3
"""A minimal pyfuse3 passthrough: the floor any Python FUSE file system meets on this machine.

Usage: minimal_fuse.py SOURCE MOUNTPOINT COUNTS.json

Every request goes straight to SOURCE (paths kept per inode, the inode numbers SOURCE's), with
the mount options lanvault uses (``default_permissions``; ``allow_other`` as root) and the same
one-second entry and attribute timeouts. It records nothing: what lanvault's mount costs above
it is lanvault's own. On unmount it writes how many requests of each kind it served to COUNTS.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, XAttrNameT

REQUESTS: Counter[str] = Counter()


@contextmanager
def errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None


def counted(method: Callable[..., Any]) -> Callable[..., Any]:
    async def handler(*args: Any, **kwargs: Any) -> Any:
        REQUESTS[method.__name__] += 1
        with errors():
            return await method(*args, **kwargs)

    return handler


class Minimal(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self, source: str) -> None:
        super().__init__()
        self.root_ino = os.lstat(source).st_ino
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: source}

    def _ino(self, st: os.stat_result) -> int:
        return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        for name in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size"):
            setattr(entry, name, getattr(st, name))
        entry.st_ino = InodeT(self._ino(st))
        entry.st_blksize, entry.st_blocks = st.st_blksize, st.st_blocks
        entry.st_atime_ns, entry.st_mtime_ns = st.st_atime_ns, st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        entry.entry_timeout = entry.attr_timeout = 1.0
        return entry

    def _remember(self, path: str) -> pyfuse3.EntryAttributes:
        st = os.lstat(path)
        self.paths[self._ino(st)] = path
        return self._attrs(st)

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self.paths[parent], os.fsdecode(name))

    @counted
    async def lookup(self, parent: InodeT, name: FileNameT, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._remember(self._child(parent, name))

    @counted
    async def forget(self, inode_list: Any) -> None:
        return None

    @counted
    async def getattr(self, inode: InodeT, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._attrs(os.lstat(self.paths[inode]))

    @counted
    async def setattr(
        self, inode: InodeT, attr: Any, fields: Any, fh: FileHandleT | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self.paths[inode]
        if fields.update_size:
            os.truncate(fh if fh is not None else path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode), follow_symlinks=False)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            os.chown(path, uid, gid, follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        return self._attrs(os.lstat(path))

    @counted
    async def readlink(self, inode: InodeT, ctx: Any) -> FileNameT:
        return FileNameT(os.fsencode(os.readlink(self.paths[inode])))

    @counted
    async def opendir(self, inode: InodeT, ctx: Any) -> FileHandleT:
        return FileHandleT(inode)

    @counted
    async def readdir(self, fh: FileHandleT, start_id: int, token: Any) -> None:
        names = sorted(os.listdir(self.paths[fh]))
        for index in range(start_id, len(names)):
            attrs = self._remember(os.path.join(self.paths[fh], names[index]))
            if not pyfuse3.readdir_reply(
                token, FileNameT(os.fsencode(names[index])), attrs, index + 1
            ):
                return

    @counted
    async def releasedir(self, fh: FileHandleT) -> None:
        return None

    @counted
    async def mkdir(
        self, parent: InodeT, name: FileNameT, mode: ModeT, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent, name)
        os.mkdir(path, mode & ~ctx.umask)
        os.chown(path, ctx.uid, ctx.gid)
        return self._remember(path)

    @counted
    async def rmdir(self, parent: InodeT, name: FileNameT, ctx: Any) -> None:
        os.rmdir(self._child(parent, name))

    @counted
    async def unlink(self, parent: InodeT, name: FileNameT, ctx: Any) -> None:
        os.unlink(self._child(parent, name))

    @counted
    async def symlink(
        self, parent: InodeT, name: FileNameT, target: FileNameT, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent, name)
        os.symlink(os.fsdecode(target), path)
        os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        return self._remember(path)

    @counted
    async def rename(
        self,
        p_old: InodeT,
        n_old: FileNameT,
        p_new: InodeT,
        n_new: FileNameT,
        flags: FlagT,
        ctx: Any,
    ) -> None:
        old, new = self._child(p_old, n_old), self._child(p_new, n_new)
        os.rename(old, new)
        st = os.lstat(new)
        self.paths[self._ino(st)] = new

    @counted
    async def link(
        self, inode: InodeT, new_parent: InodeT, new_name: FileNameT, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        new = self._child(new_parent, new_name)
        os.link(self.paths[inode], new, follow_symlinks=False)
        return self._remember(new)

    @counted
    async def open(self, inode: InodeT, flags: FlagT, ctx: Any) -> pyfuse3.FileInfo:
        fd = os.open(self.paths[inode], flags & ~os.O_CREAT)
        return pyfuse3.FileInfo(fh=FileHandleT(fd))

    @counted
    async def create(
        self, parent: InodeT, name: FileNameT, mode: ModeT, flags: FlagT, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent, name)
        fd = os.open(path, flags | os.O_CREAT, mode & ~ctx.umask)
        os.fchown(fd, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=FileHandleT(fd)), self._remember(path)

    @counted
    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @counted
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    @counted
    async def flush(self, fh: FileHandleT) -> None:
        return None

    @counted
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)

    @counted
    async def release(self, fh: FileHandleT) -> None:
        os.close(fh)

    @counted
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail"):
            setattr(data, name, getattr(st, name))
        data.f_files, data.f_ffree, data.f_favail = st.f_files, st.f_ffree, st.f_favail
        data.f_namemax = st.f_namemax
        return data

    @counted
    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: Any) -> bytes:
        return os.getxattr(self.paths[inode], os.fsdecode(name), follow_symlinks=False)

    @counted
    async def setxattr(self, inode: InodeT, name: XAttrNameT, value: bytes, ctx: Any) -> None:
        os.setxattr(self.paths[inode], os.fsdecode(name), value, follow_symlinks=False)

    @counted
    async def listxattr(self, inode: InodeT, ctx: Any) -> list[XAttrNameT]:
        names = os.listxattr(self.paths[inode], follow_symlinks=False)
        return [XAttrNameT(os.fsencode(n)) for n in names]

    @counted
    async def removexattr(self, inode: InodeT, name: XAttrNameT, ctx: Any) -> None:
        os.removexattr(self.paths[inode], os.fsdecode(name), follow_symlinks=False)


def main() -> int:
    source, mountpoint, counts = sys.argv[1:4]
    options = set(pyfuse3.default_options) | {"fsname=minimal", "default_permissions"}
    if os.geteuid() == 0:
        options.add("allow_other")
    pyfuse3.init(Minimal(os.path.abspath(source)), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        with open(counts, "w") as handle:
            json.dump(dict(REQUESTS), handle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
