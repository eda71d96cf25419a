"""The owner role: back up this computer's files to peers, restore them, delete them.

Chunks are read and sealed on worker threads (``cpu_limiter``), sent to holders chosen by
placement, and counted only once a holder answered STORED. A version is marked complete in the
catalog only when every chunk has its degree; incomplete versions are resumed in the background.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from chunkstore import crashpoints
from chunkstore.catalog import (
    FileVersion,
    link_key,
    read_xattrs,
    version_from_stat,
)
from chunkstore.catalogdb import CatalogDB
from chunkstore.chunking import CHUNK_SIZE, chunk_count, split_bytes
from chunkstore.envelope import chunk_address, open_chunk, seal_chunk
from chunkstore.errors import ChunkstoreError, EnvelopeError, QuotaExceededError
from chunkstore.keys import KeyRing
from chunkstore.retention import RetentionPolicy
from chunkstore.store import ChunkStore, PutItem

from .fetch import Fetcher
from .localtree import (
    SEAL_BYTES,
    SMALL_FILE,
    SmallRead,
    groups,
    pending_summary,
    read_and_address,
    read_folders,
    read_smalls,
    runs,
    scan,
    seal_all,
)
from .node import Node
from .protocol import MAX_BATCH, Chunk, Delete, Deleted, GetChunk
from .report import BackupError, BackupPending, EntryPending, Progress, ProgressFn
from .restore import Restorer
from .restore_files import FileRestorer
from .rwlock import SharedExclusive
from .safekeeping import Safekeeping
from .transport import PeerUnavailable, RemoteError
from .trim import TrimReport, trim_surplus
from .verify import bad_envelopes

log = logging.getLogger(__name__)
# Chunks per worker-thread hop in a backup; spread over the holders, each gets ~MAX_BATCH.
READ_BATCH = 4 * MAX_BATCH
TRIM_INTERVAL = 600.0  # seconds between passes over our chunks for copies above their degree
TRIM_SETTLE = 30.0  # after a node came back online, before such a pass
GROUPS_IN_FLIGHT = 3  # several groups at once
IN_FLIGHT_CHUNKS = 256  # bounds memory (16 MiB of chunks) while keeping holders busy
# A backup short of its degree keeps the chunks it could not send in a local store of this
# size; beyond it the node reads them again from the file (while that is unchanged).
UNSENT_BYTES = 1 << 30


T = TypeVar("T")


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
        self.last_prune: dict[str, object] = {}
        self.keys = keys
        self.catalog = catalog
        self.default_degree = default_degree
        self.owner_id = node.node_id
        self._db_limiter = trio.CapacityLimiter(1)
        self._query_limiter = trio.CapacityLimiter(1)
        self._tombstones_wanted = trio.Event()
        self._resume_wanted = trio.Event()
        self.outbox = outbox
        self.unsent = unsent
        self._delete_lock = trio.Lock()  # held while owed deletes are being sent
        self.fetcher = Fetcher(node, keys, catalog, self._db)
        self.restorer = Restorer(
            catalog,
            self._db,
            self.fetcher,
            FileRestorer(node, keys, catalog, self._db, self.fetcher),
            catalog.path.parent / "restores",  # interrupted restores' temporary files
        )
        self._guard = SharedExclusive()
        self.last_backup_ns = catalog.get_setting("last_backup_ns")
        self.safekeeping: Safekeeping | None = None  # set by the daemon: kit and catalog copies
        node.on_online.append(lambda _peer: self._tombstones_wanted.set())
        node.on_online.append(lambda _peer: self._resume_wanted.set())  # pending backups go on
        # A node back online may bring copies that were re-made elsewhere meanwhile.
        self._trim_wanted = trio.Event()
        node.on_online.append(lambda _peer: self._trim_wanted.set())
        node.pool.on_new_link = self._new_link
        node.holder.wanted = self._still_wanted

    async def _still_wanted(self, owner: int, addresses: tuple[bytes, ...]) -> set[bytes] | None:
        """A holder asks before re-making copies of our chunks: a deleted one never comes back."""
        if owner != self.owner_id:
            return None
        return await self._db(self.catalog.still_wanted, addresses)

    def _new_link(self, _peer: int) -> None:
        self._tombstones_wanted.set()
        if self.safekeeping is not None:
            self.safekeeping.publish_wanted.set()

    def _catalog_changed(self) -> None:
        if self.safekeeping is not None:
            self.safekeeping.catalog_changed()

    async def _query(self, fn: Callable[..., T], *args: object) -> T:
        """A read of the catalog: its own connection, so it never waits behind a commit (it
        sees what was committed when it starts)."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args), limiter=self._query_limiter
        )

    async def _db(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._db_limiter)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background duties: re-send owed deletes, finish incomplete backups, prune."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tombstone_loop)
            nursery.start_soon(self._resume_loop)
            nursery.start_soon(self._trim_loop)
            if self.retention is not None:
                nursery.start_soon(self._prune_loop, self.retention)
            if self.safekeeping is not None:
                await nursery.start(self.safekeeping.run)
            task_status.started()

    async def trim_surplus(self) -> TrimReport:
        """Drop copies of our chunks above their degree (see ``node/trim.py``)."""
        return await trim_surplus(
            self.node,
            self.catalog,
            self.owner_id,
            self.default_degree,
            self._guard.exclusive,
            self.verified_at,
        )

    async def verified_at(self, holder: int, addresses: list[bytes]) -> set[bytes]:
        """Those of ``addresses`` of which ``holder`` hands over a copy that opens."""
        got = await self.fetcher.get_envelopes(holder, addresses)
        bad = await trio.to_thread.run_sync(
            bad_envelopes, self.keys, got, limiter=self.node.cpu_limiter
        )
        return set(got) - set(bad)

    async def _trim_loop(self) -> None:
        while True:
            with trio.move_on_after(TRIM_INTERVAL):
                await self._trim_wanted.wait()
            self._trim_wanted = trio.Event()
            await trio.sleep(TRIM_SETTLE)  # links come up, repairs in flight finish
            try:
                await self.trim_surplus()
            except Exception:
                log.exception("trimming surplus copies failed")

    # -- retention -----------------------------------------------------------------------

    async def prune(self, policy: RetentionPolicy, dry_run: bool = False) -> dict[str, object]:
        """Apply the retention policy: drop old snapshots and versions, delete what they alone
        used from every holder. Never a leased, pending or newest version, never the newest
        snapshot of a tree."""
        now = time.time_ns()
        by_root: dict[str, list[tuple[int, int]]] = {}
        for seq, root, taken in await self._db(self.catalog.snapshots):
            by_root.setdefault(root, []).append((seq, taken))
        drop: list[int] = []
        for rows in by_root.values():
            keep = policy.keep([taken for _seq, taken in rows], now)
            drop += [seq for index, (seq, _t) in enumerate(rows) if index not in keep]
        by_path: dict[str, list[tuple[int, int]]] = {}
        for vid, path, created in await self._db(self.catalog.backup_versions):
            by_path.setdefault(path, []).append((vid, created))
        drop_ids: list[int] = []
        for rows in by_path.values():
            keep = policy.keep([created for _vid, created in rows], now)
            drop_ids += [vid for index, (vid, _c) in enumerate(rows) if index not in keep]
        async with self._guard.exclusive():
            report = await self._db(
                self.catalog.prune, drop, drop_ids, self._known_nodes(), now, dry_run
            )
        if report.chunks_orphaned and not dry_run:
            crashpoints.reached("prune.recorded")
            self._tombstones_wanted.set()
        if not dry_run and (report.snapshots_dropped or report.versions_dropped):
            self._catalog_changed()
        result: dict[str, object] = {
            "policy": policy.describe(),
            "dry_run": dry_run,
            "snapshots_dropped": report.snapshots_dropped,
            "versions_dropped": report.versions_dropped,
            "tree_events_dropped": report.events_dropped,
            "chunks_deleted": report.chunks_orphaned,
            "time": now / 1e9,
        }
        if not dry_run:
            self.last_prune = result
            if report.snapshots_dropped or report.versions_dropped:
                log.info(
                    "pruned %d snapshots and %d versions; %d chunks are deleted from holders",
                    report.snapshots_dropped,
                    report.versions_dropped,
                    report.chunks_orphaned,
                )
        return result

    async def _prune_loop(self, policy: RetentionPolicy) -> None:
        while True:
            await trio.sleep(self.prune_interval)
            try:
                await self.prune(policy)
            except Exception:
                log.exception("pruning failed")

    # -- backup --------------------------------------------------------------------------

    async def backup_path(
        self, path: Path, degree: int | None = None, progress: ProgressFn | None = None
    ) -> Progress:
        """Back up a file or a whole folder (regular files; symlinks are not followed)."""
        degree = degree or self.default_degree
        listing = await trio.to_thread.run_sync(scan, str(path))
        files = listing.files
        report = Progress(
            files_total=len(files), bytes_total=listing.total, entries_skipped=listing.skipped
        )
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
            raise BackupPending(
                f"{pending_summary(report.pending, files, entries, degree)}: the node makes the"
                " missing copies when holders return (`lanvault state` shows their degrees):"
                f" {next(f'{p}: {why}' for p, why in report.pending.items())}"
            )
        await self._note_backup()  # a run that found nothing new is a backup all the same
        return report

    async def _backup_folders(
        self, folders: list[str], degree: int, report: Progress, retry: list[str]
    ) -> list[str]:
        """Folders (no content: their mode, owner, times and xattrs) recorded together, in one
        transaction; one that changed while read, or whose newest version is not yet complete,
        goes to ``retry``. Returns what failed, a line each."""
        if not folders:
            return []
        latest = await self._query(self.catalog.latest_many, folders)
        found = await trio.to_thread.run_sync(read_folders, folders)
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
        known_holders = await self._query(self.catalog.holders_many, [empty])
        holders = {h for h in known_holders[empty] if not self.node.membership.is_gone(h)}
        if len(holders) < degree:
            [envelope] = seal_all(self.keys, [(empty, b"")])
            item = (empty, envelope, holders)
            learned, short = await self._send([item], degree, report)
            if short:  # recorded all the same: pending until the copies are made
                await self._keep_unsent([item], degree)
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
                    await self._ensure_version(latest, report, None)
                    report.unmodified += 1
                    return latest
                pieces = split_bytes(content)
                report.bytes_read += len(content)
                addresses = [chunk_address(self.keys, piece) for piece in pieces]
                envelopes = await trio.to_thread.run_sync(
                    seal_all,
                    self.keys,
                    list(zip(addresses, pieces, strict=True)),
                    limiter=self.node.cpu_limiter,
                )
                known = await self._query(self.catalog.holders_many, addresses)
                items = [
                    (a, e, {h for h in known[a] if not self.node.membership.is_gone(h)})
                    for a, e in zip(addresses, envelopes, strict=True)
                ]
                sent = [item for item in items if len(item[2]) < degree]
                learned, short = await self._send(sent, degree, report)
                if learned:
                    await self._db(self.catalog.add_holders, learned)
                if short:
                    await self._keep_unsent(sent, degree)
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
                await self._ensure_version(latest, report, progress)
                report.bytes_done += before.st_size
                report.unmodified += 1
                return latest
            addresses, short = await self._store_content(
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
        ensured = await self._ensure_versions([v for _p, v in unchanged], report, progress)
        done = {v.file_id for v in ensured}
        for path, version in unchanged:
            report.files_done += 1
            if version.file_id in done:
                report.bytes_done += version.size
                report.unmodified += 1
            else:
                report.pending[path] = f"some chunks are not yet at degree {version.degree}"
        failures += await self._backup_small(small, degree, report, one_by_one)
        for path in one_by_one:
            try:
                await self._backup_file(Path(path), degree, report, progress)
            except EntryPending as exc:
                report.pending[exc.path] = exc.why
            except (BackupError, OSError) as exc:
                failures.append(f"{path}: {exc}")
            report.files_done += 1
        return failures

    async def _backup_small(
        self,
        files: list[tuple[str, os.stat_result, FileVersion | None]],
        degree: int,
        report: Progress,
        retry: list[str],
    ) -> list[str]:
        """Small files read whole, their chunks sent together and their versions committed in
        one transaction; a file that changed while read goes to ``retry``."""
        read: list[tuple[str, os.stat_result, FileVersion | None, SmallRead]] = []
        failures: list[str] = []
        results = await trio.to_thread.run_sync(  # one thread hop for the whole group
            read_smalls,
            self.keys,
            [(path, st) for path, st, _b in files],
            limiter=self.node.cpu_limiter,
        )
        for (path, st, before), got in zip(files, results, strict=True):
            if isinstance(got, OSError):
                failures.append(f"{path}: {got.strerror or got}")
                report.files_done += 1
                continue
            if got is None:
                retry.append(path)
            else:
                read.append((path, st, before, got))
        if not read:
            return failures
        plain: dict[bytes, bytes] = {}
        for *_x, (chunks, addresses, _xattrs) in read:
            plain.update(zip(addresses, chunks, strict=True))
        known = await self._query(self.catalog.holders_many, list(plain))
        live = {
            a: {h for h in hs if not self.node.membership.is_gone(h)} for a, hs in known.items()
        }
        to_send = [a for a in plain if len(live[a]) < degree]
        report.chunks_skipped += len(plain) - len(to_send)
        learned: list[tuple[bytes, int]] = []
        for start, end in runs([len(plain[a]) for a in to_send], SEAL_BYTES):
            batch = to_send[start:end]
            envelopes = await trio.to_thread.run_sync(
                seal_all, self.keys, [(a, plain[a]) for a in batch], limiter=self.node.cpu_limiter
            )
            items = [(a, e, live[a]) for a, e in zip(batch, envelopes, strict=True)]
            new, short_lines = await self._send(items, degree, report)  # ``live`` grows
            learned += new
            if short_lines:
                await self._keep_unsent(items, degree)
        versions: list[FileVersion] = []
        pending: list[FileVersion] = []
        for path, st, before, (_chunks, addresses, xattrs) in read:
            report.files_done += 1
            version = version_from_stat(self.owner_id, path, st, degree, addresses, xattrs=xattrs)
            report.bytes_read += st.st_size
            report.note(before, version)
            short = [a for a in addresses if len(live[a]) < degree]
            if short:  # recorded all the same: pending until the missing copies are made
                pending.append(version)
                report.pending[path] = (
                    f"chunk {short[0].hex()[:12]}… has {len(live[short[0]])} of {degree}"
                    f" copies ({len(self.node.membership.up_ids())} peers up)"
                )
                continue
            versions.append(version)
            report.bytes_done += st.st_size
        now = time.time_ns()
        crashpoints.reached("backup.group")
        await self._db(
            self.catalog.add_complete_versions,
            versions,
            now,
            learned,
            now if versions else None,
            pending,
        )
        if pending and not versions:
            self._catalog_changed()
        if versions:  # the time of the last backup went in with them
            self.last_backup_ns = now
            self._catalog_changed()
        return failures

    async def _note_backup(self) -> None:
        self.last_backup_ns = time.time_ns()
        await self._db(self.catalog.set_setting, "last_backup_ns", self.last_backup_ns)
        self._catalog_changed()

    async def _send(
        self, items: list[tuple[bytes, bytes, set[int]]], degree: int, report: Progress
    ) -> tuple[list[tuple[bytes, int]], list[str]]:
        """Bring each (address, envelope, holders) to ``degree`` copies.

        First one PUTCHUNKS per target holder for the whole batch, then, for any chunk still
        short, per-chunk retries with backoff moving down the placement order. ``holders`` sets
        grow as copies are acknowledged. Returns the new (address, holder) pairs and the
        chunks that stayed short.
        """
        addresses = [address for address, _e, _h in items]
        if await self._query(self.catalog.any_tombstoned, addresses):
            # Deleted content is wanted again: no owed delete may remove the new copies.
            async with self._delete_lock:
                await self._db(self.catalog.revive, addresses)
        before = [set(holders) for _a, _e, holders in items]
        by_target: dict[int, list[int]] = {}
        plans = self.node.plan_many(self.owner_id, degree, [(a, h) for a, _e, h in items])
        for index, targets in enumerate(plans):
            for target in targets:
                by_target.setdefault(target, []).append(index)

        async def to_target(target: int, indexes: list[int]) -> None:
            ok = await self.node.put_batch(
                target, self.owner_id, degree, [(items[i][0], items[i][1]) for i in indexes]
            )
            for index, stored in zip(indexes, ok, strict=True):
                if stored:
                    items[index][2].add(target)

        async with trio.open_nursery() as nursery:
            for target, indexes in by_target.items():
                nursery.start_soon(to_target, target, indexes)

        learned: list[tuple[bytes, int]] = []
        failures: list[str] = []

        async def finish(index: int) -> None:
            address, envelope, holders = items[index]
            if len(holders) < degree:
                await self.node.replicate(self.owner_id, address, degree, envelope, holders)
            new = holders - before[index]
            report.bytes_sent += len(envelope) * len(new)
            learned.extend((address, h) for h in new)
            if len(holders) < degree:
                failures.append(
                    f"chunk {address.hex()[:12]}… has {len(holders)} of {degree} copies"
                    f" ({len(self.node.membership.up_ids())} peers up)"
                )

        for index, (address, envelope, holders) in enumerate(items):
            if len(holders) >= degree:  # the usual case: no task needed
                new = holders - before[index]
                report.bytes_sent += len(envelope) * len(new)
                learned.extend((address, h) for h in new)
        async with trio.open_nursery() as nursery:
            for index, (_address, _envelope, holders) in enumerate(items):
                if len(holders) < degree:
                    nursery.start_soon(finish, index)
        return learned, failures

    async def _store_content(
        self, path: str, size: int, degree: int, report: Progress, progress: ProgressFn | None
    ) -> tuple[list[bytes], list[str]]:
        """Read, address, seal and send every chunk of ``path``; return the addresses in order
        and a line per chunk that stayed short of its degree (kept for later, ``_keep_unsent``)."""
        count = chunk_count(size)
        addresses: list[bytes | None] = [None] * count
        budget = trio.Semaphore(IN_FLIGHT_CHUNKS)
        failures: list[str] = []
        unreadable: list[OSError] = []
        learned: list[tuple[bytes, int]] = []  # (address, holder) pairs not yet in the catalog

        async def send_batch(items: list[tuple[bytes, bytes, set[int]]]) -> None:
            try:
                new, short = await self._send(items, degree, report)
                learned.extend(new)
                failures.extend(short)
                if short:
                    await self._keep_unsent(items, degree)
            finally:
                for _ in items:
                    budget.release()

        async def flush_learned() -> None:
            if learned:
                pending = learned[:]
                del learned[:]
                await self._db(self.catalog.add_holders, pending)

        async def produce(first: int, n: int) -> None:
            # One thread hop reads and addresses the batch, one seals what must be sent.
            try:
                plaintexts, batch_addresses = await trio.to_thread.run_sync(
                    read_and_address, self.keys, path, first, n, limiter=self.node.cpu_limiter
                )
            except OSError as exc:  # raised here it would leave the nursery as a group
                unreadable.append(exc)
                for _ in range(n):
                    budget.release()
                return
            known = await self._query(self.catalog.holders_many, batch_addresses)
            to_send: list[tuple[bytes, bytes, set[int]]] = []
            for offset, (plain, address) in enumerate(
                zip(plaintexts, batch_addresses, strict=True)
            ):
                addresses[first + offset] = address
                report.bytes_done += len(plain)
                holders = {h for h in known[address] if not self.node.membership.is_gone(h)}
                if len(holders) >= degree:
                    report.chunks_skipped += 1
                    budget.release()
                else:
                    to_send.append((address, plain, holders))
            if to_send:
                envelopes = await trio.to_thread.run_sync(
                    seal_all,
                    self.keys,
                    [(address, plain) for address, plain, _h in to_send],
                    limiter=self.node.cpu_limiter,
                )
                sealed = [
                    (address, envelope, holders)
                    for (address, _plain, holders), envelope in zip(to_send, envelopes, strict=True)
                ]
                del plaintexts, to_send  # the plaintexts need not wait for the holders
                await send_batch(sealed)
            if len(learned) >= 1024:  # record holders in batches, not one commit per chunk
                await flush_learned()
            if progress:
                progress(report)

        # Batches are produced concurrently (each waits for its budget in file order): one
        # batch at a time left a core idle while its chain of thread hops waited its turn.
        async with trio.open_nursery() as nursery:
            for first in range(0, count, READ_BATCH):
                n = min(READ_BATCH, count - first)
                for _ in range(n):
                    await budget.acquire()
                if unreadable:
                    for _ in range(n):
                        budget.release()
                    break
                nursery.start_soon(produce, first, n)
        await flush_learned()
        if unreadable:
            raise unreadable[0]
        return [a for a in addresses if a is not None], failures

    async def _ensure_version(
        self, version: FileVersion, report: Progress, progress: ProgressFn | None
    ) -> None:
        """Bring every chunk of a recorded version to its degree, then mark it complete."""
        done = await self._ensure_versions([version], report, progress)
        if not done:
            raise EntryPending(version.path, f"some chunks are not yet at degree {version.degree}")

    async def _ensure_versions(
        self, versions: list[FileVersion], report: Progress, progress: ProgressFn | None
    ) -> list[FileVersion]:
        """Bring recorded versions' chunks to their degree; mark complete those that made it.

        All the versions' missing chunks travel together, in batches of one PUTCHUNKS per
        holder, several batches at once (10,000 small files are a few hundred requests, not
        10,000). A missing copy is made from the outbox (chunks a mount cut aside), else from
        the file itself if that chunk still has the same content; otherwise its version stays
        pending. Completed versions are recorded in one transaction.
        """
        addresses = list(dict.fromkeys(a for v in versions for a in v.chunks))
        known = await self._query(self.catalog.holders_many, addresses)
        live = {
            a: {h for h in hs if not self.node.membership.is_gone(h)} for a, hs in known.items()
        }
        wanted: dict[bytes, tuple[int, FileVersion, int]] = {}  # address -> degree, version, no
        for version in versions:
            for no, address in enumerate(version.chunks):
                if len(live[address]) >= version.degree:
                    continue
                degree = max(version.degree, wanted[address][0] if address in wanted else 0)
                wanted[address] = (degree, version, no)
        by_degree: dict[int, list[tuple[bytes, FileVersion, int]]] = {}
        for address, (degree, version, no) in wanted.items():
            by_degree.setdefault(degree, []).append((address, version, no))
        window = trio.Semaphore(4)  # batches in flight: 240 chunks, about 15 MB

        async def one_batch(degree: int, batch: list[tuple[bytes, FileVersion, int]]) -> None:
            try:
                envelopes = await trio.to_thread.run_sync(
                    self._envelopes_for, batch, limiter=self.node.disk_limiter
                )
                items = [
                    (address, envelope, live[address])
                    for (address, _v, _no), envelope in zip(batch, envelopes, strict=True)
                    if envelope is not None
                ]
                if items:
                    learned, _short = await self._send(items, degree, report)
                    if learned:
                        await self._db(self.catalog.add_holders, learned)
                if progress:
                    progress(report)
            finally:
                window.release()

        async with trio.open_nursery() as nursery:
            for degree, entries in by_degree.items():
                for i in range(0, len(entries), READ_BATCH):
                    await window.acquire()
                    nursery.start_soon(one_batch, degree, entries[i : i + READ_BATCH])
        complete = [v for v in versions if all(len(live[a]) >= v.degree for a in v.chunks)]
        newly = 0  # versions pending until now (an unchanged file's complete one costs nothing)
        if complete:
            newly = await self._db(self.catalog.set_complete_many, [v.file_id for v in complete])
        if newly:
            if self.outbox is not None or self.unsent is not None:
                await trio.to_thread.run_sync(self._release_outbox, complete)
            await self._note_backup()
        return complete

    def _envelopes_for(self, batch: list[tuple[bytes, FileVersion, int]]) -> list[bytes | None]:
        return [self._envelope_for(version, no, address) for address, version, no in batch]

    def _envelope_for(self, version: FileVersion, no: int, address: bytes) -> bytes | None:
        for kept in (self.outbox, self.unsent):
            if kept is not None:
                try:
                    return kept.get(self.owner_id, address)
                except ChunkstoreError:
                    pass
        try:
            with open(version.path, "rb") as handle:
                handle.seek(no * CHUNK_SIZE)
                data = handle.read(CHUNK_SIZE)
        except OSError:
            return None
        if chunk_address(self.keys, data) != address:
            return None  # the file moved on since this version: its copy is in the outbox or lost
        return seal_chunk(self.keys, address, data)

    def _release_outbox(self, versions: list[FileVersion]) -> None:
        """Drop outbox and unsent chunks of these (now safe) versions that no pending version
        needs."""
        released = {a for v in versions for a in v.chunks}
        done = sorted(released - self.catalog.pending_among(released))
        if self.outbox is not None:
            self.outbox.delete_many(self.owner_id, done)
        if self.unsent is not None and self.unsent.chunk_count():
            self.unsent.delete_many(self.owner_id, done)
            if self.unsent.garbage_bytes() > UNSENT_BYTES // 8:
                self.unsent.compact(0.5)

    async def _keep_unsent(self, items: list[tuple[bytes, bytes, set[int]]], degree: int) -> None:
        """Keep the envelopes of chunks still short of ``degree`` (durable before a pending
        version names them), so the node can finish the version when holders return even if
        the file changes meanwhile. Up to ``UNSENT_BYTES``: beyond that the node reads them
        from the file again, which works while the file is unchanged."""
        short = [PutItem(self.owner_id, a, e, degree) for a, e, h in items if len(h) < degree]
        unsent = self.unsent
        if not short or unsent is None:
            return

        def keep() -> None:
            if unsent.free_bytes >= sum(len(item.envelope) for item in short):
                with contextlib.suppress(QuotaExceededError):  # another batch took the room
                    unsent.put_many(short)

        await trio.to_thread.run_sync(keep, limiter=self.node.disk_limiter)

    def kick(self) -> None:
        """Look at pending versions now (a mount just cut one)."""
        self._resume_wanted.set()

    async def _resume_loop(self) -> None:
        while True:
            with trio.move_on_after(10):
                await self._resume_wanted.wait()
            self._resume_wanted = trio.Event()
            pending = await self._db(self.catalog.incomplete_versions)
            for i in range(0, len(pending), 2000):  # bounded memory for a huge backlog
                batch = pending[i : i + 2000]
                try:
                    done = await self._ensure_versions(batch, Progress(), None)
                except OSError as exc:
                    log.warning("sending pending backups failed: %s", exc)
                    continue
                if len(done) < len(batch):
                    log.info("%d pending versions still wait for copies", len(batch) - len(done))

    # -- delete --------------------------------------------------------------------------

    async def delete_path(self, path: Path) -> dict[str, int]:
        """Forget every version under ``path`` and remove their chunks from every holder.

        Holders that are offline get the delete when they are back (tombstones).
        """
        key = str(path)
        latest = [v for v, _ in await self._db(self.catalog.latest_versions, key)]
        paths = sorted({v.path for v in latest})
        if not paths:
            raise BackupError(f"{path}: nothing backed up under this path")
        async with self._guard.exclusive():
            report = await self._db(self.catalog.delete_paths, paths, self._known_nodes())
        crashpoints.reached("delete.recorded")
        self._catalog_changed()
        pending = await self.flush_tombstones()
        return {
            "files": sum(1 for v in latest if not stat.S_ISDIR(v.mode)),  # symlinks count
            "chunks": len(report.orphaned),
            "pending_holders": pending,
        }

    def _known_nodes(self) -> set[int]:
        nodes = {p.node_id for p in self.node.membership.peers()}
        nodes.discard(self.owner_id)
        return nodes

    async def flush_tombstones(self) -> int:
        """Send owed deletes; returns how many holders still owe an acknowledgement."""
        async with self._delete_lock:
            return await self._flush_tombstones()

    async def _flush_tombstones(self) -> int:
        owed = await self._db(self.catalog.tombstones)
        waiting = 0
        for node_id, addresses in owed.items():
            if not self.node.membership.is_up(node_id):
                waiting += 1
                continue
            done = True
            for i in range(0, len(addresses), 4096):
                batch = tuple(addresses[i : i + 4096])
                try:
                    answer = await self.node.pool.request(
                        node_id, functools.partial(Delete, owner=self.owner_id, addresses=batch), 30
                    )
                except (PeerUnavailable, RemoteError) as exc:
                    log.info("delete on node %d deferred: %s", node_id, exc)
                    done = False
                    break
                if isinstance(answer, Deleted):
                    crashpoints.reached("delete.sent")
                    await self._db(self.catalog.clear_tombstones, node_id, batch)
            if not done:
                waiting += 1
        return waiting

    async def _tombstone_loop(self) -> None:
        while True:
            with trio.move_on_after(5):
                await self._tombstones_wanted.wait()
            self._tombstones_wanted = trio.Event()
            try:
                await self.flush_tombstones()
            except Exception:
                log.exception("sending owed deletes failed")

    async def rereplicate(self, address: bytes, degree: int) -> int:
        """Bring one of our chunks back to ``degree`` from any holder's copy (for ``check --repair``)."""
        found = await self.node.query_holders(self.owner_id, [address])
        holders = found[address]
        for holder in sorted(holders):
            try:
                answer = await self.node.pool.request(
                    holder,
                    lambda r: GetChunk(r, self.owner_id, address),
                    self.node.config.request_timeout,
                )
            except (PeerUnavailable, RemoteError):
                continue
            if not isinstance(answer, Chunk):
                continue
            try:
                await trio.to_thread.run_sync(open_chunk, self.keys, address, answer.envelope)
            except EnvelopeError:
                continue
            made = await self.node.replicate(
                self.owner_id, address, degree, answer.envelope, set(holders)
            )
            await self._db(self.catalog.set_holders, address, holders)
            return made
        return 0

    # -- state ---------------------------------------------------------------------------

    async def chunk_degrees(self, addresses: list[bytes]) -> dict[bytes, int]:
        found = await self.node.query_holders(self.owner_id, addresses)
        return {a: len(h) for a, h in found.items()}

    async def state(self) -> dict[str, object]:
        """The original service's STATE report (see the spec's JSON shape)."""
        files = [  # a folder's version holds its mode and times, not a file's content
            (v, complete)
            for v, complete in await self._db(self.catalog.latest_versions, "")
            if not stat.S_ISDIR(v.mode)
        ]
        wanted = sorted({a for v, _ in files for a in v.chunks})
        degrees = await self.chunk_degrees(wanted) if wanted else {}
        stored = await trio.to_thread.run_sync(self.node.store.chunks)
        stored_degrees: dict[tuple[int, bytes], int] = {}
        by_owner: dict[int, list[bytes]] = {}
        for chunk in stored:
            by_owner.setdefault(chunk.owner, []).append(chunk.address)
        for owner, addresses in by_owner.items():
            found = await self.node.query_holders(owner, addresses)
            for address, holders in found.items():
                stored_degrees[(owner, address)] = len(holders | {self.node.node_id})
        return {
            "node_id": self.node.node_id,
            "capacity_bytes": self.node.store.capacity,
            "used_bytes": self.node.store.used_bytes,
            "files": [
                {
                    "path": v.path,
                    "file_id": v.file_id.hex(),
                    "desired_degree": v.degree,
                    "size": v.size,
                    "complete": complete,
                    "chunks": [
                        {
                            "no": no,
                            "chunk": a.hex(),
                            "size": min(CHUNK_SIZE, v.size - no * CHUNK_SIZE),
                            "degree": degrees.get(a, 0),
                        }
                        for no, a in enumerate(v.chunks)
                    ],
                }
                for v, complete in files
            ],
            "stored": [
                {
                    "owner": c.owner,
                    "chunk": c.address.hex(),
                    "size": c.length,
                    "degree": stored_degrees.get((c.owner, c.address), 1),
                    "desired_degree": c.degree,
                }
                for c in stored
            ],
        }
