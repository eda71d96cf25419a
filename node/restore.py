"""Restores: what a path names at a moment (a mounted tree's snapshot, or the newest plain
backups below it), brought back below the folder the user chose.

Which files, folders and links come back, and in what order, is decided here; writing the files
is ``FileRestorer``'s, and where anything may be written is ``RestoreTarget``'s.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from chunkstore.catalog import FileVersion
from chunkstore.catalogbase import TREE_DIR, TREE_FILE, TREE_SYMLINK
from chunkstore.catalogdb import CatalogDB, TreeEvent

from .fetch import DbRunner, Fetcher
from .offload import in_thread
from .report import Progress, ProgressFn, RestoreError
from .restore_files import FileRestorer
from .restore_target import RestoreTarget, UnsafeDestination

log = logging.getLogger(__name__)


class Restorer:
    def __init__(
        self,
        catalog: CatalogDB,
        db: DbRunner,
        fetcher: Fetcher,
        files: FileRestorer,
        resume_dir: Path,
    ) -> None:
        self.catalog = catalog
        self._db = db
        self.fetcher = fetcher
        self.files = files
        self.resume_dir = resume_dir  # interrupted restores' records of their temporary files

    async def restore_path(
        self,
        path: Path,
        dest: Path | None,
        progress: ProgressFn | None = None,
        at_ns: int | None = None,
    ) -> Progress:
        """Restore the newest version (or the newest as of ``at_ns``) of a file or folder.

        Inside a mounted tree, the snapshot of that moment is restored whole: folders,
        symlinks and files with their modes and times. Elsewhere (``lanvault backup``), the
        newest version of each file as of that moment.
        """
        key = str(path)
        tree = await self._tree_for(key, at_ns)
        if tree is not None:
            return await self._restore_tree(key, tree[0], tree[1], dest, progress)
        if at_ns is None:
            versions = [v for v, _ in await self._db(self.catalog.latest_versions, key)]
        else:
            versions = await self._db(self.catalog.versions_at, key, at_ns)
        # Mounted trees below the path (e.g. `restore /` after a recovery) come back whole,
        # as trees; their files are not restored a second time from the plain versions.
        prefix = key.rstrip("/") + "/"
        trees = []
        for root in await self._db(self.catalog.roots):
            if root.startswith(prefix):
                if at_ns is None:
                    seq = await self._db(self.catalog.latest_seq, root)
                else:
                    seq = await self._db(self.catalog.snapshot_at, root, at_ns)
                if seq:
                    trees.append((root, seq))
        tree_prefixes = tuple(root.rstrip("/") + "/" for root, _seq in trees)
        versions = [v for v in versions if not v.path.startswith(tree_prefixes)]
        if not versions and not trees:
            first = None
            if at_ns is not None:
                first = await self._db(self.catalog.first_recorded_ns, key)
            if first is not None:  # everything kept is newer: say from when there is some
                raise RestoreError(
                    f"{path}: nothing was backed up under this path as early as"
                    f" {_local_time(at_ns)}; the oldest version kept is from {_local_time(first)}"
                )
            raise RestoreError(f"{path}: nothing backed up under this path")
        folders = sorted((v for v in versions if stat.S_ISDIR(v.mode)), key=lambda v: v.path)
        links = [v for v in versions if stat.S_ISLNK(v.mode)]
        versions = [v for v in versions if not stat.S_ISDIR(v.mode) and not stat.S_ISLNK(v.mode)]
        report = Progress(files_total=len(versions), bytes_total=sum(v.size for v in versions))
        for root, seq in trees:
            target_root = dest / root[len(prefix) :] if dest is not None else None
            done = await self._restore_tree(root, root, seq, target_root, progress)
            report.files_done += done.files_done
            report.files_total += done.files_total
            report.bytes_done += done.bytes_done
            report.bytes_total += done.bytes_total
            report.links += done.links
            report.folders += done.folders
        plain = versions + links
        single = not folders and len(plain) == 1 and plain[0].path == key
        dest_is_dir = dest is not None and await in_thread(dest.is_dir)

        def target_of(version: FileVersion) -> Path:
            if dest is None:
                return Path(version.path)
            if single:
                return dest / Path(key).name if dest_is_dir else dest
            return dest / version.path[len(key) :].lstrip("/")

        if dest is None:  # in place: from the folder above the path named
            anchor, as_typed = Path(key).parent, False
        else:
            anchor, as_typed = (dest.parent if single and not dest_is_dir else dest), True
        if not folders and not plain:
            return report
        async with self._target(anchor, as_typed) as target:
            await self._restore_plain(target, folders, versions, links, target_of, report, progress)
        return report

    async def _restore_plain(
        self,
        target: RestoreTarget,
        folders: list[FileVersion],
        files: list[FileVersion],
        links: list[FileVersion],
        target_of: Callable[[FileVersion], Path],
        report: Progress,
        progress: ProgressFn | None,
    ) -> None:
        for folder in folders:  # empty ones too; their own mode and times are set last
            await in_thread(target.make_folder, target_of(folder))
        await self.files.restore_files(
            target, [(target_of(v), v, None) for v in files], report, progress
        )
        # Links last: no file is ever written through a link this restore made. A real folder
        # where a link was is left: unlike a mount's snapshot, a plain backup does not say that
        # folder is gone.
        for link in sorted(links, key=lambda v: v.path):
            where = target_of(link)
            content = os.fsdecode(b"".join(await self.fetcher.fetch_many(list(link.chunks))))
            made = await in_thread(
                functools.partial(
                    target.make_symlink, where, content, link.mtime_ns, replace_folder=False
                )
            )
            if made:
                report.links += 1
            else:
                log.warning("%s: a folder is there now; the symlink it was is not restored", where)
                report.links_not_made.append(str(where))
        # Folder modes and times last, deepest first: writing inside a folder changes its mtime.
        for folder in reversed(folders):
            where = target_of(folder)
            refused = await in_thread(
                target.finish_folder,
                where,
                folder.mode,
                folder.mtime_ns,
                (folder.uid, folder.gid),
                folder.xattrs,
            )
            report.xattrs_refused.extend(f"{where}: {n}" for n in refused)
        report.folders += len(folders)

    async def _tree_for(self, key: str, at_ns: int | None) -> tuple[str, int] | None:
        """(mounted root, snapshot seq) whose tree holds ``key`` as of ``at_ns``, if any."""
        for root in await self._db(self.catalog.roots):
            if key != root and not key.startswith(root.rstrip("/") + "/"):
                continue
            if at_ns is None:
                seq = await self._db(self.catalog.latest_seq, root)
            else:
                seq = await self._db(self.catalog.snapshot_at, root, at_ns)
                if not seq:
                    raise RestoreError(f"{key}: no snapshot of {root} is that old")
            relative = key[len(root) :].strip("/")
            found = await self._db(self.catalog.tree_walk, root, relative, seq) if relative else []
            if not relative or found:
                return root, seq
        return None

    async def _restore_tree(
        self, key: str, root: str, seq: int, dest: Path | None, progress: ProgressFn | None
    ) -> Progress:
        relative = key[len(root) :].strip("/")
        entries = await self._db(self.catalog.tree_walk, root, relative, seq)
        files: list[tuple[str, FileVersion, TreeEvent]] = []
        for path, entry in entries:
            if any(part in ("", ".", "..") or "\0" in part for part in path.split("/")):
                raise RestoreError(f"refusing the unsafe name {path!r} in the catalog")
            if entry.kind == TREE_FILE:
                version = await self._db(self.catalog.version_by_id, entry.file_id)
                if version is None:
                    raise RestoreError(f"{root}/{path}: its version is missing from the catalog")
                files.append((path, version, entry))
        report = Progress(files_total=len(files), bytes_total=sum(v.size for _p, v, _e in files))
        top_is_file = bool(entries) and entries[0][1].kind != TREE_DIR and relative != ""
        if dest is None:
            base = Path(key)
        elif top_is_file and await in_thread(dest.is_dir):
            base = dest / Path(key).name
        else:
            base = dest

        def target_of(path: str) -> Path:
            rest = path[len(relative) :].lstrip("/") if relative else path
            return base / rest if rest else base

        if dest is None:  # in place: from the folder above the tree
            anchor, as_typed = base.parent, False
        else:  # the folder the user named, followed as typed (a file's: the one it goes in)
            anchor, as_typed = (dest.parent if base == dest and top_is_file else dest), True
        async with self._target(anchor, as_typed) as target:
            await self._restore_entries(target, entries, files, target_of, report, progress)
        return report

    async def _restore_entries(
        self,
        target: RestoreTarget,
        entries: list[tuple[str, TreeEvent]],
        files: list[tuple[str, FileVersion, TreeEvent]],
        target_of: Callable[[str], Path],
        report: Progress,
        progress: ProgressFn | None,
    ) -> None:
        folders: list[tuple[Path, TreeEvent]] = []
        for path, entry in entries:
            where = target_of(path)
            if entry.kind == TREE_DIR:
                await in_thread(target.make_folder, where)
                folders.append((where, entry))
                report.folders += 1  # counted as a plain restore counts them
            elif entry.kind == TREE_SYMLINK:
                report.links += 1
                await in_thread(
                    functools.partial(
                        target.make_symlink,
                        where,
                        entry.target,
                        entry.mtime_ns,
                        replace_folder=True,  # the snapshot says that folder is gone
                    )
                )
        await self.files.restore_files(
            target, [(target_of(p), v, e) for p, v, e in files], report, progress
        )
        for where, entry in reversed(folders):  # children first: their writes move mtimes
            refused = await in_thread(
                functools.partial(
                    target.finish_folder,
                    where,
                    stat.S_IMODE(entry.mode) or 0o755,
                    entry.mtime_ns,
                    xattrs=entry.xattrs,
                )
            )
            report.xattrs_refused.extend(f"{where}: {n}" for n in refused)

    @contextlib.asynccontextmanager
    async def _target(self, anchor: Path, as_typed: bool) -> AsyncIterator[RestoreTarget]:
        """The restore's target below ``anchor``; a destination it refuses is a RestoreError."""
        try:
            target = await in_thread(
                functools.partial(
                    RestoreTarget, anchor, as_typed=as_typed, resume_dir=self.resume_dir
                )
            )
            try:
                yield target
                await in_thread(target.sync)  # "restored" means on the disk
            finally:
                target.close()
        except UnsafeDestination as exc:
            raise RestoreError(str(exc)) from None


def _local_time(ns: int | None) -> str:
    """A moment as people read it (local time, to the second)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((ns or 0) / 1e9))
