"""The holder role: serving this node's chunk store to peers.

Puts are collected by writer tasks into batches and stored with one group commit
(``ChunkStore.put_many``), so many concurrent PUTCHUNKs cost one pair of flushes. A STORED answer
is sent only after that commit returned.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from chunkstore.errors import (
    CatalogFormatError,
    ChunkNotFoundError,
    CorruptChunkError,
    DiskFullError,
    InvalidIdError,
    QuotaExceededError,
)
from chunkstore.kitexchange import KitOffer, decoy_params
from chunkstore.recovery import RecoveryKit, parse_kit
from chunkstore.store import ChunkStore, PutItem

from .identity import IdentityError
from .messages import (
    STORED_ALREADY,
    STORED_ERROR_BASE,
    STORED_NEW,
    Chunk,
    ChunksMany,
    Delete,
    Deleted,
    Error,
    ErrorCode,
    GetChunk,
    GetChunks,
    GetMeta,
    Holding,
    Kit,
    KitChallenge,
    KitProof,
    KitRequest,
    Message,
    Meta,
    Ok,
    PutChunk,
    PutChunks,
    PutMeta,
    Query,
    RelayChunks,
    Removed,
    Request,
    Status,
    StatusReply,
    Stored,
    StoredMany,
    Wanted,
)
from .offload import in_thread
from .roster import ROSTER_NAME, RosterBook

log = logging.getLogger(__name__)
# Chunks one holder commit (segment flush + index transaction) takes at most: the writer joins
# the PUTCHUNKS waiting for it up to this many (a PUTCHUNKS of small chunks holds ~100).
BATCH_LIMIT = 512
KIT_BLOB = "recovery-kit"
KIT_FIRST_DELAY = 1.0  # seconds between two passphrase proofs for one owner, doubled per failure
KIT_MAX_DELAY = 60.0
PAKE_PER_SECOND = 50  # SPAKE2 computations for strangers, all together (~25 % of a core)


class KitGate:
    """Hands out recovery kits on anonymous connections, through the passphrase exchange only.

    The exchange is SPAKE2 (``chunkstore.kitexchange``): a stranger gets one online guess per
    attempt and nothing to test offline. One proof per owner per second at most, the delay
    doubling after each failure (up to a minute). An owner whose kit is not here gets a decoy
    challenge that looks like a real one and always fails, so nobody learns who keeps a kit
    here (``secret`` keys the decoy's salt: give one that survives restarts, or a decoy's
    salt changes when the node restarts and a real kit's does not). SPAKE2 is pure Python (~5 ms a side): it runs in a thread, at most
    ``PAKE_PER_SECOND`` exchanges a second for all strangers together.
    """

    def __init__(
        self, store: ChunkStore, limiter: trio.CapacityLimiter, secret: bytes | None = None
    ) -> None:
        self.store = store
        self._limiter = limiter
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._next_try: dict[int, float] = {}
        self._delay: dict[int, float] = {}
        self._busy: dict[int, trio.Lock] = {}
        self._pace = trio.Lock()
        self._next_pake = 0.0
        self.refused = 0

    async def _kit(self, owner: int) -> tuple[RecoveryKit, bytes] | None:
        found = await in_thread(self.store.get_blob, owner, KIT_BLOB, limiter=self._limiter)
        if found is None:
            return None
        try:
            return parse_kit(found[1]), found[1]
        except CatalogFormatError as exc:
            log.warning("the recovery kit of node %d is damaged: %s", owner, exc)
            return None

    async def _paced(self) -> None:
        async with self._pace:
            wait = self._next_pake - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            self._next_pake = trio.current_time() + 1 / PAKE_PER_SECOND

    async def challenge(self, request: KitRequest, sessions: dict[bytes, KitOffer]) -> Message:
        found = await self._kit(request.owner)
        if found is None:  # a decoy: a verifier nobody knows, the salt a real kit would have
            verifier, params = secrets.token_bytes(32), decoy_params(self._secret, request.owner)
        else:
            verifier, params = found[0].verifier, found[0].kdf
        await self._paced()
        offer = await in_thread(KitOffer, verifier, request.owner, params)
        nonce = secrets.token_bytes(32)
        sessions.clear()  # one exchange at a time per connection
        sessions[nonce] = offer
        return KitChallenge(
            request.req, params.opslimit, params.memlimit, params.salt, nonce, offer.message
        )

    async def answer(self, proof: KitProof, sessions: dict[bytes, KitOffer]) -> Message:
        offer = sessions.pop(proof.nonce, None)  # one use
        if offer is None or offer.owner != proof.owner:
            return Error(proof.req, ErrorCode.FORBIDDEN, "that challenge was not issued here")
        async with self._busy.setdefault(proof.owner, trio.Lock()):
            wait = self._next_try.get(proof.owner, 0.0) - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            await self._paced()
            ok = await in_thread(offer.check, proof.pake, proof.confirm)
            found = await self._kit(proof.owner) if ok else None
            ok = found is not None
            delay = (
                KIT_FIRST_DELAY
                if ok
                else min(KIT_MAX_DELAY, 2 * self._delay.get(proof.owner, KIT_FIRST_DELAY / 2))
            )
            self._delay[proof.owner] = delay if not ok else KIT_FIRST_DELAY / 2
            self._next_try[proof.owner] = trio.current_time() + delay
        if found is None:
            self.refused += 1
            log.warning(
                "refused a recovery-kit request for node %d (wrong passphrase)", proof.owner
            )
            return Error(proof.req, ErrorCode.FORBIDDEN, "wrong passphrase")
        log.info("handed the recovery kit of node %d to a passphrase proof", proof.owner)
        return Kit(proof.req, offer.seal(found[1]))


@dataclass(slots=True)
class _PendingPut:
    """One request's chunks, stored together in the next group commit."""

    items: list[PutItem]
    done: trio.Event = field(default_factory=trio.Event)
    results: list[bool | BaseException] = field(default_factory=list)


class HolderService:
    def __init__(
        self,
        store: ChunkStore,
        limiter: trio.CapacityLimiter,
        status: Callable[[], dict[str, object]],
        on_removed: Callable[[int, bytes], None],
        on_corrupt: Callable[[int, bytes], None],
        roster: RosterBook | None = None,
    ) -> None:
        self.store = store
        self._roster = roster
        self._limiter = limiter
        self._status = status
        self._on_removed = on_removed
        self._on_corrupt = on_corrupt
        # Set by this node's owner role: which of its own chunks it still wants (None: not
        # the owner asked about).
        self.wanted: Callable[[int, tuple[bytes, ...]], Awaitable[set[bytes] | None]] | None = None
        # Set by the node: passes a RELAYCHUNKS on to the next holder it names (None: this
        # node forwards nothing and stores only its own copies).
        self.relay: Callable[[RelayChunks], Awaitable[None]] | None = None
        self._send, self._receive = trio.open_memory_channel[_PendingPut](4 * BATCH_LIMIT)
        self.bytes_received = 0
        self.disk_full = False  # the last batch was refused for want of disk space
        self.bytes_sent = 0

    async def run_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One group-commit writer; run two so one hashes while the other flushes."""
        task_status.started()
        async for first in self._receive.clone():
            batch = [first]
            count = len(first.items)
            while count < BATCH_LIMIT:
                try:
                    more = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(more)
                count += len(more.items)
            await self._commit(batch)

    async def _commit(self, batch: list[_PendingPut]) -> None:
        items = [item for pending in batch for item in pending.items]
        try:
            stored = await in_thread(self.store.put_many, items, limiter=self._limiter)
            flat: list[bool | BaseException] = list(stored)
        except QuotaExceededError:
            # Sort out which of the batch fit, one by one.
            flat = []
            for item in items:
                try:
                    [one] = await in_thread(self.store.put_many, [item], limiter=self._limiter)
                    flat.append(one)
                except Exception as exc:
                    flat.append(exc)
        except Exception as exc:
            log.error("storing a batch of %d chunks failed: %s", len(items), exc)
            flat = [exc] * len(items)
        finally:
            self._note_disk(flat if len(flat) == len(items) else [])
            position = 0
            for pending in batch:
                if len(flat) == len(items):
                    pending.results = flat[position : position + len(pending.items)]
                else:  # cancelled half-way: nothing is known to be stored
                    pending.results = [OSError("the store was interrupted")] * len(pending.items)
                position += len(pending.items)
                pending.done.set()

    def _note_disk(self, results: list[bool | BaseException]) -> None:
        """One line when the disk fills (the owners then place their chunks elsewhere, as
        this node advertises no room) and one when it has room again; none per batch."""
        full = next((r for r in results if isinstance(r, DiskFullError)), None)
        if full is not None and not self.disk_full:
            log.warning(
                "the store's disk is full: chunks are refused (owners place them elsewhere)"
                " until it has room again (%s)",
                full,
            )
            self.disk_full = True
        elif full is None and self.disk_full and any(isinstance(r, bool) for r in results):
            log.info("the store's disk has room again: taking chunks")
            self.disk_full = False

    async def put_batch(self, items: list[PutItem]) -> list[bool | BaseException]:
        """Store chunks durably (group commit); per chunk, whether it is new, or the error."""
        pending = _PendingPut(items)
        await self._send.send(pending)
        await pending.done.wait()
        return pending.results

    async def put(self, item: PutItem) -> bool:
        [result] = await self.put_batch([item])
        if isinstance(result, BaseException):
            raise result
        return result

    def _get_many(
        self, owner: int, addresses: tuple[bytes, ...]
    ) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
        envelopes: list[bytes] = []
        codes: list[int] = []
        unreadable: list[OSError] = []
        for found in self.store.get_many(owner, addresses):
            if isinstance(found, bytes):
                envelopes.append(found)
                codes.append(0)
                continue
            envelopes.append(b"")
            if isinstance(found, ChunkNotFoundError):
                codes.append(ErrorCode.NOT_FOUND)
            elif isinstance(found, CorruptChunkError):
                log.warning("corrupt copy of a chunk of node %d: %s", owner, found)
                codes.append(ErrorCode.CORRUPT)
            elif isinstance(found, OSError):  # the disk or the bucket failed: try elsewhere
                unreadable.append(found)
                codes.append(ErrorCode.INTERNAL)
            else:
                raise found  # InvalidIdError: the request is refused whole
        if unreadable:  # one line per request, not one per chunk, while a bucket is away
            log.error(
                "cannot read %d of %d chunks of node %d: %s",
                len(unreadable),
                len(addresses),
                owner,
                unreadable[0],
            )
        return tuple(envelopes), tuple(codes)

    async def _store_batch(self, message: PutChunks | RelayChunks) -> tuple[int, ...]:
        """Store a batch durably; a result per chunk (STORED_NEW, STORED_ALREADY, or an error
        code + STORED_ERROR_BASE): a bad or refused chunk does not sink the others."""
        results = [STORED_NEW] * len(message.chunks)
        valid: list[tuple[int, PutItem]] = []
        for index, (address, envelope) in enumerate(message.chunks):
            item = PutItem(message.owner, address, envelope, message.degree)
            try:
                self.store.check_item(item)
                valid.append((index, item))
            except InvalidIdError:
                results[index] = STORED_ERROR_BASE + ErrorCode.BAD_MESSAGE
        outcomes = await self.put_batch([item for _i, item in valid]) if valid else []
        for (index, item), outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, QuotaExceededError):
                results[index] = STORED_ERROR_BASE + ErrorCode.QUOTA_EXCEEDED
            elif isinstance(outcome, InvalidIdError):
                results[index] = STORED_ERROR_BASE + ErrorCode.BAD_MESSAGE
            elif isinstance(outcome, BaseException):
                results[index] = STORED_ERROR_BASE + ErrorCode.INTERNAL
            else:
                results[index] = STORED_NEW if outcome else STORED_ALREADY
                self.bytes_received += len(item.envelope)
        return tuple(results)

    async def _store_and_relay(self, message: RelayChunks) -> Message:
        """Store a RELAYCHUNKS and, at the same time, forward it down its chain; answer with
        this node's own results once both are done. The chunks go on even where this node
        refused them (full): the next holder's copies do not depend on this one's."""
        results: list[tuple[int, ...]] = []
        failure: list[Exception] = []

        async def store() -> None:
            try:
                results.append(await self._store_batch(message))
            except (QuotaExceededError, OSError) as exc:  # answered below, after the relay
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store)
            if self.relay is not None:
                nursery.start_soon(self.relay, message)
        if failure:
            raise failure[0]
        return StoredMany(message.req, results[0])

    async def _roster_record(self, message: PutMeta | GetMeta) -> Message:
        """The network's roster, under its reserved record name: served, or taken if newer."""
        if self._roster is None:
            return Error(message.req, ErrorCode.NOT_FOUND, "this node keeps no roster")
        if isinstance(message, GetMeta):
            return Meta(message.req, ROSTER_NAME, self._roster.version, self._roster.blob)
        try:
            await in_thread(self._roster.offer, message.blob)
        except IdentityError as exc:
            return Error(message.req, ErrorCode.FORBIDDEN, str(exc))
        return Ok(message.req)

    async def handle(self, message: Request, peer_id: int) -> Message:
        """Answer one request from authenticated node ``peer_id``."""
        try:
            return await self._dispatch(message, peer_id)
        except QuotaExceededError as exc:
            return Error(message.req, ErrorCode.QUOTA_EXCEEDED, str(exc))
        except InvalidIdError as exc:
            return Error(message.req, ErrorCode.BAD_MESSAGE, str(exc))
        except ChunkNotFoundError as exc:
            return Error(message.req, ErrorCode.NOT_FOUND, str(exc))
        except OSError as exc:
            log.error("I/O error serving node %d: %s", peer_id, exc)
            return Error(message.req, ErrorCode.INTERNAL, f"I/O error: {exc.strerror or exc}")

    def _stranger_owner(self, owner: int, sender: int) -> bool:
        """Chunks are kept only for enrolled members (never an invented owner id)."""
        return self._roster is not None and not self._roster.admits_owner(owner, sender)

    async def _dispatch(self, message: Request, peer_id: int) -> Message:
        req = message.req
        if isinstance(message, PutChunk | PutChunks | RelayChunks) and self._stranger_owner(
            message.owner, peer_id
        ):
            return Error(req, ErrorCode.FORBIDDEN, f"node {message.owner} is not a member")
        if isinstance(message, RelayChunks):
            return await self._store_and_relay(message)
        if isinstance(message, PutMeta | GetMeta) and message.name == ROSTER_NAME:
            return await self._roster_record(message)
        if isinstance(message, PutChunk):
            stored = await self.put(
                PutItem(message.owner, message.address, message.envelope, message.degree)
            )
            self.bytes_received += len(message.envelope)
            return Stored(req, message.address, stored)
        if isinstance(message, PutChunks):
            return StoredMany(req, await self._store_batch(message))
        if isinstance(message, GetChunks):
            envelopes, codes = await in_thread(
                self._get_many, message.owner, message.addresses, limiter=self._limiter
            )
            self.bytes_sent += sum(len(e) for e in envelopes)
            for address, code in zip(message.addresses, codes, strict=True):
                if code == ErrorCode.CORRUPT:
                    self._on_corrupt(message.owner, address)
            return ChunksMany(req, envelopes, codes)
        if isinstance(message, GetChunk):
            try:
                envelope = await in_thread(
                    self.store.get, message.owner, message.address, limiter=self._limiter
                )
            except CorruptChunkError as exc:
                log.warning("corrupt copy of a chunk of node %d: %s", message.owner, exc)
                self._on_corrupt(message.owner, message.address)
                return Error(req, ErrorCode.CORRUPT, str(exc))
            self.bytes_sent += len(envelope)
            return Chunk(req, message.address, envelope)
        if isinstance(message, Delete):
            if message.owner != peer_id:
                return Error(req, ErrorCode.FORBIDDEN, "only a chunk's owner may delete it")
            removed = await in_thread(
                self.store.delete_many, message.owner, message.addresses, limiter=self._limiter
            )
            return Deleted(req, len(removed))
        if isinstance(message, Query):
            held = await in_thread(
                self.store.which_held, message.owner, message.addresses, limiter=self._limiter
            )
            return Holding(req, tuple(a for a in message.addresses if a in held))
        if isinstance(message, Wanted):
            kept = await self.wanted(message.owner, message.addresses) if self.wanted else None
            if kept is None:
                return Error(req, ErrorCode.NOT_FOUND, f"this is not node {message.owner}")
            return Holding(req, tuple(a for a in message.addresses if a in kept))
        if isinstance(message, Removed):
            self._on_removed(message.owner, message.address)
            return Ok(req)
        if isinstance(message, PutMeta):
            if message.owner != peer_id:
                return Error(req, ErrorCode.FORBIDDEN, "only the owner may write its records")
            await in_thread(
                self.store.put_blob,
                message.owner,
                message.name,
                message.seq,
                message.blob,
                limiter=self._limiter,
            )
            return Ok(req)
        if isinstance(message, GetMeta):
            found = await in_thread(
                self.store.get_blob, message.owner, message.name, limiter=self._limiter
            )
            if found is None:
                return Error(req, ErrorCode.NOT_FOUND, f"no record {message.name}")
            return Meta(req, message.name, found[0], found[1])
        if isinstance(message, Status):
            return StatusReply(req, self._status())
        return Error(req, ErrorCode.BAD_MESSAGE, f"{type(message).__name__} is not a request")
