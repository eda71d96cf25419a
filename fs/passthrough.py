"""The live folder: a FUSE passthrough of SOURCE that records what is written.

``PassthroughOps`` is an adapter only: every handler is a thin ``async`` method over
``Source`` (the real files, ``source.py``), ``ChangeRecorder`` (what is written and the versions
it makes, ``recorder.py``), ``InodeTable`` (``inodes.py``) and, for the inodes of
``versions/``, ``VersionsOps``; it maps ``OSError`` to ``FUSEError`` with the same errno (the
only exception a pyfuse3 handler may raise; anything else would take the mount down).

FUSE inode numbers are the underlying inode numbers, so they stay the same across remounts.
Handlers make their system calls inline: each is one metadata call of microseconds (a worker
thread hop costs more); what can take long (fsync, a cut reading a file) runs off the loop.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Awaitable, Callable

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT, XAttrNameT

from .burst import LONGEST
from .capture import VersionCutter
from .fuseglue import (
    DEFAULT_MIN_INTERVAL,
    Handle,
    checked_name,
    direct_writes_are_coherent,
    entry_attributes,
    fuse_errors,
    guarded,
    statfs_data,
)
from .inodes import InodeTable
from .recorder import ChangeRecorder
from .source import Source, set_attributes
from .treerecorder import ChangeGate, TreeRecorder
from .versions import VERSIONS_NAME, VersionsView
from .versions_ops import VersionsOps

log = logging.getLogger(__name__)


@guarded
class PassthroughOps(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        source_fd: int,
        capture: VersionCutter | None = None,
        versions: VersionsView | None = None,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        burst_wait: float = LONGEST,
        direct_writes: bool | None = None,
        rescan: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        super().__init__()
        # A write-only handle bypasses the kernel's page cache of the mount: each write is
        # then copied once less and needs no cache pages of its own (measured here: about
        # 1.5x the write speed). write() still returns only once SOURCE has the bytes.
        self.direct_writes = (
            direct_writes_are_coherent() if direct_writes is None else direct_writes
        )
        self.capture = capture
        self.min_interval = min_interval
        # versions/ answers for itself: the requests on its inodes go there
        self.vops = VersionsOps(versions, self.settle) if versions is not None else None
        self.source = Source(source_fd)
        self.root_ino = os.fstat(source_fd).st_ino
        self.inodes = InodeTable(pyfuse3.ROOT_INODE)
        self.handles: dict[int, Handle] = {}
        # What is written, and the versions it makes (debounce, cuts): ``recorder.py``.
        self.changes = ChangeRecorder(
            capture, self.inodes, min_interval, self.source.open_for_read, burst_wait
        )
        self.i_am_root = os.geteuid() == 0
        # Closed while a catch-up runs (``hold_changes``): reads are answered meanwhile.
        self.gate = ChangeGate()
        # What the namespace changes record (``treerecorder.py``); ``rescan`` is the catch-up,
        # run again when a folder left out takes a name the mount records.
        self.tree = TreeRecorder(
            capture, self.source, self.inodes, self.changes, self._inode_of, self.gate, rescan
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Holds the debounced cuts (``CutScheduler``); runs until cancelled."""
        await self.changes.run(task_status=task_status)

    async def settle(self) -> None:
        """Cut every debounced file now and wait until all is recorded (versions/ is exact)."""
        await self.gate.allowed()  # and what a catch-up finds is recorded first
        await self.changes.settle()

    def hold_changes(self) -> None:
        """Until ``allow_changes``, every request that would change SOURCE waits (and
        versions/ too): the mount answers lookups and reads while the catch-up compares
        SOURCE with the last snapshot, and no change made through it can slip in between."""
        self.gate.hold()

    def allow_changes(self) -> None:
        self.gate.allow()

    async def changes_allowed(self) -> None:
        await self.gate.allowed()

    async def cut_everything(self) -> None:
        """At unmount: a version of every file with unrecorded changes, then wait for them."""
        await self.changes.cut_everything()

    # -- helpers ---------------------------------------------------------------------------

    def _virtual(self, inode: int) -> bool:
        return self.vops is not None and self.vops.owns(inode)

    def _refuse_virtual(self, *inodes: int) -> None:
        """versions/ is read-only: any change there fails with EROFS."""
        if self.vops is not None:
            self.vops.refuse(*inodes)

    def _refuse_versions_name(self, parent: int, raw: bytes) -> None:
        if self.vops is not None and parent == pyfuse3.ROOT_INODE and raw == VERSIONS_NAME.encode():
            raise pyfuse3.FUSEError(errno.EROFS)

    async def _new_name(self, parent: int, raw: bytes) -> str:
        """The path a change makes or removes at ``raw`` in ``parent``, once it may go on:
        never in versions/ (EROFS), and only after a catch-up (``hold_changes``)."""
        self._refuse_virtual(parent)
        self._refuse_versions_name(parent, raw)
        self.changes.changing()
        await self.changes_allowed()
        with fuse_errors():
            return self._child(parent, raw)

    def _made(self, path: str, ctx: pyfuse3.RequestContext) -> os.stat_result:
        """A new entry at ``path``: given to the user who made it (as root), and its stat."""
        if self.i_am_root:  # as a normal folder does
            self.source.give_to(path, ctx.uid, ctx.gid)
        return self.source.stat(path)

    def _path(self, inode: int) -> str:
        entry = self.inodes.get(inode)
        if entry is None or not entry.paths:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return min(entry.paths)

    def _child(self, parent: int, raw: bytes) -> str:
        base = self._path(parent)
        name = checked_name(raw)
        return f"{base}/{name}" if base else name

    def _inode_of(self, st: os.stat_result) -> int:
        return self._fuse_ino(st.st_ino)

    def _fuse_ino(self, st_ino: int) -> InodeT:
        return InodeT(pyfuse3.ROOT_INODE if st_ino == self.root_ino else st_ino)

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        return entry_attributes(st, self._fuse_ino(st.st_ino))

    def _remember(
        self, path: str, st: os.stat_result, count_lookup: bool = True
    ) -> pyfuse3.EntryAttributes:
        ino = self._fuse_ino(st.st_ino)
        entry = self.inodes.remember(ino, path)
        if count_lookup:
            entry.lookups += 1
        return self._attrs(st)

    # -- lookups and attributes ------------------------------------------------------------

    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if self.vops is not None:
            if self.vops.owns(parent_inode):
                return await self.vops.lookup(parent_inode, checked_name(name))
            if parent_inode == pyfuse3.ROOT_INODE and name == VERSIONS_NAME.encode():
                return self.vops.top_attrs()
        with fuse_errors():
            path = self._child(parent_inode, name)
            return self._remember(path, self.source.stat(path))

    async def forget(self, inode_list: list[tuple[InodeT, int]]) -> None:  # type: ignore[override]
        for inode, count in inode_list:
            if not self._virtual(inode) and inode != pyfuse3.ROOT_INODE:
                await self.changes.forgotten(inode, count)

    async def getattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.vops is not None and self.vops.owns(inode):
            return self.vops.getattr(inode)
        with fuse_errors():
            for handle in self.handles.values():
                if handle.inode == inode:  # an unlinked but open file still has attributes
                    return self._attrs(os.fstat(handle.fd))
            return self._attrs(self.source.stat(self._path(inode)))

    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._refuse_virtual(inode)
        self.changes.changing()
        await self.changes_allowed()
        with fuse_errors():
            if fields.update_size:
                await self._set_size(inode, fh, attr.st_size)
            if fh is not None:
                st = set_attributes(self.handles[fh].fd, attr, fields)
            else:
                with self.source.at(self._path(inode)) as (at, name):
                    st = set_attributes((at, name), attr, fields)
        changed_attrs = fields.update_mode or fields.update_atime or fields.update_mtime
        if changed_attrs and not self.changes.is_dirty(inode):
            # A dirty file's next version carries its new mode and times anyway.
            with fuse_errors():
                self.tree.attributes_changed(inode, st)
        return self._attrs(st)

    async def _set_size(self, inode: int, fh: int | None, size: int) -> None:
        entry = self.inodes[inode]
        if fh is not None:
            await self.changes.truncate(inode, self.handles[fh].fd, size)
        else:
            fd = self.source.open(self._path(inode), os.O_WRONLY)
            try:
                await self.changes.truncate(inode, fd, size)
            finally:
                os.close(fd)
        if entry.open_handles == 0:
            await self.changes.cut(inode)

    async def readlink(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileNameT:
        if self.vops is not None and self.vops.owns(inode):
            return self.vops.readlink(inode)
        with fuse_errors():
            return FileNameT(os.fsencode(self.source.readlink(self._path(inode))))

    async def access(self, inode: InodeT, mode: ModeT, ctx: pyfuse3.RequestContext) -> bool:
        return True  # mounted with default_permissions: the kernel checks modes

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        with fuse_errors():
            st = os.statvfs(self.source.fd)
        return statfs_data(st)

    # -- directories -----------------------------------------------------------------------

    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        if self.vops is not None and self.vops.owns(inode):
            return self.vops.opendir(inode)
        with fuse_errors():
            self._path(inode)
        return FileHandleT(inode)

    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if self.vops is not None and self.vops.owns(fh):
            return await self.vops.readdir(fh, start_id, token)
        offset = 0
        if self.vops is not None and fh == pyfuse3.ROOT_INODE:
            offset = 1  # versions/ comes first in the top folder
            if start_id == 0:
                attrs = self.vops.top_attrs()
                if not pyfuse3.readdir_reply(token, FileNameT(VERSIONS_NAME.encode()), attrs, 1):
                    return
                start_id = 1
            start_id -= 1
        with fuse_errors():
            base = self._path(fh)
            names = self.source.names(base)
        # Cookies are positions in the sorted listing (+1: 0 means "from the start").
        for index in range(start_id, len(names)):
            name = names[index]
            if offset and name == VERSIONS_NAME:
                continue  # a real entry of that name is hidden behind versions/
            path = f"{base}/{name}" if base else name
            try:
                st = self.source.stat(path)
            except OSError:
                continue  # removed meanwhile
            if not pyfuse3.readdir_reply(
                token, FileNameT(os.fsencode(name)), self._remember(path, st), index + 1 + offset
            ):
                # Not sent: undo the lookup count readdir_reply would have implied.
                self.inodes[self._fuse_ino(st.st_ino)].lookups -= 1
                return

    async def releasedir(self, fh: FileHandleT) -> None:
        return None

    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        if self._virtual(fh):
            return
        with fuse_errors():
            self.source.sync_folder(self._path(fh))

    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = await self._new_name(parent_inode, name)
        with fuse_errors():
            with self.source.at(path) as (fd, leaf):
                os.mkdir(leaf, mode & ~ctx.umask, dir_fd=fd)
            st = self._made(path, ctx)
            self.tree.made(path, st)
        return self._remember(path, st)

    async def rmdir(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._remove(parent_inode, name, os.rmdir)

    async def unlink(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self._remove(parent_inode, name, os.unlink)

    async def _remove(self, parent_inode: int, name: bytes, remove: Callable[..., None]) -> None:
        path = await self._new_name(parent_inode, name)
        await self.tree.cut_pending(path)  # what was written last is versioned under its name
        with fuse_errors():
            with self.source.at(path) as (fd, leaf):
                remove(leaf, dir_fd=fd)
            self.inodes.forget_path(path)
        self.tree.removed(path)

    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._refuse_virtual(parent_inode_old, parent_inode_new)
        self._refuse_versions_name(parent_inode_old, name_old)
        self._refuse_versions_name(parent_inode_new, name_new)
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE/NOREPLACE: not offered
        self.changes.changing()
        await self.changes_allowed()
        with fuse_errors():
            old = self._child(parent_inode_old, name_old)
            new = self._child(parent_inode_new, name_new)
        await self.tree.cut_pending(old)
        await self.tree.cut_pending(new)
        with fuse_errors():
            with (
                self.source.at(old) as (old_fd, old_leaf),
                self.source.at(new) as (new_fd, new_leaf),
            ):
                os.rename(old_leaf, new_leaf, src_dir_fd=old_fd, dst_dir_fd=new_fd)
            self.inodes.moved(old, new)  # what was at ``new`` is forgotten
            await self.tree.renamed(old, new)

    async def link(
        self,
        inode: InodeT,
        new_parent_inode: InodeT,
        new_name: FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._refuse_virtual(inode)
        new = await self._new_name(new_parent_inode, new_name)
        with fuse_errors():
            existing = self._path(inode)
            with (
                self.source.at(existing) as (old_fd, old_leaf),
                self.source.at(new) as (new_fd, new_leaf),
            ):
                os.link(
                    old_leaf, new_leaf, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False
                )
            attrs = self._remember(new, self.source.stat(new))
            await self.tree.linked(existing, new)
        return attrs

    async def symlink(
        self, parent_inode: InodeT, name: FileNameT, target: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = await self._new_name(parent_inode, name)
        with fuse_errors():
            with self.source.at(path) as (fd, leaf):
                os.symlink(os.fsdecode(target), leaf, dir_fd=fd)
            st = self._made(path, ctx)
            self.tree.made(path, st, os.fsdecode(target))
        return self._remember(path, st)

    async def mknod(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = await self._new_name(parent_inode, name)
        with fuse_errors():
            with self.source.at(path) as (fd, leaf):
                os.mknod(leaf, mode & ~ctx.umask, rdev, dir_fd=fd)
            return self._remember(path, self._made(path, ctx))

    # -- files -----------------------------------------------------------------------------

    def _register(self, fd: int, inode: int, flags: int) -> pyfuse3.FileInfo:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        self.handles[fd] = Handle(fd, inode, writable)
        self.inodes.ensure(inode).open_handles += 1
        direct = self.direct_writes and (flags & os.O_ACCMODE) == os.O_WRONLY
        return pyfuse3.FileInfo(fh=FileHandleT(fd), direct_io=direct)

    async def open(
        self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if self.vops is not None and self.vops.owns(inode):
            return self.vops.open(inode, flags)
        # O_APPEND would let the kernel pick offsets we do not see; writes come with them.
        # O_TRUNC is done here, after a cut still reading the file kept its bytes aside.
        if flags & os.O_TRUNC or (flags & os.O_ACCMODE) != os.O_RDONLY:
            await self.changes_allowed()
        with fuse_errors():
            fd = self.source.open(
                self._path(inode),
                (flags & ~os.O_APPEND & ~os.O_CREAT & ~os.O_EXCL & ~os.O_TRUNC) | os.O_NOFOLLOW,
            )
        handle = self._register(fd, inode, flags)
        if flags & os.O_TRUNC:
            with fuse_errors():
                await self.changes.truncate(inode, fd, 0)
        return handle

    async def create(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: ModeT,
        flags: FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = await self._new_name(parent_inode, name)
        with fuse_errors():
            fd = self.source.open(
                path,
                (flags & ~os.O_APPEND & ~os.O_TRUNC) | os.O_CREAT | os.O_NOFOLLOW,
                mode & ~ctx.umask,
            )
            if self.i_am_root:  # given to the user who made it, through the new descriptor
                os.fchown(fd, ctx.uid, ctx.gid)
            attrs = self._remember(path, os.fstat(fd))
            handle = self._register(fd, attrs.st_ino, flags)
        with fuse_errors():
            if attrs.st_size == 0:  # a new file (the usual case): its empty version is due
                self.changes.created(attrs.st_ino)
            elif flags & os.O_TRUNC:  # it existed after all: truncated as a write would be
                await self.changes.truncate(attrs.st_ino, fd, 0)
                attrs = self._attrs(os.fstat(fd))
        return handle, attrs

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        virtual = self.vops.handle(fh) if self.vops is not None else None
        if virtual is not None and self.vops is not None:
            with fuse_errors():
                return await self.vops.read(virtual, off, size)
        with fuse_errors():
            return os.pread(fh, size, off)

    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        entry = self.inodes[handle.inode]
        await self.changes.wait_for_room(handle.inode)
        with fuse_errors():
            async with entry.lock:  # a cut reading this file holds the lock between batches
                handle.check()
                self.changes.before_write(handle.inode, off, len(buf))
                written = os.pwrite(fh, buf, off)
                self.changes.wrote(handle.inode, off, written)
                handle.wrote = True
                return written

    async def flush(self, fh: FileHandleT) -> None:
        # close() waits for flush (release comes later, asynchronously): cutting here means a
        # file is recorded by the time the program that wrote it has closed it.
        handle = self.handles.get(fh)
        # A handle that wrote nothing (a shell's `> file` closes a duplicate before writing)
        # leaves its file to the release: an empty first version would be noise.
        if handle is not None and handle.writable and handle.wrote:
            await self.changes.cut(handle.inode, fh)

    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        if self._virtual(fh):
            return  # versions/ holds nothing to flush
        handle = self.handles[fh]
        with fuse_errors():
            handle.check()
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fh)
        job = await self.changes.cut(handle.inode, fh, defer=False)
        if job is not None and self.capture is not None:
            # Asked for durability: the version is durable (outbox and catalog) on return too.
            # (A debounced cut is not waited for: SOURCE itself is durable, and a crash before
            # its version is cut is caught up at the next mount.)
            await self.capture.committed(job)

    async def release(self, fh: FileHandleT) -> None:
        if self.vops is not None and self.vops.owns(fh):
            self.vops.release(fh)
            return
        handle = self.handles.pop(fh)
        entry = self.inodes.get(handle.inode)
        try:
            if entry is not None:
                entry.open_handles -= 1
                if entry.open_handles == 0:
                    await self.changes.cut(handle.inode, fh)
        finally:
            with fuse_errors():
                os.close(fh)

    # -- extended attributes ---------------------------------------------------------------

    async def getxattr(self, inode: InodeT, name: XAttrNameT, ctx: pyfuse3.RequestContext) -> bytes:
        if self.vops is not None and self.vops.owns(inode):
            return self.vops.getxattr(inode, name)
        with fuse_errors():
            with self.source.xattr_path(self._path(inode)) as where:
                found: bytes = os.getxattr(where, os.fsdecode(name), follow_symlinks=False)
            return found

    async def setxattr(
        self, inode: InodeT, name: XAttrNameT, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._refuse_virtual(inode)
        self.changes.changing()
        await self.changes_allowed()
        with fuse_errors(), self.source.xattr_path(self._path(inode)) as where:
            os.setxattr(where, os.fsdecode(name), value, follow_symlinks=False)
        await self._xattrs_changed(inode)

    async def _xattrs_changed(self, inode: int) -> None:
        """The kernel forgets the entry's attributes (setting ``system.posix_acl_access``
        changes the mode beneath it: ``cp -a`` copies modes that way); the history notes them."""
        with contextlib.suppress(OSError):  # ENOENT: the kernel does not hold the inode
            pyfuse3.invalidate_inode(InodeT(inode), attr_only=True)
        with fuse_errors():
            self.tree.xattrs_changed(inode, self._path(inode))

    async def listxattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> list[XAttrNameT]:
        if self.vops is not None and self.vops.owns(inode):
            return self.vops.listxattr(inode)
        with fuse_errors(), self.source.xattr_path(self._path(inode)) as where:
            return [XAttrNameT(os.fsencode(n)) for n in os.listxattr(where, follow_symlinks=False)]

    async def removexattr(
        self, inode: InodeT, name: XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._refuse_virtual(inode)
        self.changes.changing()
        await self.changes_allowed()
        with fuse_errors(), self.source.xattr_path(self._path(inode)) as where:
            os.removexattr(where, os.fsdecode(name), follow_symlinks=False)
        await self._xattrs_changed(inode)
