"""The node daemon: wires the chunk store, the node, the owner role and the control socket."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from chunkstore.catalogdb import CatalogDB
from chunkstore.exclusions import Exclusions, PatternError
from chunkstore.keys import KeyRing
from chunkstore.recovery import make_kit
from chunkstore.retention import RetentionFormatError, RetentionPolicy
from chunkstore.shares import Code
from chunkstore.store import ChunkStore
from node.enrolment import Enroller, Invites
from node.identity import NetworkCA, tls_contexts
from node.node import Node, NodeConfig
from node.offload import in_thread
from node.owner import Owner
from node.pending import UNSENT_BYTES
from node.reclaim import ReclaimReport
from node.report import BackupError, Progress, RestoreError
from node.roster import RosterBook
from node.safekeeping import CatalogNotSafe, Safekeeping
from node.transport import PinStore, TLSNetwork
from node.verify import ReadDataReport, check_coded, read_data, rereplicate

from .activities import Activities
from .control import Binary, Emit, OpError, serve_control
from .health import Health, damage_dict, presence_fields
from .health import take as take_health
from .history_ops import HistoryOps
from .runtime import raise_open_file_limit
from .state import Config, StateDir
from .state_report import state_report_json

log = logging.getLogger("lanvault")
CATALOG_WAIT = 60.0  # seconds a backup waits for its catalog copy to reach the peers
SKIPPED_LISTED = 100  # entries a backup names as passed over; the count is always whole


async def _no_events(event: dict[str, Any]) -> None:
    """An operation's events when no CLI is listening (the dashboard's own calls)."""


async def _say(emit: Emit, message: str) -> None:
    """Tell the CLI what a command waits for (it may have gone: the work goes on)."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await emit({"event": "waiting", "message": message})


def _user_error(exc: Exception, kinds: tuple[type[Exception], ...]) -> Exception | None:
    """``exc`` if it is one of ``kinds``, or the first of an exception group made of those only
    (a nursery wraps what its tasks raise); None when anything else is in it: a bug, which must
    show as one."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, ExceptionGroup):
        matched, rest = exc.split(kinds)
        if matched is not None and rest is None:
            first: Exception = matched
            while isinstance(first, ExceptionGroup):
                first = first.exceptions[0]
            return first
    return None


def open_chunk_store(state: StateDir, config: Config) -> ChunkStore:
    """The store of the chunks this node holds: on this disk, or in the configured bucket."""
    if not config.bucket:
        return ChunkStore.open(state.store_path)
    from chunkstore.cloud import BucketAddress, CloudChunkStore, S3Bucket

    address = BucketAddress.parse(config.bucket)
    bucket = S3Bucket(address, config.s3_endpoint, config.s3_region)
    bucket.check_access()
    return CloudChunkStore.open_cloud(state.store_path, bucket, address.prefix)


class Daemon:
    def __init__(self, state: StateDir, config: Config, catalog_path: Path | None = None) -> None:
        self.state = state
        self.config = config
        self.store = open_chunk_store(state, config)
        if self.store.capacity == 0 and config.quota:
            self.store.set_capacity(config.quota)
        creds = state.credentials()
        cert_file, key_file = state.tls_files()
        server_ctx, client_ctx = tls_contexts(creds, cert_file, key_file)
        network = TLSNetwork(
            server_ctx, client_ctx, PinStore(state.root / "tls" / "pins.json"), config.node_id
        )
        # The roster (signed by the CA) says who is a member; a node recovered from its kit
        # starts without one and takes the newest its peers show.
        self.roster = RosterBook(state.roster_path, creds.ca_cert_pem)
        network.admit = self.roster.check
        ca_key = state.ca_key()
        enroller = None
        if ca_key is not None:  # an administrator: it enrols computers with its invitations
            ca = NetworkCA(config.network_id, creds.ca_cert_pem, ca_key)
            enroller = Enroller(ca, Invites(state.invites_path), self.roster)
        self.node = Node(
            NodeConfig(
                node_id=config.node_id,
                host_id=config.host_id,
                listen=config.listen,
                advertise=config.advertise,
                seeds=list(config.peers),
                heartbeat_interval=config.heartbeat_interval,
                down_after=config.down_after,
                gone_after=config.gone_after,
                repair_interval=config.repair_interval,
                scrub_interval=config.scrub_interval if config.scrub_interval > 0 else math.inf,
                network_id=config.network_id,
                discovery=config.discovery,
                relay=config.relay,
                peer_book=state.root / "peers.json",
            ),
            self.store,
            network,
            roster=self.roster,
            enroller=enroller,
            # Decoy kits keep their salt across restarts (a secret only this node can make).
            kit_secret=hashlib.blake2b(
                state.master_key(), person=b"lanvault:decoy", digest_size=32
            ).digest(),
        )
        self.catalog = CatalogDB(catalog_path or state.catalog_path)
        self.history = HistoryOps(self.catalog)
        self.activities = Activities()  # what runs now, for the CLI and the dashboard
        self.keys = KeyRing.from_master(state.master_key())
        self.outbox = ChunkStore.open(state.outbox_path, capacity=1 << 62)
        # Only this process writes here (the mount writes the outbox).
        self.unsent = ChunkStore.open(state.unsent_path, capacity=UNSENT_BYTES)
        self.owner = Owner(
            self.node,
            self.keys,
            self.catalog,
            config.default_degree,
            self.outbox,
            unsent=self.unsent,
            retention=RetentionPolicy.parse(config.retention),
            prune_interval=config.prune_interval,
        )
        self.started = time.time()
        identity = state.identity()
        kit: tuple[int, bytes] | None = None
        if identity is None:
            log.warning(
                "this node has no recovery kit (made before they existed): a lost computer"
                " cannot be recovered from the passphrase alone"
            )
        else:
            blob = make_kit(
                self.keys, identity.wrapped, identity.verifier, identity.credentials_blob()
            )
            kit = (time.time_ns(), blob)
        self.safekeeping = Safekeeping(self.owner, lambda: state.config_path.read_bytes(), kit)
        self.owner.on_catalog_changed.append(self.safekeeping.catalog_changed)
        self.node.pool.on_new_link.append(lambda _peer: self.safekeeping.publish_wanted.set())

    def close(self) -> None:
        self.outbox.close()
        self.unsent.close()
        self.catalog.close()
        self.store.close()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(self.node.run)
            await nursery.start(self.owner.run)
            await nursery.start(self.safekeeping.run)
            await nursery.start(serve_control, self.state.socket_path, self.handlers())
            if self.config.web:
                await nursery.start(self.serve_web)
            if self.config.metrics:
                from .metrics import serve_metrics  # prometheus_client only when asked for

                await nursery.start(serve_metrics, self.health, self.config.metrics)
            task_status.started(address)

    async def serve_web(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The web dashboard (``web.py``; Starlette and Hypercorn only when asked for)."""
        from .web import Sources, serve_web

        async def status(degrees: bool) -> dict[str, Any]:
            answer: dict[str, Any] = await self.op_status({"degrees": degrees}, _no_events)
            return answer

        sources = Sources(
            status=status,
            running=self.activities.running,
            snapshots=self.history.snapshots,
            entries=self.history.entries,
            fetch=self.owner.fetcher.fetch_many,
        )
        token = self.state.web_token()
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_web, sources, token, self.config.web)
            # The token never goes into the log (another local user may read a log file):
            # it stays in STATE/web-token (0600), and `lanvault dashboard` prints it.
            log.info(
                "web dashboard: http://%s/ ('lanvault dashboard --dir %s' prints its address"
                " with the token)",
                address,
                self.state.root,
            )
            task_status.started()

    # -- control operations --------------------------------------------------------------

    def handlers(self) -> dict[str, Any]:
        return {
            "ping": self.op_ping,
            "state": self.op_state,
            "status": self.op_status,
            "backup": self.op_backup,
            "restore": self.op_restore,
            "delete": self.op_delete,
            "reclaim": self.op_reclaim,
            "check": self.op_check,
            "kick": self.op_kick,
            "read_chunk": self.op_read_chunk,
            "read_chunks": self.op_read_chunks,
            "prune": self.op_prune,
            **self.history.handlers(),
        }

    async def op_prune(self, request: dict[str, Any], emit: Emit) -> Any:
        try:
            policy = (
                RetentionPolicy.parse(str(request["policy"]))
                if request.get("policy")
                else self.owner.retention or RetentionPolicy.parse(self.config.retention)
            )
        except RetentionFormatError as exc:
            raise OpError(str(exc)) from None
        return await self.owner.prune(policy, dry_run=bool(request.get("dry_run")))

    async def op_read_chunk(self, request: dict[str, Any], emit: Emit) -> Any:
        """A verified chunk of one of our versions, from the peers (for versions/ reads)."""
        try:
            address = bytes.fromhex(str(request.get("address", "")))
        except ValueError:
            raise OpError("bad chunk address") from None
        if len(address) != 32:
            raise OpError("bad chunk address")
        try:
            plain = await self.owner.fetcher.fetch_chunk(address)
        except RestoreError as exc:
            raise OpError(str(exc)) from None
        assert isinstance(plain, bytes)
        return {"data": base64.b64encode(plain).decode()}

    async def op_read_chunks(self, request: dict[str, Any], emit: Emit) -> Any:
        """Several verified chunks of our versions at once (versions/ read-ahead)."""
        raw = request.get("addresses")
        if not isinstance(raw, list) or not 1 <= len(raw) <= 256:
            raise OpError("read_chunks needs 1..256 addresses")
        try:
            addresses = [bytes.fromhex(str(a)) for a in raw]
        except ValueError:
            raise OpError("bad chunk address") from None
        if any(len(a) != 32 for a in addresses):
            raise OpError("bad chunk address")
        try:
            plains = await self.owner.fetcher.fetch_many(addresses)
        except RestoreError as exc:
            raise OpError(str(exc)) from None
        return Binary({"sizes": [len(p) for p in plains]}, b"".join(plains))

    async def op_kick(self, request: dict[str, Any], emit: Emit) -> Any:
        self.owner.kick()
        return {}

    async def op_ping(self, request: dict[str, Any], emit: Emit) -> Any:
        return {"node_id": self.node.node_id, "address": self.node.address}

    async def op_state(self, request: dict[str, Any], emit: Emit) -> Any:
        return Binary({"format": "json"}, await state_report_json(self.owner))

    async def health(self, own_degrees: bool = False) -> Health:
        """This node's health now (``lanvault/health.py``): status and metrics format it."""
        return await take_health(
            self.node,
            self.owner,
            self.store,
            self.catalog,
            self.safekeeping,
            own_degrees=own_degrees,
        )

    async def op_status(self, request: dict[str, Any], emit: Emit) -> Any:
        h = await self.health(own_degrees=bool(request.get("degrees", True)))
        nodes: list[dict[str, Any]] = [
            {
                "id": h.node_id,
                "address": h.address,
                "computer": h.computer,
                "up": True,
                "self": True,
                "capacity_bytes": h.advertised_capacity,
                "quota_bytes": h.quota,
                "used_bytes": h.used,
                "free_bytes": h.room,
                "disk_full": h.disk_full,
                "kept_over_quota": h.kept_over_quota,  # chunks a reclaim has to move
            }
        ]
        nodes += [
            {
                "id": peer.node_id,
                "address": peer.address,
                "computer": peer.computer,
                "up": peer.up,
                "gone": peer.gone,
                "capacity_bytes": peer.capacity,
                "used_bytes": peer.used,
                "free_bytes": peer.free,
                **presence_fields(peer.presence),
            }
            for peer in h.peers
        ]
        return {
            "node_id": h.node_id,
            "nodes": nodes,
            "roster_version": self.roster.version,  # the network's membership list it holds
            "held_by_owner": {str(o): n for o, n in h.held_by_owner.items()},
            "administrator": self.state.ca_key() is not None,
            "under_replicated_chunks": h.under_replicated,
            "own_chunks_below_degree": h.own_below_degree,
            "held_chunks_below_degree": h.held_below_degree,
            "pending_backlog": h.catalog["pending_versions"],
            "pending_cannot_complete": h.pending_reason,  # None: they wait for holders only
            "last_backup": {str(h.node_id): (h.last_backup_ns / 1e9) if h.last_backup_ns else None},
            "scrub_bad_copies": h.scrub_bad_copies,
            "bad_copies_found": damage_dict(h.damage),
            "recovery": {
                "kit": h.kit,
                "kit_holders": h.recovery.kit_holders,
                "catalog_seq": h.recovery.catalog_seq,
                "catalog_bytes": h.recovery.catalog_bytes,
                "catalog_holders": h.recovery.manifest_holders,
                "last_catalog_backup": h.recovery.last_catalog_backup or None,
                "catalog_behind_seconds": h.catalog_behind_seconds,
            },
            "bytes_received": h.bytes_received,
            "bytes_sent": h.bytes_sent,
            "network_bytes_sent": self.node.traffic.sent,  # on every peer link, since start
            "network_bytes_received": self.node.traffic.received,
            "network_id": self.config.network_id,
            "last_repair": dataclasses.asdict(self.node.last_repair),  # the last pass's counts
            "running": self.activities.running(),  # backups, restores... in progress
        }

    async def op_backup(self, request: dict[str, Any], emit: Emit) -> Any:
        path = Path(str(request.get("path", "")))
        degree = request.get("degree") or self.config.default_degree
        if not isinstance(degree, int) or not 1 <= degree <= 9:
            raise OpError("the degree must be 1..9")
        code = None
        if request.get("code"):
            if request.get("degree"):
                raise OpError("give a --degree or a --code, not both")
            try:
                code = Code.parse(str(request["code"]))
            except ValueError as exc:
                raise OpError(str(exc)) from None
            degree = code.as_degree()
        try:
            exclusions = Exclusions.from_request(request)
        except PatternError as exc:
            raise OpError(str(exc)) from None
        started = time.monotonic()
        try:
            with self.safekeeping.backup_running():
                report = await self.activities.run(
                    "backup",
                    str(path),
                    emit,
                    lambda progress: self.owner.backup_path(path, degree, progress, exclusions),
                )
        except Exception as exc:
            error = _user_error(exc, (BackupError, OSError))
            if error is None:
                raise
            raise OpError(str(error)) from None
        # "Backed up" means a new computer can bring it back: the catalog copy that names
        # these versions is on the peers before the command returns (restic's snapshot file).
        try:
            await self.safekeeping.secure(CATALOG_WAIT, functools.partial(_say, emit))
        except CatalogNotSafe as exc:
            raise OpError(
                f"the files' chunks are on the peers, but {str(exc).removeprefix('the ')}"
            ) from None
        return {
            "catalog_seq": self.safekeeping.report.catalog_seq,
            "files": report.files_done,
            "symlinks": report.links,
            "folders": report.folders,
            "bytes": report.bytes_done,
            "bytes_sent": report.bytes_sent,
            "bytes_read": report.bytes_read,
            "chunks_already_safe": report.chunks_skipped,
            "new": report.new,
            "changed": report.changed,
            "unmodified": report.unmodified,
            "removed": report.removed,
            "excluding": exclusions.describe() if exclusions else "",
            "skipped": report.entries_skipped[:SKIPPED_LISTED],
            "skipped_count": len(report.entries_skipped),
            "seconds": time.monotonic() - started,
            "degree": None if code else degree,  # copies; a coded backup names its code
            "code": str(code) if code else None,
        }

    async def op_restore(self, request: dict[str, Any], emit: Emit) -> Any:
        path = Path(str(request.get("path", "")))
        dest = Path(str(request["to"])) if request.get("to") else None
        at_ns = request.get("at_ns")
        if at_ns is not None and not isinstance(at_ns, int):
            raise OpError("bad time")
        started = time.monotonic()
        try:
            report = await self.activities.run(
                "restore",
                str(path),
                emit,
                lambda progress: self.owner.restorer.restore_path(path, dest, progress, at_ns),
            )
        except Exception as exc:
            error = _user_error(exc, (RestoreError, OSError))
            if error is None:
                raise
            raise OpError(str(error)) from None
        return {
            "files": report.files_done,
            "symlinks": report.links,
            "folders": report.folders,
            "links_not_made": report.links_not_made[:SKIPPED_LISTED],
            "links_not_made_count": len(report.links_not_made),
            "hard_links": report.hard_links,
            "xattrs_refused": report.xattrs_refused[:SKIPPED_LISTED],
            "xattrs_refused_count": len(report.xattrs_refused),
            "bytes": report.bytes_done,
            "seconds": time.monotonic() - started,
        }

    async def op_delete(self, request: dict[str, Any], emit: Emit) -> Any:
        try:
            return await self.owner.delete_path(Path(str(request.get("path", ""))))
        except BackupError as exc:
            raise OpError(str(exc)) from None

    async def op_reclaim(self, request: dict[str, Any], emit: Emit) -> Any:
        size = request.get("bytes")
        if not isinstance(size, int) or size < 0:
            raise OpError("reclaim needs a size of 0 or more bytes")
        # The new quota is in force (and kept across restarts) from the start, even when the
        # command is interrupted before every chunk is moved: the node finishes the moving.
        self.config.quota = size
        self.state.save_config(self.config)
        reports: list[ReclaimReport] = []

        async def work(progress: Callable[[Progress], None]) -> Progress:
            shown = Progress()

            def moved(report: ReclaimReport) -> None:
                shown.files_done = report.dropped
                shown.bytes_done = report.freed_bytes
                shown.bytes_total = max(report.to_free_bytes, report.freed_bytes)
                progress(shown)

            reports.append(await self.node.reclaim(size, moved))
            return shown

        await self.activities.run("reclaim", f"to {size} B", emit, work, unit="chunks")
        return {
            **reports[0].as_dict(),
            "capacity_bytes": self.store.capacity,
            "used_bytes": self.store.used_bytes,
            "records_bytes": self.store.record_bytes,
        }

    async def op_check(self, request: dict[str, Any], emit: Emit) -> Any:
        repair = bool(request.get("repair"))
        try:
            report = await in_thread(self.store.check, repair)
        except OSError as exc:  # the disk, or a cloud node's bucket, cannot be read
            raise OpError(f"cannot check the store: {exc}") from None
        wanted = await in_thread(self.catalog.wanted_degrees)
        degrees = (
            await self.node.replication.degrees(self.node.node_id, sorted(wanted)) if wanted else {}
        )
        low = {a: d for a, d in wanted.items() if degrees.get(a, 0) < d}
        lost = [a for a in low if degrees.get(a, 0) == 0]
        coded = await check_coded(self.owner)
        repaired = 0
        if repair:
            for address, degree in low.items():
                if degrees.get(address, 0) == 0:
                    continue
                repaired += await rereplicate(self.owner, address, degree)
            await self.node.repair_once()
        data = {}
        if request.get("read_data"):
            sample = request.get("sample", 100.0)
            if not isinstance(sample, int | float) or not 0 < sample <= 100:
                raise OpError("the sample must be a percentage in (0, 100]")
            reports: list[ReadDataReport] = []

            async def work(progress: Callable[[Progress], None]) -> Progress:
                shown = Progress()

                def seen(read: ReadDataReport, total: int) -> None:
                    done = read.copies_verified + len(read.bad_copies) + read.unreadable
                    shown.files_done, shown.files_total = done, total
                    shown.bytes_done = read.bytes_read  # the total is known once all is read
                    shown.bytes_total = read.bytes_read * total // max(done, 1)
                    progress(shown)

                reports.append(await read_data(self.owner, float(sample), repair, seen))
                return shown

            await self.activities.run("check", "read data", emit, work, unit="copies")
            read = reports[0]
            data = {
                "read_data_chunks": read.chunks,
                "read_data_copies_verified": read.copies_verified,
                "read_data_bad_copies": read.bad_copies,
                "read_data_unreadable_copies": read.unreadable,
                "read_data_bytes": read.bytes_read,
                "read_data_copies_dropped": read.copies_dropped,
                "read_data_copies_made": read.copies_made,
            }
        return data | {
            "store_chunks_verified": report.verified,
            "store_bad_copies": [f"{b.owner}:{b.address.hex()} {b.reason}" for b in report.bad],
            "store_orphan_records": report.orphan_records,  # garbage: compaction takes it
            "store_orphan_bytes": report.orphan_bytes,
            "store_damaged_records": report.damaged_records,
            "store_damaged_bytes": report.damaged_bytes,
            "store_torn_bytes": report.torn_bytes,
            "bad_copies_found_before": damage_dict(report.found_before),
            "own_chunks_checked": len(wanted),
            "own_chunks_below_degree": len(low),
            "own_chunks_lost": len(lost),
            "own_coded_chunks_checked": coded.checked,
            "own_coded_chunks_short": coded.short,  # fewer than N shares: holders rebuild them
            "own_coded_chunks_lost": coded.lost,  # fewer than K shares answer
            "copies_made": repaired,
        }


async def run_daemon(state: StateDir, config: Config) -> None:
    limit = raise_open_file_limit()
    log.debug("open file limit: %d", limit)
    daemon = Daemon(state, config)
    try:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(daemon.run)
            log.info(
                "node %d of network %s listening on %s", config.node_id, config.network_id, address
            )
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping (%s)", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        daemon.close()
