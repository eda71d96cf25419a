"""The FUSE operations of the read-only ``versions/`` folder: the adapter hands them every
request whose inode (or handle) is in the virtual range, and they answer from the
``VersionsView``; anything that would change an entry fails with EROFS."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

import pyfuse3
from pyfuse3 import FileHandleT, FileNameT, FlagT, XAttrNameT

from .versions import VIRTUAL_BASE, VersionsView


class VersionsOps:
    def __init__(self, view: VersionsView, settle: Callable[[], Awaitable[None]]) -> None:
        """``settle()`` makes everything written so far a snapshot (before the top is read)."""
        self.view = view
        self.top = view.top
        self._settle = settle
        self._handles: dict[int, int] = {}  # open handle -> inode
        self._next_fh = VIRTUAL_BASE

    @staticmethod
    def owns(inode: int) -> bool:
        """Inodes and handles of versions/ are in the virtual range; SOURCE's never are."""
        return VersionsView.is_virtual(inode)

    @staticmethod
    def refuse(*inodes: int) -> None:
        """versions/ is read-only: any change there fails with EROFS."""
        if any(VersionsView.is_virtual(inode) for inode in inodes):
            raise pyfuse3.FUSEError(errno.EROFS)

    async def lookup(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        if parent == self.top:
            await self._settle()  # a snapshot name: show everything written so far
        return self.view.attrs(self.view.lookup(parent, name))

    def top_attrs(self) -> pyfuse3.EntryAttributes:
        return self.view.attrs(self.top)

    def getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        return self.view.attrs(inode)

    def readlink(self, inode: int) -> FileNameT:
        return self.view.readlink(inode)

    def opendir(self, inode: int) -> FileHandleT:
        self.view.node(inode)  # ENOENT if it is not (or no longer) there
        return FileHandleT(inode)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh == self.top and start_id == 0:
            await self._settle()
        entries = self.view.listing(fh)
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            attrs = self.view.attrs(inode)
            if not pyfuse3.readdir_reply(token, FileNameT(os.fsencode(name)), attrs, index + 1):
                return

    def open(self, inode: int, flags: FlagT) -> pyfuse3.FileInfo:
        if (flags & os.O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        self.view.version(inode)
        self._next_fh += 1
        self._handles[self._next_fh] = inode
        return pyfuse3.FileInfo(fh=FileHandleT(self._next_fh), keep_cache=True)

    def handle(self, fh: int) -> int | None:
        """The inode an open handle of versions/ reads, None if ``fh`` is not one."""
        return self._handles.get(fh)

    async def read(self, inode: int, off: int, size: int) -> bytes:
        return await self.view.read(inode, off, size)

    def release(self, fh: int) -> None:
        self._handles.pop(fh, None)

    def getxattr(self, inode: int, name: XAttrNameT) -> bytes:
        value = dict(self.view.xattrs(inode)).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    def listxattr(self, inode: int) -> list[XAttrNameT]:
        return [XAttrNameT(os.fsencode(n)) for n, _v in self.view.xattrs(inode)]

    @property
    def open_handles(self) -> int:
        return len(self._handles)
