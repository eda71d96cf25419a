"""The network's roster: which node ids are members (with their certificate) and which were
removed, signed by the network's CA.

Only a node holding the CA key (an *administrator*: the first node, unless the user made
another) can change it: by enrolling a node (``node/enrolment.py``) or removing one
(``lanvault remove-node``). Every node keeps the newest roster it has seen, checks its
signature against the CA certificate it already has, and passes it on: members pull a
peer's roster when the peer's STATUS shows a higher version (``ROSTER_NAME`` through
GETMETA). A node refuses links from removed ids and from enrolled ids presenting another
certificate than theirs, and keeps chunks only for owners the roster lists (or a sender's own).

A node with no roster at all (state made by a lanvault that predates it, or the in-process
test networks) admits every certificate of its CA, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import trio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from chunkstore.atomic import write_atomic

from .identity import IdentityError
from .membership import Membership
from .messages import GetMeta, Meta, StatusReply
from .offload import in_thread
from .pool import PeerPool

log = logging.getLogger(__name__)
ROSTER_NAME = "network-roster"  # the GETMETA name a node serves its roster under
_MAGIC = b"LVROSTER1"
MAX_ROSTER = 200_000  # bytes: ~2,000 members; a roster must fit a META answer


@dataclass(frozen=True, slots=True)
class Roster:
    network_id: str
    version: int
    members: dict[int, str] = field(default_factory=dict)  # node id -> certificate SHA-256
    removed: frozenset[int] = frozenset()

    def admits(self, node_id: int, fingerprint: str | None = None) -> bool:
        if node_id in self.removed or node_id not in self.members:
            return False
        return fingerprint is None or self.members[node_id] == fingerprint

    def with_member(self, node_id: int, fingerprint: str) -> Roster:
        if node_id in self.removed or node_id in self.members:
            raise IdentityError(f"node id {node_id} is already taken in this network")
        return Roster(
            self.network_id, self.version + 1, {**self.members, node_id: fingerprint}, self.removed
        )

    def without(self, node_id: int) -> Roster:
        if node_id not in self.members:
            raise IdentityError(f"node {node_id} is not a member of this network")
        members = {k: v for k, v in self.members.items() if k != node_id}
        return Roster(self.network_id, self.version + 1, members, self.removed | {node_id})

    def sign(self, ca_key_pem: bytes) -> bytes:
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the network CA key is not an EC key")
        body: bytes = msgpack.packb(
            [
                self.network_id,
                self.version,
                sorted(self.members.items()),
                sorted(self.removed),
            ],
            use_bin_type=True,
        )
        signature = key.sign(_MAGIC + body, ec.ECDSA(hashes.SHA256()))
        packed: bytes = msgpack.packb([body, signature], use_bin_type=True)
        return packed


def open_roster(blob: bytes, ca_cert_pem: bytes) -> Roster:
    """A roster blob checked against the CA; ``IdentityError`` if forged or malformed."""
    if len(blob) > MAX_ROSTER:
        raise IdentityError("the roster is too large")
    try:
        body, signature = msgpack.unpackb(blob, raw=False, max_bin_len=MAX_ROSTER)
        ca = x509.load_pem_x509_certificate(ca_cert_pem).public_key()
        assert isinstance(ca, ec.EllipticCurvePublicKey)
        ca.verify(signature, _MAGIC + body, ec.ECDSA(hashes.SHA256()))
        network_id, version, members, removed = msgpack.unpackb(body, raw=False)
        roster = Roster(
            str(network_id),
            int(version),
            {int(k): str(v) for k, v in members},
            frozenset(int(n) for n in removed),
        )
    except InvalidSignature:
        raise IdentityError("the roster is not signed by this network's authority") from None
    except Exception as exc:  # any malformed part: not a roster
        raise IdentityError(f"the roster is damaged: {exc}") from None
    if roster.version < 1 or any(not 0 <= n < 2**32 for n in (*roster.members, *roster.removed)):
        raise IdentityError("the roster is damaged: out-of-range numbers")
    return roster


class RosterBook:
    """The roster a node holds (``STATE/tls/roster``): loaded at start, replaced by a newer
    valid one from a peer or an administrator's command, written atomically under a lock."""

    def __init__(self, path: Path, ca_cert_pem: bytes) -> None:
        self.path = path
        self.ca_cert_pem = ca_cert_pem
        self.roster: Roster | None = None
        self.blob = b""
        self._stamp: tuple[int, int] | None = None
        self.changed: list[Callable[[Roster], None]] = []
        self.refresh()

    @property
    def version(self) -> int:
        return self.roster.version if self.roster else 0

    def check(self, node_id: int, fingerprint: str) -> None:
        """Raise ``IdentityError`` for a certificate the roster refuses (TLS admission): a
        removed id, or an enrolled id presenting another certificate than its own.

        An id the roster does not list yet is let in: only the administrator makes
        certificates, and only while enrolling, so it is a member enrolled after our roster
        was signed (its STATUS then shows the newer roster, which we pull). Refusing it would
        leave a new node and the others unable to meet while the administrator is away.
        Its chunks are kept only once the roster lists it (or as its own: ``admits_owner``).
        """
        roster = self.roster
        if roster is None:
            return
        if node_id in roster.removed:
            raise IdentityError(f"node {node_id} was removed from this network")
        known = roster.members.get(node_id)
        if known is not None and known != fingerprint:
            raise IdentityError(f"node {node_id} presented another certificate than its own")

    def is_removed(self, node_id: int) -> bool:
        return self.roster is not None and node_id in self.roster.removed

    def admits_owner(self, owner: int, sender: int | None = None) -> bool:
        """Keep chunks for ``owner``? Listed members, and a sender storing its own (its
        certificate, which only the administrator makes, proves it was enrolled)."""
        if self.roster is None:
            return True
        if owner in self.roster.removed:
            return False
        return owner in self.roster.members or owner == sender

    def refresh(self) -> bool:
        """Read the file again if it changed (an administrator's command wrote it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        blob = self.path.read_bytes()
        try:
            roster = open_roster(blob, self.ca_cert_pem)
        except IdentityError as exc:
            log.error("%s: %s (keeping the roster in memory)", self.path, exc)
            return False
        if roster.version <= self.version:
            return False
        self._take(roster, blob)
        return True

    def offer(self, blob: bytes) -> bool:
        """A roster from a peer: taken (and written) if valid and newer than ours."""
        roster = open_roster(blob, self.ca_cert_pem)
        with self.locked():
            self.refresh()
            if roster.version <= self.version:
                return False
            write_roster(self.path, blob)
        self._stamp = None
        self._take(roster, blob)
        return True

    def _take(self, roster: Roster, blob: bytes) -> None:
        self.roster, self.blob = roster, blob
        log.info("network roster version %d: %d members", roster.version, len(roster.members))
        for hook in self.changed:
            hook(roster)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with roster_lock(self.path):
            yield


@contextlib.contextmanager
def roster_lock(path: Path) -> Iterator[None]:
    """Serializes writers of one roster file (the daemon and an administrator's command)."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_roster(path: Path, blob: bytes) -> None:
    write_atomic(path, blob)


class RosterSync:
    """Keeps a node's roster current and enforces it: pulls a newer one from a peer whose
    STATUS shows it (``note_status``), re-reads the file an administrator's command wrote,
    and closes links to nodes the roster no longer admits."""

    def __init__(
        self,
        book: RosterBook,
        pool: PeerPool,
        membership: Membership,
        own_id: int,
        interval: float,
    ) -> None:
        self.book = book
        self._pool = pool
        self._membership = membership
        self._own_id = own_id
        self._interval = interval
        self._sources: dict[int, int] = {}  # peer -> the roster version its STATUS showed
        self._wake = trio.Event()

    def note_status(self, peer: int, reply: StatusReply) -> None:
        version = reply.info.get("roster_version")
        if type(version) is int and version > self.book.version:
            self._sources[peer] = version
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = trio.Event()
            await in_thread(self.book.refresh)
            await self._pull()
            await self.enforce()

    async def _pull(self) -> None:
        sources, self._sources = self._sources, {}
        for peer, _version in sorted(sources.items(), key=lambda kv: -kv[1]):
            reply = await self._pool.request_quietly(
                peer, lambda r: GetMeta(r, self._own_id, ROSTER_NAME), 10
            )
            if not isinstance(reply, Meta):
                continue
            try:
                if await in_thread(self.book.offer, reply.blob):
                    return
            except IdentityError as exc:
                log.warning("node %d offered a roster that fails: %s", peer, exc)

    async def enforce(self) -> None:
        roster = self.book.roster
        if roster is None:
            return
        for peer in roster.removed:
            self._membership.forget(peer)
        for peer in self._pool.linked():
            if peer in roster.removed:
                log.warning("node %d was removed from the network: link closed", peer)
                await self._pool.drop(peer)
