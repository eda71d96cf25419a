"""What a backup reads from this computer, with no trio: the scan of a tree, its files in
groups, small files read whole and checked unchanged, folders' metadata, big files in batches."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from chunkstore.catalog import Xattrs, is_own_temp, read_xattrs
from chunkstore.chunking import CHUNK_SIZE, chunk_count
from chunkstore.exclusions import CACHEDIR_TAG, Exclusions, is_cache_folder
from chunkstore.keys import KeyRing
from chunkstore.pipeline import chunk_addresses
from chunkstore.shares import describe

from .messages import MAX_BATCH
from .report import BackupError

# Chunks per worker-thread hop in a backup; spread over the holders, each gets ~MAX_BATCH.
READ_BATCH = 4 * MAX_BATCH
SMALL_FILE = 2 * CHUNK_SIZE  # files up to this size are backed up in groups ...
GROUP_FILES = 1024  # ... of up to this many: one read, one send per holder, one commit ...
GROUP_BYTES = 16 * 1024 * 1024  # ... and this many bytes of them read at once,
SEAL_BYTES = 4 * 1024 * 1024  # a group's chunks sealed per worker-thread hop, then sent together


@dataclass(slots=True)
class Scan:
    files: list[str]  # regular files, sorted
    total: int  # their size in bytes
    skipped: list[str]  # sockets, FIFOs, devices: nothing to keep of them
    unlisted: list[str]  # folders that could not be read, with the reason
    links: list[str] = field(default_factory=list)  # symlinks (kept as links, never followed)
    folders: list[str] = field(default_factory=list)  # the root and every folder below, sorted
    stats: dict[str, os.stat_result] = field(default_factory=dict)  # files' lstat, as listed


def scan(root: str, exclusions: Exclusions | None = None) -> Scan:
    """What a backup of ``root`` (a regular file or a folder) reads, and what it leaves: one
    ``lstat`` per entry (a file's is the backup's view of it, checked again when it is read).
    ``exclusions`` leave entries out (``exclusions.py``; never ``root`` itself, which was
    named): they are not in the scan at all, as if they were not there."""
    if os.path.islink(root):
        return Scan([], 0, [], [], links=[root])
    if not os.path.isdir(root):
        if os.path.isfile(root):
            st = os.lstat(root)
            return Scan([root], st.st_size, [], [], stats={root: st})
        raise BackupError(f"{root}: not a regular file, folder or symlink")
    found: list[str] = []
    skipped: list[str] = []
    unlisted: list[str] = []
    links: list[str] = []
    folders = [root]
    stats: dict[str, os.stat_result] = {}
    pending = [root]
    rules = exclusions or Exclusions()
    root_dev = os.lstat(root).st_dev
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as exc:
            unlisted.append(f"{folder}: cannot be read ({exc.strerror or exc})")
            continue
        for entry in entries:
            if rules and rules.excludes(entry.path):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # gone since it was listed, or not searchable: its own backup
                if not is_own_temp(entry.name):  # says why, by name, and the rest goes on
                    found.append(entry.path)
                continue
            if stat.S_ISDIR(st.st_mode):
                folders.append(entry.path)
                if not rules or rules.keeps_contents(entry.path, st, root_dev):
                    pending.append(entry.path)
                elif rules.exclude_caches and is_cache_folder(entry.path):
                    tag = os.path.join(entry.path, CACHEDIR_TAG)  # kept: it says why
                    if os.path.isfile(tag) and not os.path.islink(tag):
                        found.append(tag)
                        stats[tag] = os.lstat(tag)
            elif is_own_temp(entry.name):
                continue  # a restore's file still on its way: not the user's
            elif stat.S_ISLNK(st.st_mode):  # a symlink to a folder too: kept, never followed
                links.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                found.append(entry.path)
                stats[entry.path] = st
            else:
                skipped.append(entry.path)
    files = sorted(found)
    total = sum(st.st_size for st in stats.values())
    return Scan(
        files, total, sorted(skipped), unlisted, sorted(links), sorted(folders), stats=stats
    )


def groups(files: list[str], stats: dict[str, os.stat_result]) -> Iterator[list[str]]:
    """``files`` in groups of up to GROUP_FILES files and GROUP_BYTES of small files' bytes
    (what a group holds in memory at once; a bigger file is read in batches of its own)."""
    group: list[str] = []
    size = 0
    for path in files:
        st = stats.get(path)
        small = min(st.st_size, SMALL_FILE) if st is not None else 0
        if group and (len(group) >= GROUP_FILES or size + small > GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(path)
        size += small
    if group:
        yield group


def runs(sizes: list[int], budget: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` runs of consecutive items of at most ``budget`` bytes (at least one)."""
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if index > start and used + size > budget:
            yield start, index
            start, used = index, 0
        used += size
    if start < len(sizes):
        yield start, len(sizes)


def read_and_address(
    keys: KeyRing, path: str, first_no: int, count: int
) -> tuple[list[bytes], list[bytes]]:
    plaintexts = read_batch(path, first_no, count)
    return plaintexts, chunk_addresses(keys, plaintexts)


SmallRead = tuple[list[bytes], list[bytes], Xattrs]


def read_small(keys: KeyRing, path: str, before: os.stat_result) -> SmallRead | None:
    """A small file's chunks, their addresses and its extended attributes, read whole; None if
    it is not the file ``before`` describes any more or changed while it was read (the caller
    reads it again)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        data = os.pread(fd, before.st_size + 1, 0)
        xattrs = read_xattrs(fd)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    # The file read is the one listed, unchanged since: same inode, size and times once read
    # (the ctime moves with every write, truncate, chmod or xattr change, and cannot be set).
    if len(data) != before.st_size or (
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    ) != (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns):
        return None
    chunks = [data[no * CHUNK_SIZE : (no + 1) * CHUNK_SIZE] for no in range(chunk_count(len(data)))]
    return chunks, chunk_addresses(keys, chunks), xattrs


def read_smalls(
    keys: KeyRing, files: list[tuple[str, os.stat_result]]
) -> list[SmallRead | OSError | None]:
    """``read_small`` of each file; the error in place of a file that could not be read."""
    out: list[SmallRead | OSError | None] = []
    for path, before in files:
        try:
            out.append(read_small(keys, path, before))
        except OSError as exc:
            out.append(exc)
    return out


def read_folders(
    paths: list[str],
) -> list[tuple[os.stat_result, Xattrs] | OSError | None]:
    """Each folder's ``lstat`` and extended attributes; None for one that is not a folder any
    more or changed while read, the error for one that cannot be read."""
    out: list[tuple[os.stat_result, Xattrs] | OSError | None] = []
    for path in paths:
        try:
            before = os.lstat(path)
            xattrs = read_xattrs(path)
            after = os.lstat(path)
        except OSError as exc:
            out.append(exc)
            continue
        same = (before.st_ino, before.st_mtime_ns, before.st_ctime_ns) == (
            after.st_ino,
            after.st_mtime_ns,
            after.st_ctime_ns,
        )
        out.append((before, xattrs) if same and stat.S_ISDIR(before.st_mode) else None)
    return out


def pending_summary(
    pending: dict[str, str], files: list[str], entries: list[str], degree: int
) -> str:
    """What a backup left pending: '2 of 5 files and 1 of 3 symlinks and folders recorded,
    not yet at degree 2' (or 'at code 2-of-4')."""
    paths = set(pending)
    in_files = len(paths & set(files))
    parts = []
    if in_files:
        parts.append(f"{in_files} of {len(files)} file{'' if len(files) == 1 else 's'}")
    if len(paths) > in_files:
        parts.append(f"{len(paths) - in_files} of {len(entries)} symlinks and folders")
    return f"{' and '.join(parts)} recorded, not yet at {describe(degree)}"


def read_batch(path: str, first_no: int, count: int) -> list[bytes]:
    with open(path, "rb") as handle:
        handle.seek(first_no * CHUNK_SIZE)
        return [handle.read(CHUNK_SIZE) for _ in range(count)]
