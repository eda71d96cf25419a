"""The read-only ``versions/`` folder: every snapshot of the mounted tree, as plain files.

``versions/<UTC time>/…`` is the tree as of that snapshot (``latest`` is the newest), with the
sizes, modes and times of then; bursts older than an hour are listed as their last snapshot
of each minute (``shown_snapshots``). Nothing is materialised: a folder is listed by one indexed
query of the catalog's tree history, and a file's bytes come chunk by chunk from ``read_chunk``
(the current SOURCE file when the chunk is unchanged, else the outbox, else the peers). A
sequential reader gets the next chunks fetched ahead, in batches, several at once; recently
read chunks stay in a bounded cache.
"""

from __future__ import annotations

import datetime
import errno
import stat
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pyfuse3
import trio
from pyfuse3 import FileNameT, InodeT, ModeT

from chunkstore.catalog import FileVersion
from chunkstore.catalogbase import TREE_DIR, TREE_FILE, TREE_SYMLINK
from chunkstore.catalogdb import CatalogDB, TreeEvent
from chunkstore.chunking import CHUNK_SIZE

VIRTUAL_BASE = 1 << 62  # virtual inode numbers start here; real ones stay below
LATEST = "latest"
VERSIONS_NAME = "versions"
CACHE_CHUNKS = 512  # about 32 MB of recently read chunks (more than the read-ahead)

# Reads chunks ``nos`` of a version (from SOURCE, the outbox or the peers), verified.
ReadChunks = Callable[[FileVersion, list[int]], Awaitable[list[bytes]]]
READ_AHEAD = 256  # chunks (about 16 MB) fetched ahead of a sequential reader
VERSION_CACHE = 64  # versions of recently read files (a big file's list of chunks is long)
LISTING_CACHE = 32  # folders of snapshots recently listed
FETCH_BATCH = 64  # chunks per request to the daemon (about 4 MB)


@dataclass(frozen=True, slots=True)
class Node:
    """A virtual entry: the versions folder, a snapshot folder, or something inside one."""

    seq: int  # 0 for the versions folder itself
    path: str  # relative to the snapshot root; '' for its top
    kind: int
    event: TreeEvent | None = None


# A busy hour (a `git clone`, a build) makes many snapshots a few seconds apart. In the listing
# of versions/, snapshots older than GROUP_AFTER show one per GROUP_EVERY: the last of it, the
# state the burst ended in. The others are still there by name (and in `lanvault snapshots`);
# retention is what removes snapshots, not this.
GROUP_AFTER_NS = 3600 * 10**9
GROUP_EVERY_NS = 60 * 10**9


def shown_snapshots(
    named: dict[str, tuple[int, int]],
    now_ns: int,
    after_ns: int = GROUP_AFTER_NS,
    every_ns: int = GROUP_EVERY_NS,
) -> list[tuple[str, tuple[int, int]]]:
    """The snapshots a listing of versions/ shows, by name: every one younger than
    ``after_ns`` (and ``latest``); of the older ones, the last of each ``every_ns``."""
    last_of: dict[int, tuple[str, tuple[int, int]]] = {}
    shown: list[tuple[str, tuple[int, int]]] = []
    for name, (seq, time_ns) in named.items():
        if name == LATEST or now_ns - time_ns < after_ns:
            shown.append((name, (seq, time_ns)))
            continue
        slot = time_ns // every_ns
        kept = last_of.get(slot)
        if kept is None or (time_ns, seq) > (kept[1][1], kept[1][0]):
            last_of[slot] = (name, (seq, time_ns))
    return sorted(shown + list(last_of.values()))


def snapshot_name(time_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(time_ns / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VersionsView:
    def __init__(
        self,
        catalog: CatalogDB,
        root: str,
        read_chunks: ReadChunks,
        owner_uid: int,
        owner_gid: int,
    ) -> None:
        self.catalog = catalog
        self.root = root
        self.read_chunks = read_chunks
        self.uid = owner_uid
        self.gid = owner_gid
        self._by_key: dict[tuple[int, str | tuple[int, int, int]], int] = {}
        self._nodes: dict[int, Node] = {}
        self._next = VIRTUAL_BASE + 1
        self.top = self._inode(Node(0, "", TREE_DIR))
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._versions: OrderedDict[bytes, FileVersion] = OrderedDict()
        self._listings: OrderedDict[int, list[tuple[str, int]]] = OrderedDict()
        self._named: tuple[tuple[int, int], dict[str, tuple[int, int]]] | None = None
        self._info: dict[bytes, tuple[int, int, int]] = {}  # fileId -> (size, link, mtime)
        self._nlinks: dict[tuple[int, int, int, int], int] = {}  # names of one file, per snapshot
        self._fetching: dict[bytes, trio.Event] = {}
        self._failed: dict[bytes, BaseException] = {}
        self._next_expected: dict[int, int] = {}  # inode -> chunk a sequential reader reads next
        self._nursery: trio.Nursery | None = None
        self.fetches = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Holds the nursery of read-ahead fetches; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @staticmethod
    def is_virtual(inode: int) -> bool:
        return inode >= VIRTUAL_BASE

    def _inode(self, node: Node) -> int:
        key: tuple[int, str | tuple[int, int, int]] = (node.seq, node.path)
        link = self._link_of(node)
        if link is not None:  # the names of one file (hard links) are one inode
            key = (node.seq, link)
        found = self._by_key.get(key)
        if found is None:
            found = self._next
            self._next += 1
            self._by_key[key] = found
        self._nodes[found] = node
        return found

    def _link_of(self, node: Node) -> tuple[int, int, int] | None:
        """(link key, size, mtime) that the names of one file share, for a file read with
        its link key known."""
        if node.kind != TREE_FILE or node.event is None:
            return None
        size, link, mtime_ns = self._info_of(node.event.file_id)
        return (link, size, mtime_ns) if link else None

    def xattrs(self, inode: int) -> tuple[tuple[str, bytes], ...]:
        node = self.node(inode)
        return node.event.xattrs if node.path and node.event is not None else ()

    def _nlink(self, node: Node) -> int:
        link = self._link_of(node)
        if link is None:
            return 1
        count = self._nlinks.get((node.seq, *link))
        if count is None:
            count = max(1, len(self.catalog.tree_links(self.root, node.seq, *link)))
            self._nlinks[(node.seq, *link)] = count
        return count

    def node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    # -- snapshots -------------------------------------------------------------------------

    def _snapshots(self) -> dict[str, tuple[int, int]]:
        """Every snapshot by name: (seq, time). Read again only when the history changed (a
        commit adds one, a prune removes some): ``ls -l versions/`` with thousands of them
        asks this once per entry."""
        mark = self.catalog.snapshot_mark(self.root)
        if self._named is not None and self._named[0] == mark:
            return self._named[1]
        named: dict[str, tuple[int, int]] = {}
        rows = self.catalog.snapshots(self.root)
        for seq, _root, time_ns in rows:
            name = snapshot_name(time_ns)
            if name in named:
                name = f"{name}~{seq}"
            named[name] = (seq, time_ns)
        if rows:
            named[LATEST] = (rows[-1][0], rows[-1][2])
        self._named = (mark, named)
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
            size, _link, _mtime = self._info_of(event.file_id)
            # The entry's mode: a chmod after the content was saved is recorded there.
            entry.st_mode = ModeT(stat.S_IFREG | (stat.S_IMODE(event.mode) & 0o555))
            entry.st_size = size
            entry.st_blocks = (size + 511) // 512
        entry.st_nlink = self._nlink(node)
        entry.st_mtime_ns = entry.st_ctime_ns = entry.st_atime_ns = event.mtime_ns
        return entry

    # -- lookups and listings --------------------------------------------------------------

    def lookup(self, parent: int, name: str) -> int:
        node = self.node(parent)
        if node.seq == 0:
            found = self._snapshots().get(name)
            if found is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._snapshot_inode(name, *found)
        if node.kind != TREE_DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        event = self.catalog.tree_entry(self.root, node.path, name, node.seq)
        if event is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        path = f"{node.path}/{name}" if node.path else name
        return self._inode(Node(node.seq, path, event.kind, event))

    def _snapshot_inode(self, name: str, seq: int, time_ns: int) -> int:
        event = TreeEvent("", name, TREE_DIR, mode=0o555, mtime_ns=time_ns)
        return self._inode(Node(seq, "", TREE_DIR, event))

    def listing(self, inode: int) -> list[tuple[str, int]]:
        node = self.node(inode)
        if node.seq == 0:  # the names read once, not once per name
            named = shown_snapshots(self._snapshots(), time.time_ns())
            return [(name, self._snapshot_inode(name, seq, t)) for name, (seq, t) in named]
        if node.kind != TREE_DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        cached = self._listings.get(inode)
        if cached is not None:  # a snapshot never changes: readdir comes back in pieces
            self._listings.move_to_end(inode)
            return cached
        out = []
        children = self.catalog.tree_children(self.root, node.path, node.seq)
        files = [e.file_id for e in children if e.kind == TREE_FILE]
        if files:
            self._info.update(self.catalog.version_sizes(files))
        for event in children:
            path = f"{node.path}/{event.name}" if node.path else event.name
            out.append((event.name, self._inode(Node(node.seq, path, event.kind, event))))
        self._listings[inode] = out
        while len(self._listings) > LISTING_CACHE:
            self._listings.popitem(last=False)
        return out

    def _info_of(self, file_id: bytes) -> tuple[int, int, int]:
        """(size, link key, mtime) of a file's version (a version never changes)."""
        info = self._info.get(file_id)
        if info is None:
            version = self._version_of(file_id)
            info = self._info[file_id] = (version.size, version.link, version.mtime_ns)
        return info

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
        return self._version_of(node.event.file_id)

    def _version_of(self, file_id: bytes) -> FileVersion:
        version = self._versions.get(file_id)
        if version is None:
            version = self.catalog.version_by_id(file_id)
            if version is None:
                raise pyfuse3.FUSEError(errno.EIO)
            self._versions[file_id] = version  # a version never changes
            while len(self._versions) > VERSION_CACHE:
                self._versions.popitem(last=False)
        else:
            self._versions.move_to_end(file_id)
        return version

    async def read(self, inode: int, offset: int, size: int) -> bytes:
        version = self.version(inode)
        end = min(version.size, offset + size)
        if offset >= end:
            return b""
        first, last = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        sequential = self._next_expected.get(inode) in (first, first + 1) or first == 0
        self._next_expected[inode] = last + 1 if end % CHUNK_SIZE == 0 else last
        wanted = list(range(first, last + 1))
        if sequential and self._nursery is not None:
            stop = min(len(version.chunks), last + 1 + READ_AHEAD)
            ahead = [n for n in range(last + 1, stop) if not self._known(version, n)]
            # Top the window up in whole batches: a chunk or two per request (a 128 KiB
            # read's worth) would cost a daemon round trip and a peer request each.
            if stop < len(version.chunks):
                ahead = ahead[: len(ahead) - len(ahead) % FETCH_BATCH]
            self._start_fetch(version, ahead)
        self._start_fetch(version, [n for n in wanted if not self._known(version, n)], now=True)
        parts = []
        for no in wanted:
            data = await self._wait_chunk(version, no)
            start = max(offset, no * CHUNK_SIZE) - no * CHUNK_SIZE
            stop = min(end, (no + 1) * CHUNK_SIZE) - no * CHUNK_SIZE
            parts.append(data[start:stop])
        return b"".join(parts)

    def _known(self, version: FileVersion, no: int) -> bool:
        address = version.chunks[no]
        return address in self._cache or address in self._fetching

    def _start_fetch(self, version: FileVersion, nos: list[int], now: bool = False) -> None:
        """Fetch chunks ``nos`` in batches, in the background (read-ahead) or for a reader."""
        nos = [n for n in dict.fromkeys(nos) if version.chunks[n] not in self._fetching]
        for i in range(0, len(nos), FETCH_BATCH):
            batch = nos[i : i + FETCH_BATCH]
            for no in batch:
                self._fetching[version.chunks[no]] = trio.Event()
            if self._nursery is not None:
                self._nursery.start_soon(self._fetch, version, batch)
            elif now:
                raise RuntimeError("VersionsView.run is not running")

    async def _fetch(self, version: FileVersion, nos: list[int]) -> None:
        addresses = [version.chunks[n] for n in nos]
        try:
            self.fetches += 1
            chunks = await self.read_chunks(version, nos)
            for address, data in zip(addresses, chunks, strict=True):
                self._failed.pop(address, None)
                self._cache[address] = data
                self._cache.move_to_end(address)
            while len(self._cache) > CACHE_CHUNKS:
                self._cache.popitem(last=False)
        except Exception as exc:
            for address in addresses:
                self._failed[address] = exc
        finally:
            for address in addresses:
                event = self._fetching.pop(address, None)
                if event is not None:
                    event.set()

    async def _wait_chunk(self, version: FileVersion, no: int) -> bytes:
        address = version.chunks[no]
        for _attempt in range(3):
            cached = self._cache.get(address)
            if cached is not None:
                self._cache.move_to_end(address)
                return cached
            event = self._fetching.get(address)
            if event is None:
                failed = self._failed.pop(address, None)
                if failed is not None:
                    raise OSError(errno.EIO, f"cannot read a chunk of {version.path}: {failed}")
                self._start_fetch(version, [no], now=True)
                event = self._fetching[address]
            await event.wait()
        failed = self._failed.pop(address, None)
        raise OSError(errno.EIO, f"cannot read a chunk of {version.path}: {failed or 'evicted'}")
