"""The read-only ``versions/`` folder: every snapshot of the mounted tree, as plain files.

``versions/<UTC time>/…`` is the tree as of that snapshot (``latest`` is the newest), with the
sizes, modes and times of then. Nothing is materialised: a folder is listed by one indexed
query of the catalog's tree history, and a file's bytes come chunk by chunk from ``read_chunk``
(the current SOURCE file when the chunk is unchanged, else the outbox, else the peers).
"""

from __future__ import annotations

import datetime
import errno
import stat
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyfuse3
from pyfuse3 import FileNameT, InodeT, ModeT

from chunkstore.catalog import FileVersion
from chunkstore.catalogdb import TREE_DIR, TREE_FILE, TREE_SYMLINK, CatalogDB, TreeEvent
from chunkstore.chunking import CHUNK_SIZE

VIRTUAL_BASE = 1 << 62  # virtual inode numbers start here; real ones stay below
LATEST = "latest"
VERSIONS_NAME = "versions"
CACHE_CHUNKS = 64

ReadChunk = Callable[[FileVersion, int], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Node:
    """A virtual entry: the versions folder, a snapshot folder, or something inside one."""

    seq: int  # 0 for the versions folder itself
    path: str  # relative to the snapshot root; '' for its top
    kind: int
    event: TreeEvent | None = None


def snapshot_name(time_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VersionsView:
    def __init__(
        self, catalog: CatalogDB, root: str, read_chunk: ReadChunk, owner_uid: int, owner_gid: int
    ) -> None:
        self.catalog = catalog
        self.root = root
        self.read_chunk = read_chunk
        self.uid = owner_uid
        self.gid = owner_gid
        self._by_key: dict[tuple[int, str], int] = {}
        self._nodes: dict[int, Node] = {}
        self._next = VIRTUAL_BASE + 1
        self.top = self._inode(Node(0, "", TREE_DIR))
        self._cache: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()

    @staticmethod
    def is_virtual(inode: int) -> bool:
        return inode >= VIRTUAL_BASE

    def _inode(self, node: Node) -> int:
        key = (node.seq, node.path)
        found = self._by_key.get(key)
        if found is None:
            found = self._next
            self._next += 1
            self._by_key[key] = found
        self._nodes[found] = node
        return found

    def node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    # -- snapshots -------------------------------------------------------------------------

    def _snapshots(self) -> dict[str, tuple[int, int]]:
        named: dict[str, tuple[int, int]] = {}
        rows = self.catalog.snapshots(self.root)
        for seq, _root, time_ns in rows:
            name = snapshot_name(time_ns)
            if name in named:
                name = f"{name}~{seq}"
            named[name] = (seq, time_ns)
        if rows:
            named[LATEST] = (rows[-1][0], rows[-1][2])
        return named

    # -- attributes ------------------------------------------------------------------------

    def attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        node = self.node(inode)
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = InodeT(inode)
        # Inside a snapshot nothing changes: cache long. The snapshot names themselves (and
        # "latest", which moves) are looked up afresh every time.
        entry.entry_timeout = 60 if node.path else 0
        entry.attr_timeout = 60 if node.path else 0
        entry.st_uid, entry.st_gid = self.uid, self.gid
        entry.st_blksize = CHUNK_SIZE
        event = node.event
        if event is None or node.kind == TREE_DIR:
            entry.st_mode = ModeT(
                stat.S_IFDIR | (stat.S_IMODE(event.mode) if event else 0o555) & 0o555
            )
            entry.st_nlink = 2
            entry.st_mtime_ns = entry.st_ctime_ns = entry.st_atime_ns = (
                event.mtime_ns if event else 0
            )
            return entry
        if node.kind == TREE_SYMLINK:
            entry.st_mode = ModeT(stat.S_IFLNK | 0o777)
            entry.st_size = len(event.target.encode())
        else:
            version = self.catalog.version_by_id(event.file_id)
            if version is None:
                raise pyfuse3.FUSEError(errno.EIO)
            entry.st_mode = ModeT(stat.S_IFREG | (stat.S_IMODE(version.mode) & 0o555))
            entry.st_size = version.size
            entry.st_blocks = (version.size + 511) // 512
        entry.st_nlink = 1
        entry.st_mtime_ns = entry.st_ctime_ns = entry.st_atime_ns = event.mtime_ns
        return entry

    # -- lookups and listings --------------------------------------------------------------

    def lookup(self, parent: int, name: str) -> int:
        node = self.node(parent)
        if node.seq == 0:
            found = self._snapshots().get(name)
            if found is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            seq, time_ns = found
            return self._inode(
                Node(seq, "", TREE_DIR, TreeEvent("", name, TREE_DIR, mode=0o555, mtime_ns=time_ns))
            )
        if node.kind != TREE_DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        event = self.catalog.tree_entry(self.root, node.path, name, node.seq)
        if event is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        path = f"{node.path}/{name}" if node.path else name
        return self._inode(Node(node.seq, path, event.kind, event))

    def listing(self, inode: int) -> list[tuple[str, int]]:
        node = self.node(inode)
        if node.seq == 0:
            return [(name, self.lookup(inode, name)) for name in sorted(self._snapshots())]
        if node.kind != TREE_DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        out = []
        for event in self.catalog.tree_children(self.root, node.path, node.seq):
            path = f"{node.path}/{event.name}" if node.path else event.name
            out.append((event.name, self._inode(Node(node.seq, path, event.kind, event))))
        return out

    def readlink(self, inode: int) -> FileNameT:
        node = self.node(inode)
        if node.kind != TREE_SYMLINK or node.event is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return FileNameT(node.event.target.encode())

    # -- reading ---------------------------------------------------------------------------

    def version(self, inode: int) -> FileVersion:
        node = self.node(inode)
        if node.kind != TREE_FILE or node.event is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        version = self.catalog.version_by_id(node.event.file_id)
        if version is None:
            raise pyfuse3.FUSEError(errno.EIO)
        return version

    async def read(self, inode: int, offset: int, size: int) -> bytes:
        version = self.version(inode)
        end = min(version.size, offset + size)
        parts = []
        position = offset
        while position < end:
            no = position // CHUNK_SIZE
            data = await self._chunk(version, no)
            start = position - no * CHUNK_SIZE
            piece = data[start : start + (end - position)]
            if not piece:
                break
            parts.append(piece)
            position += len(piece)
        return b"".join(parts)

    async def _chunk(self, version: FileVersion, no: int) -> bytes:
        key = (version.chunks[no], no)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        data = await self.read_chunk(version, no)
        self._cache[key] = data
        if len(self._cache) > CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return data
