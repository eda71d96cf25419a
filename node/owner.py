"""The owner role: back up this computer's files to peers, and the parts that serve it.

A backup reads (``localtree``) and seals on worker threads (``cpu_limiter``), sends through the
``Uploader`` (placement and retries in ``Replication``) and counts a copy only once a holder
answered STORED. A version is marked complete in the catalog only when every chunk has its
degree; the others are pending (``Pending`` finishes them in the background). The owner also
holds what restores (``Restorer``), deletes and prunes (``Deletes``) and trims (``Trimmer``).
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import trio

from chunkstore import crashpoints
from chunkstore.catalog import (
    FileVersion,
    link_key,
    read_xattrs,
    version_from_stat,
)
from chunkstore.catalogbase import BackupRun
from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import split_bytes
from chunkstore.envelope import chunk_address
from chunkstore.exclusions import Exclusions
from chunkstore.keys import KeyRing
from chunkstore.pipeline import chunk_addresses, seal_chunks
from chunkstore.retention import RetentionPolicy
from chunkstore.shares import Code, describe, is_safe
from chunkstore.sizes import format_size
from chunkstore.store import ChunkStore

from .catalogio import CatalogIO
from .deletes import Deletes
from .fetch import Fetcher
from .filesender import FileSender
from .localtree import (
    SMALL_FILE,
    Scan,
    groups,
    pending_summary,
    read_folders,
    scan,
)
from .node import Node
from .offload import in_thread
from .pending import UNSENT_BYTES, Pending
from .report import BackupError, BackupPending, EntryPending, Progress, ProgressFn
from .restore import Restorer
from .restore_files import FileRestorer
from .rwlock import SharedExclusive
from .trim import Trimmer
from .uploader import Uploader

log = logging.getLogger(__name__)
GROUPS_IN_FLIGHT = 3  # several groups at once


class Owner:
    def __init__(
        self,
        node: Node,
        keys: KeyRing,
        catalog: CatalogDB,
        default_degree: int = 2,
        outbox: ChunkStore | None = None,
        retention: RetentionPolicy | None = None,
        unsent: ChunkStore | None = None,
        prune_interval: float = 3600.0,
    ) -> None:
        self.node = node
        self.retention = retention
        self.prune_interval = prune_interval
        self.keys = keys
        self.catalog = catalog
        self.default_degree = default_degree
        self.owner_id = node.node_id
        self.io = CatalogIO()
        self._db = self.io.call
        self._query = self.io.read
        self.outbox = outbox
        self.unsent = unsent
        self.fetcher = Fetcher(node, keys, catalog, self._db)
        self.restorer = Restorer(
            catalog,
            self._db,
            self.fetcher,
            FileRestorer(node, keys, catalog, self._db, self.fetcher),
            catalog.path.parent / "restores",  # interrupted restores' temporary files
        )
        self._guard = SharedExclusive()
        self.deletes = Deletes(node, catalog, self.io, self._guard.exclusive, self._catalog_changed)
        self.delete_path = self.deletes.delete_path
        self.prune = self.deletes.prune
        self.uploader = Uploader(node, keys, catalog, self.io, self.deletes.lock)
        self.pending = Pending(
            node, keys, catalog, self.io, self.uploader, outbox, unsent, self._note_backup
        )
        self.kick = self.pending.kick
        self.sender = FileSender(node, keys, catalog, self.io, self.uploader, self.pending)
        self.trimmer = Trimmer(
            node, catalog, keys, self.fetcher, default_degree, self._guard.exclusive
        )
        self.trim_surplus = self.trimmer.once
        self.last_backup_ns = catalog.get_setting("last_backup_ns")
        # Run whenever the catalog changes, and when a link to a peer is made (the daemon's
        # catalog safekeeping listens).
        self.on_catalog_changed: list[Callable[[], None]] = []
        node.pool.on_new_link.append(lambda _peer: self.deletes.want())
        node.holder.wanted = self._still_wanted

    async def _still_wanted(self, owner: int, addresses: tuple[bytes, ...]) -> set[bytes] | None:
        """A holder asks before re-making copies of our chunks: a deleted one never comes back."""
        if owner != self.owner_id:
            return None
        return await self._db(self.catalog.still_wanted, addresses)

    def _catalog_changed(self) -> None:
        for hook in self.on_catalog_changed:
            hook()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background duties: re-send owed deletes, finish incomplete backups, prune."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.deletes.run)
            nursery.start_soon(self.pending.run)
            nursery.start_soon(self.trimmer.run)
            if self.retention is not None:
                nursery.start_soon(self.deletes.prune_loop, self.retention, self.prune_interval)
            task_status.started()

    # -- backup --------------------------------------------------------------------------

    async def backup_path(
        self,
        path: Path,
        degree: int | None = None,
        progress: ProgressFn | None = None,
        exclusions: Exclusions | None = None,
    ) -> Progress:
        """Back up a file or a whole folder (regular files; symlinks are not followed), less
        what ``exclusions`` leave out (recorded as no longer there, like removed entries).
        Each run that got as far as reading is recorded (``lanvault snapshots``), with its
        outcome: complete, pending (short of its degree) or failed."""
        degree = degree or self.default_degree
        why = self.node.replication.short_of_holders(degree)
        if why:  # never reachable as the network stands: said at once, nothing recorded
            raise BackupError(why)
        started = time.time_ns()
        listing = await in_thread(scan, str(path), exclusions)
        report = Progress(
            files_total=len(listing.files),
            bytes_total=listing.total,
            entries_skipped=listing.skipped,
        )
        outcome = "failed"
        try:
            await self._backup_listing(path, degree, progress, listing, report)
            outcome = "complete"
        except BackupPending:
            outcome = "pending"
            raise
        finally:
            run = BackupRun(
                0,
                str(path),
                started,
                time.time_ns(),
                report.files_done + report.links + report.folders,
                report.new,
                report.changed,
                report.removed,
                report.bytes_read if outcome == "failed" else report.bytes_total,
                report.bytes_sent,
                outcome,
            )
            with trio.CancelScope(shield=True):  # an interrupted run is recorded as failed
                await self._db(self.catalog.add_backup_run, run)
        return report

    async def _backup_listing(
        self,
        path: Path,
        degree: int,
        progress: ProgressFn | None,
        listing: Scan,
        report: Progress,
    ) -> None:
        files = listing.files
        failures: list[str] = []
        errors: list[Exception] = []
        room = trio.Semaphore(GROUPS_IN_FLIGHT)

        async def one_group(group: list[str]) -> None:
            try:
                async with self._guard.shared():
                    failures.extend(
                        await self._backup_group(group, degree, report, progress, listing.stats)
                    )
            except Exception as exc:  # raised below, outside the nursery: no exception group
                errors.append(exc)
            finally:
                room.release()
            if progress:
                progress(report)

        # Several groups at once: one is read while another's chunks are on their way and a
        # third is committed (each step waits on a disk or a peer, not on this process).
        async with trio.open_nursery() as nursery:
            for group in groups(files, listing.stats):
                await room.acquire()
                if errors:
                    room.release()
                    break
                nursery.start_soon(one_group, group)
        if errors:
            raise errors[0]
        # Symlinks and folders after the files: a folder's times are those the files left.
        entries = listing.links + listing.folders
        entry_failures: list[str] = []
        one_by_one = list(listing.links)
        async with self._guard.shared():
            entry_failures += await self._backup_folders(
                listing.folders, degree, report, one_by_one
            )
        for entry in one_by_one:
            try:
                await self._backup_entry(entry, degree, report)
            except EntryPending as exc:
                report.pending[exc.path] = exc.why
            except (BackupError, OSError) as exc:
                entry_failures.append(f"{entry}: {exc}")
        report.links = len(listing.links)
        report.folders = len(listing.folders)
        if listing.folders and not listing.unlisted:
            # What the folder no longer holds is gone as of this backup (a folder not read
            # says nothing about what is in it: then nothing is noted).
            present = set(files) | set(listing.links) | set(listing.folders)
            known = await self._query(self.catalog.live_paths, str(path))
            gone = [p for p in known if p not in present]
            if gone:
                await self._db(self.catalog.record_absent, gone, time.time_ns())
                report.removed = len(gone)
                self._catalog_changed()
        if failures or entry_failures or listing.unlisted:  # the rest went on; say what did not
            what = []
            if failures:
                what.append(f"{len(failures)} of {len(files)} files not backed up")
            if entry_failures:
                what.append(
                    f"{len(entry_failures)} of {len(entries)} symlinks and folders not backed up"
                )
            failures += entry_failures
            if listing.unlisted:
                n = len(listing.unlisted)
                what.append(f"{n} folder{'' if n == 1 else 's'} not read")
            if report.pending:
                what.append(pending_summary(report.pending, files, entries, degree))
            raise BackupError(f"{', '.join(what)}: {(failures + listing.unlisted)[0]}")
        if report.pending:
            caveat = ""
            if report.bytes_not_kept:
                caveat = (
                    f" ({format_size(report.bytes_not_kept)} of them did not fit in the"
                    f" {format_size(UNSENT_BYTES)} kept aside: those are made only while their"
                    " files stay unchanged)"
                )
            raise BackupPending(
                f"{pending_summary(report.pending, files, entries, degree)}: the node makes the"
                f" missing copies when holders return{caveat} (`lanvault state` shows their"
                f" degrees): {next(f'{p}: {why}' for p, why in report.pending.items())}"
            )
        await self._note_backup()  # a run that found nothing new is a backup all the same

    async def _backup_folders(
        self, folders: list[str], degree: int, report: Progress, retry: list[str]
    ) -> list[str]:
        """Folders (no content: their mode, owner, times and xattrs) recorded together, in one
        transaction; one that changed while read, or whose newest version is not yet complete,
        goes to ``retry``. Returns what failed, a line each."""
        if not folders:
            return []
        latest = await self._query(self.catalog.latest_many, folders)
        found = await in_thread(read_folders, folders)
        empty = chunk_address(self.keys, b"")
        failures: list[str] = []
        versions: list[tuple[FileVersion | None, FileVersion]] = []
        unchanged: list[str] = []
        for path, got in zip(folders, found, strict=True):
            if isinstance(got, OSError):
                failures.append(f"{path}: {got.strerror or got}")
                continue
            if got is None:  # changed while read, or not a folder any more: the careful way
                retry.append(path)
                continue
            st, xattrs = got
            known = latest.get(path)
            if known is not None and (
                known[0].mode,
                known[0].size,
                known[0].mtime_ns,
                known[0].ctime_ns,
                known[0].degree,
            ) == (st.st_mode, 0, st.st_mtime_ns, st.st_ctime_ns, degree):
                if known[1]:
                    unchanged.append(path)
                else:
                    retry.append(path)
                continue
            version = version_from_stat(self.owner_id, path, st, degree, [empty], 0, xattrs)
            versions.append((known[0] if known else None, version))
        if not versions and not unchanged:
            return failures
        # A folder's content is the one empty chunk: at its degree (a gone holder's copy made
        # again) before any folder counts as backed up.
        learned: list[tuple[bytes, int]] = []
        live = await self.uploader.live_holders([empty], degree)
        if not is_safe(empty, degree, live):
            [envelope] = seal_chunks(
                self.keys, [(empty, b"")], deterministic=Code.of_degree(degree) is not None
            )
            item = (empty, envelope)
            learned, short = await self.uploader.keep([item], degree, live, report)
            if short:  # recorded all the same: pending until the copies are made
                await self.pending.keep_unsent([item], degree, live, report)
                report.pending.update((p, short[0]) for p in unchanged)
                report.pending.update((v.path, short[0]) for _b, v in versions)
                for before, version in versions:
                    report.note(before, version)
                pending = [v for _b, v in versions]
                await self._db(
                    self.catalog.add_complete_versions, [], time.time_ns(), learned, None, pending
                )
                self._catalog_changed()
                return failures
        report.unmodified += len(unchanged)
        if not versions:
            if learned:
                await self._db(self.catalog.add_holders, learned)
            return failures
        now = time.time_ns()
        await self._db(
            self.catalog.add_complete_versions, [v for _b, v in versions], now, learned, now
        )
        self.last_backup_ns = now
        self._catalog_changed()
        for before, version in versions:
            report.note(before, version)
        return failures

    async def _backup_entry(self, path: str, degree: int, report: Progress) -> FileVersion:
        """A symlink (its target is the content, it is never followed) or a folder (no
        content: its mode and times) as a version of its path, like a file's."""
        async with self._guard.shared():
            for _attempt in range(5):
                before = os.lstat(path)
                if stat.S_ISLNK(before.st_mode):
                    content = os.fsencode(os.readlink(path))
                elif stat.S_ISDIR(before.st_mode):
                    content = b""
                else:
                    raise BackupError(f"{path}: not a symlink or folder")
                latest = await self._query(self.catalog.latest, path)
                if (
                    latest is not None
                    and latest.mode == before.st_mode
                    and latest.size == len(content)
                    and latest.mtime_ns == before.st_mtime_ns
                    and latest.ctime_ns == before.st_ctime_ns
                    and latest.degree == degree
                ):
                    await self.pending.ensure_version(latest, report, None)
                    report.unmodified += 1
                    return latest
                pieces = split_bytes(content)
                report.bytes_read += len(content)
                addresses = chunk_addresses(self.keys, pieces)
                envelopes = await in_thread(
                    functools.partial(
                        seal_chunks, deterministic=Code.of_degree(degree) is not None
                    ),
                    self.keys,
                    list(zip(addresses, pieces, strict=True)),
                    limiter=self.node.cpu_limiter,
                )
                live = await self.uploader.live_holders(addresses, degree)
                items = list(zip(addresses, envelopes, strict=True))
                learned, short = await self.uploader.keep(items, degree, live, report)
                if learned:
                    await self._db(self.catalog.add_holders, learned)
                if short:
                    await self.pending.keep_unsent(items, degree, live, report)
                xattrs = read_xattrs(path)
                after = os.lstat(path)
                if (after.st_mtime_ns, after.st_ctime_ns) != (
                    before.st_mtime_ns,
                    before.st_ctime_ns,
                ):
                    continue  # changed while it was read: read it again
                version = version_from_stat(
                    self.owner_id, path, before, degree, addresses, len(content), xattrs
                )
                await self._db(self.catalog.add_version, version, time.time_ns())
                report.note(latest, version)
                if short:  # recorded; pending until the missing copies are made
                    self._catalog_changed()
                    raise EntryPending(str(path), short[0])
                await self._db(self.catalog.set_complete, version.file_id)
                return version
        raise BackupError(f"{path} keeps changing; try again when it is not being changed")

    async def backup_file(
        self,
        path: Path,
        degree: int,
        report: Progress | None = None,
        progress: ProgressFn | None = None,
    ) -> FileVersion:
        async with self._guard.shared():
            return await self._backup_file(
                path, degree, report or Progress(files_total=1), progress
            )

    async def _backup_file(
        self, path: Path, degree: int, report: Progress, progress: ProgressFn | None
    ) -> FileVersion:
        key = str(path)
        for _attempt in range(5):
            before = os.stat(key, follow_symlinks=False)
            if not stat.S_ISREG(before.st_mode):
                raise BackupError(f"{path}: not a regular file")
            latest = await self._query(self.catalog.latest, key)
            if (
                latest is not None
                and latest.size == before.st_size
                and latest.mtime_ns == before.st_mtime_ns
                and latest.ctime_ns == before.st_ctime_ns
                and latest.degree == degree
                and latest.link == link_key(before)
            ):
                await self.pending.ensure_version(latest, report, progress)
                report.bytes_done += before.st_size
                report.unmodified += 1
                return latest
            addresses, short = await self.sender.content(
                key, before.st_size, degree, report, progress
            )
            report.bytes_read += before.st_size
            xattrs = read_xattrs(key)
            after = os.stat(key, follow_symlinks=False)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                before.st_size,
                before.st_mtime_ns,
                before.st_ctime_ns,
            ):
                log.info("%s changed while it was read; reading it again", key)
                continue  # a torn read: the chunks went out, but no version names them
            version = version_from_stat(
                self.owner_id, key, before, degree, addresses, xattrs=xattrs
            )
            crashpoints.reached("backup.sent")
            await self._db(self.catalog.add_version, version, time.time_ns())
            crashpoints.reached("backup.recorded")
            report.note(latest, version)
            if short:  # recorded; pending until the missing copies are made
                self._catalog_changed()
                raise EntryPending(str(path), short[0])
            await self._db(self.catalog.set_complete, version.file_id)
            await self._note_backup()
            return version
        raise BackupError(f"{path} keeps changing; try again when it is not being written")

    async def _backup_group(
        self,
        paths: list[str],
        degree: int,
        report: Progress,
        progress: ProgressFn | None,
        listed: dict[str, os.stat_result],
    ) -> list[str]:
        """Back up files in one go where that is safe: unchanged ones are checked together,
        small new or changed ones are read, sent and committed together; the rest one by one.
        ``listed`` has the scan's ``lstat`` of the files. Returns what failed, one line per
        file (the others are backed up)."""
        failures: list[str] = []
        stats: dict[str, os.stat_result] = {}
        for path in paths:
            if path in listed:
                stats[path] = listed[path]
                continue
            try:
                stats[path] = os.stat(path, follow_symlinks=False)
            except OSError as exc:
                failures.append(f"{path}: {exc.strerror or exc}")
                report.files_done += 1
        latest = await self._query(self.catalog.latest_many, list(stats))
        unchanged: list[tuple[str, FileVersion]] = []
        small: list[tuple[str, os.stat_result, FileVersion | None]] = []
        one_by_one: list[str] = []
        for path, st in stats.items():
            found = latest.get(path)
            version = found[0] if found else None
            if version is not None and (
                version.size,
                version.mtime_ns,
                version.ctime_ns,
                version.degree,
                version.link,
            ) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, degree, link_key(st)):
                unchanged.append((path, version))
            elif stat.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE:
                small.append((path, st, version))
            else:
                one_by_one.append(path)
        # Unchanged files: their copies are checked against the catalog (a gone holder's are
        # made again) and the versions marked complete, all in one go.
        ensured = await self.pending.ensure_versions([v for _p, v in unchanged], report, progress)
        done = {v.file_id for v in ensured}
        for path, version in unchanged:
            report.files_done += 1
            if version.file_id in done:
                report.bytes_done += version.size
                report.unmodified += 1
            else:
                report.pending[path] = f"some chunks are not yet at {describe(version.degree)}"
        small_failures, committed, pending = await self.sender.smalls(
            small, degree, report, one_by_one
        )
        failures += small_failures
        if committed is not None:  # the time of the last backup went in with them
            self.last_backup_ns = committed
        if committed is not None or pending:
            self._catalog_changed()
        for path in one_by_one:
            try:
                await self._backup_file(Path(path), degree, report, progress)
            except EntryPending as exc:
                report.pending[exc.path] = exc.why
            except (BackupError, OSError) as exc:
                failures.append(f"{path}: {exc}")
            report.files_done += 1
        return failures

    async def _note_backup(self) -> None:
        self.last_backup_ns = time.time_ns()
        await self._db(self.catalog.set_setting, "last_backup_ns", self.last_backup_ns)
        self._catalog_changed()
