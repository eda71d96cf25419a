"""Catching up at mount time with what changed in SOURCE while it was not mounted.

A file is taken as unchanged when its size, mtime and ctime equal its last version's (ctime
moves on every write, chmod or rename, so equal values are conclusive). Anything else gets a new
version, re-read whole; its unchanged chunks keep their addresses and are not sent again.
Folders and symlinks missing from the last snapshot are added, and entries of the last
snapshot that are gone from SOURCE are recorded as removed.
"""

from __future__ import annotations

import logging
import os
import stat

import trio

from chunkstore.catalog import is_own_temp, read_xattrs
from chunkstore.catalogdb import TREE_DIR, TREE_SYMLINK
from chunkstore.chunking import CHUNK_SIZE

from .capture import VersionCutter
from .dirty import DirtyFile
from .versions import VERSIONS_NAME

log = logging.getLogger(__name__)


def _walk(root: str) -> list[tuple[str, os.stat_result]]:
    found: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        if not rel_dir and VERSIONS_NAME in dirnames:
            dirnames.remove(VERSIONS_NAME)  # hidden behind the versions/ view
        for name in dirnames + filenames:
            if is_own_temp(name):
                continue  # a restore's file still on its way: not the user's
            full = os.path.join(dirpath, name)
            try:
                found.append((f"{rel_dir}/{name}" if rel_dir else name, os.lstat(full)))
            except OSError:
                continue
    return found


async def catch_up(cutter: VersionCutter, real_root: str | None = None) -> int:
    """Record what changed in SOURCE since the last snapshot; returns the number of changes.

    ``real_root`` reaches the real files when SOURCE is also the mountpoint (e.g.
    ``/proc/self/fd/N`` of a descriptor opened before mounting). Returns once every change is
    committed.
    """
    root = cutter.source_root
    disk = real_root or root
    entries = await trio.to_thread.run_sync(_walk, disk)
    changes = 0
    present = {path for path, _ in entries}
    seq = await trio.to_thread.run_sync(cutter.latest_seq)
    for path, st in entries:
        if stat.S_ISREG(st.st_mode):
            latest = await trio.to_thread.run_sync(cutter.catalog.latest, cutter.catalog_path(path))
            if latest is not None and (latest.size, latest.mtime_ns, latest.ctime_ns) == (
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
            ):
                continue
            everything = DirtyFile()
            everything.write(0, max(st.st_size, 1) + CHUNK_SIZE)
            try:
                fd = os.open(os.path.join(disk, path), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                log.warning("cannot read %s: %s", path, exc)
                continue
            try:
                await cutter.cut(path, fd, everything)
            finally:
                os.close(fd)
            changes += 1
        elif stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            parent, _, name = path.rpartition("/")
            known = (
                await trio.to_thread.run_sync(cutter.catalog.tree_entry, root, parent, name, seq)
                if seq
                else None
            )
            full = os.path.join(disk, path)
            target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            kind = TREE_DIR if stat.S_ISDIR(st.st_mode) else TREE_SYMLINK
            try:
                xattrs = read_xattrs(full)
            except OSError as exc:
                log.warning("cannot read the extended attributes of %s: %s", path, exc)
                xattrs = known.xattrs if known is not None else ()
            if (
                known is None
                or known.kind != kind
                or known.target != target
                or known.mode != st.st_mode
                or known.xattrs != xattrs
            ):
                cutter.made(path, st, target, xattrs)
                changes += 1
    if seq:
        pending = [""]
        while pending:
            folder = pending.pop()
            for child in await trio.to_thread.run_sync(
                cutter.catalog.tree_children, root, folder, seq
            ):
                path = f"{folder}/{child.name}" if folder else child.name
                if path not in present:
                    cutter.removed(path)  # with everything under it
                    changes += 1
                elif child.kind == TREE_DIR:
                    pending.append(path)
    await cutter.barrier()
    if changes:
        log.info("caught up with %d changes made while %s was not mounted", changes, root)
    return changes
