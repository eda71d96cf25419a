"""Enrolment: a computer joins the network by a certificate request an administrator signs.

The join code (``identity.Invitation``) carries the CA certificate, a one-time secret and the
administrator's address. The joining computer makes its own key, connects without a
certificate, checks the server's certificate against the CA *before* it sends anything, and
sends ENROL: its node id, the invitation's id, the request, and an HMAC of the request under
the secret. The administrator (a node holding the CA key) checks the MAC against an invitation
it issued and has not used, that the id is not taken, signs a certificate for the request's
key, records it in the roster, and only then uses up the invitation. The CA key never leaves
the administrator; an ordinary member cannot make certificates.

Invitations are files ``STATE/invites/ID`` (0600, the secret and an expiry), written by
``lanvault invite`` and used up by the node that answers ENROL (``os.unlink`` decides a race).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from .identity import (
    IdentityError,
    Invitation,
    NetworkCA,
    certificate_request,
    invite_id,
    issue_certificate,
    issued_by,
    pem_fingerprint,
    requested_key,
)
from .messages import (
    SUPPORTED_VERSIONS,
    Enrol,
    Enrolled,
    Error,
    ErrorCode,
    Hello,
    Message,
    ProtocolError,
)
from .offload import in_thread
from .roster import RosterBook, open_roster, roster_lock, write_roster
from .transport import Channel, PeerUnavailable, RemoteError, connect_anonymous

log = logging.getLogger(__name__)
INVITE_LIFETIME = 7 * 86400.0  # seconds an invitation stays valid by default
ENROL_TIMEOUT = 30.0
_INVITE = struct.Struct(">32sd")  # secret, expiry (Unix time)
_DOMAIN = b"lanvault-enrol-v1"


def enrol_mac(secret: bytes, node_id: int, csr: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + node_id.to_bytes(4, "big") + csr, hashlib.sha256).digest()


class Invites:
    """The one-time invitations an administrator issued (a folder of small files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def create(self, lifetime: float = INVITE_LIFETIME) -> bytes:
        self.folder.mkdir(mode=0o700, exist_ok=True)
        secret = secrets.token_bytes(32)
        path = self.folder / invite_id(secret).hex()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, _INVITE.pack(secret, time.time() + lifetime))
            os.fsync(fd)
        finally:
            os.close(fd)
        return secret

    def secret(self, invite: bytes) -> bytes | None:
        """The secret of a valid, unused invitation (None if unknown, used or expired)."""
        try:
            data = (self.folder / invite.hex()).read_bytes()
            secret, expiry = _INVITE.unpack(data)
        except (OSError, struct.error):
            return None
        if time.time() > expiry:
            self.use(invite)
            return None
        return bytes(secret)

    def use(self, invite: bytes) -> bool:
        """Use the invitation up; False if it was already (whoever unlinks it first wins)."""
        try:
            (self.folder / invite.hex()).unlink()
            return True
        except FileNotFoundError:
            return False

    def pending(self) -> int:
        try:
            return sum(1 for _ in self.folder.iterdir())
        except FileNotFoundError:
            return 0


@dataclass
class Enroller:
    """The administrator's side: answers ENROL on anonymous connections."""

    ca: NetworkCA  # with its key
    invites: Invites
    book: RosterBook

    def enrol(self, request: Enrol) -> tuple[bytes, bytes]:
        """Sign and record the request: (certificate PEM, roster blob); ``IdentityError`` if
        refused. Synchronous (file locks, signatures): run it in a thread."""
        secret = self.invites.secret(request.invite)
        if secret is None or not hmac.compare_digest(
            enrol_mac(secret, request.node_id, request.csr), request.mac
        ):
            raise IdentityError("unknown, used or expired invitation")
        key = requested_key(request.csr, request.node_id)
        with roster_lock(self.book.path):
            self.book.refresh()
            if self.book.roster is None:
                raise IdentityError("this node keeps no roster: it cannot enrol")
            cert_pem = issue_certificate(self.ca, request.node_id, key)
            roster = self.book.roster.with_member(request.node_id, pem_fingerprint(cert_pem))
            if not self.invites.use(request.invite):
                raise IdentityError("unknown, used or expired invitation")
            blob = roster.sign(self.ca.key_pem)
            write_roster(self.book.path, blob)
        self.book.refresh()
        log.info("enrolled node %d (roster version %d)", request.node_id, roster.version)
        return cert_pem, blob

    async def answer(self, request: Enrol) -> Message:
        try:
            cert, roster = await in_thread(self.enrol, request)
        except IdentityError as exc:
            await trio.sleep(1.0)  # a stranger's guesses cost it time, not us
            return Error(request.req, ErrorCode.FORBIDDEN, str(exc))
        return Enrolled(request.req, cert, roster)


@dataclass(frozen=True)
class Enrolment:
    key_pem: bytes
    cert_pem: bytes
    roster: bytes
    address: str  # the administrator that signed


async def enrol(invitation: Invitation, node_id: int, extra_addresses: list[str]) -> Enrolment:
    """Join the network of ``invitation`` as ``node_id``: ask its administrator to sign."""
    key_pem, csr = await in_thread(certificate_request, node_id)
    mac = enrol_mac(invitation.secret, node_id, csr)
    problems: list[str] = []
    for address in dict.fromkeys([*invitation.addresses, *extra_addresses]):
        try:
            auth, der = await connect_anonymous(address)
        except PeerUnavailable as exc:
            problems.append(str(exc))
            continue
        channel = Channel(auth, Hello(SUPPORTED_VERSIONS, 0, "", ""))
        try:
            if not issued_by(der, invitation.ca_cert_pem):  # before anything is sent
                problems.append(f"{address} is not a node of this network")
                continue
            with trio.fail_after(ENROL_TIMEOUT):
                await channel.handshake()
                await channel.send(Enrol(1, node_id, invitation.invite_id, csr, mac))
                answer = await channel.receive()
            if isinstance(answer, Error):
                raise RemoteError(answer)
            if not isinstance(answer, Enrolled):
                problems.append(f"{address} answered {type(answer).__name__}")
                continue
            roster = open_roster(answer.roster, invitation.ca_cert_pem)
            if not roster.admits(node_id, pem_fingerprint(answer.certificate)):
                problems.append(f"{address} sent a certificate its roster does not list")
                continue
            return Enrolment(key_pem, answer.certificate, answer.roster, address)
        except RemoteError as exc:
            problems.append(f"{address} refused: {exc.error.message}")
        except IdentityError as exc:
            problems.append(f"{address}: {exc}")
        except (
            trio.TooSlowError,
            trio.EndOfChannel,
            trio.BrokenResourceError,
            ProtocolError,
        ) as exc:
            problems.append(f"{address}: {exc or 'no answer'}")
        finally:
            await channel.aclose()
    raise IdentityError("could not join the network (" + "; ".join(problems) + ")")
