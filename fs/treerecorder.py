"""What the live folder's namespace changes record in the history, once the system call is done.

``PassthroughOps`` makes the call on SOURCE; this says it to the ``VersionCutter``: an entry
made, removed, renamed or linked, new attributes, each under the names the history records at
all (never lanvault's own temporary files, never what the mount leaves out). Something never
recorded that takes a recorded name is recorded there whole: a file cut from its first byte, a
folder by a catch-up of SOURCE, during which every change waits (``ChangeGate``), as at mount
time. No FUSE request handling here: the adapter calls these.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable

import trio

from chunkstore.catalog import Xattrs, is_own_temp
from chunkstore.chunking import CHUNK_SIZE

from .capture import VersionCutter
from .inodes import InodeTable
from .recorder import ChangeRecorder
from .source import Source


class ChangeGate:
    """Open unless a catch-up holds it: then every request that would change SOURCE (and
    versions/) waits, while lookups and reads are answered."""

    def __init__(self) -> None:
        self._open = trio.Event()
        self._open.set()

    def hold(self) -> None:
        self._open = trio.Event()

    def allow(self) -> None:
        self._open.set()

    async def allowed(self) -> None:
        if not self._open.is_set():  # once open, no extra checkpoint per request
            await self._open.wait()


class TreeRecorder:
    def __init__(
        self,
        capture: VersionCutter | None,
        source: Source,
        inodes: InodeTable,
        changes: ChangeRecorder,
        inode_of: Callable[[os.stat_result], int],
        gate: ChangeGate,
        rescan: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.capture = capture
        self.source = source
        self.inodes = inodes
        self.changes = changes
        self.inode_of = inode_of  # a stat result's FUSE inode number
        self.gate = gate
        self.rescan = rescan  # the catch-up: records everything new in SOURCE

    def ignored(self, path: str) -> bool:
        """Never recorded: lanvault's own temporary files, and what the mount leaves out."""
        return self.capture.ignores(path) if self.capture is not None else is_own_temp(path)

    def recorded(self, path: str) -> bool:
        return self.capture is not None and not self.ignored(path)

    def made(self, path: str, st: os.stat_result, target: str = "") -> None:
        """A folder, symlink or special file appeared at ``path``."""
        if self.capture is not None and self.recorded(path):
            if stat.S_ISDIR(st.st_mode):  # a default ACL gives it extended attributes
                self.capture.made(path, st, "", self.source.xattrs_of(path) or ())
            else:
                self.capture.made(path, st, target)

    def removed(self, path: str) -> None:
        if self.capture is not None and self.recorded(path):
            self.capture.removed(path)

    async def renamed(self, old: str, new: str) -> None:
        if self.capture is None:
            return
        if not self.ignored(old) and not self.ignored(new):
            self.capture.renamed(old, new)
        elif self.ignored(old) and not self.ignored(new):
            # A restored file (its first version, at its name), or something the mount left
            # out taking a name it records: recorded there, whole.
            await self.took_its_name(new)
        elif not self.ignored(old):
            self.capture.removed(old)  # gone from the user's tree (to a name we pass over)

    async def linked(self, existing: str, new: str) -> None:
        if self.capture is None or not self.recorded(new):
            return
        if self.ignored(existing):
            await self.took_its_name(new)
        else:
            self.capture.linked(existing, new)

    async def took_its_name(self, path: str) -> None:
        """Something never recorded became ``path``: record it there, whole."""
        st = self.source.stat(path)
        if not stat.S_ISREG(st.st_mode):
            if self.rescan is not None:  # other changes wait, as at mount time
                self.gate.hold()
                try:
                    await self.rescan()
                finally:
                    self.gate.allow()
            return
        inode = self.inode_of(st)
        self.changes.all_of(inode, st.st_size + CHUNK_SIZE)  # it may predate this mount
        await self.changes.cut(inode, debounce=False)

    async def cut_pending(self, path: str) -> None:
        """Cut now a debounced version of the file at ``path`` (before it moves or goes)."""
        try:
            st = self.source.stat(path)
        except OSError:
            return
        inode = self.inode_of(st)
        if stat.S_ISREG(st.st_mode) and self.changes.is_dirty(inode):
            await self.changes.cut(inode, debounce=False)

    def attributes_changed(
        self, inode: int, st: os.stat_result, xattrs: Xattrs | None = None
    ) -> None:
        """New attributes, under every name of ``inode`` that is recorded at all."""
        if self.capture is None:
            return
        for path in sorted(self.inodes[inode].paths):
            if not self.ignored(path):
                self.capture.attributes_changed(path, st, xattrs)

    def xattrs_changed(self, inode: int, path: str) -> None:
        """The extended attributes of ``inode`` (at ``path``) changed: recorded (a file's next
        version carries them too)."""
        if self.capture is None:
            return
        st = self.source.stat(path)
        xattrs = self.source.xattrs_of(path)  # the call itself succeeded: it is not failed now
        if xattrs is not None:
            self.attributes_changed(inode, st, xattrs)
