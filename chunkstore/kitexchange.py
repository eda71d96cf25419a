"""The passphrase exchange that hands a recovery kit over: SPAKE2, then key confirmation.

A computer recovering a node knows only the passphrase; the peers keep the kit and its
*verifier* (``recovery.kit_verifier``: a one-way function of the Argon2id wrapping key). Both
sides run SPAKE2 (``spake2``, as magic-wormhole uses it) with the verifier as the password, so
each gets the same session key only if the other knew the same verifier:

    holder  -> client  KDF limits, salt, SPAKE2 message B
    client  -> holder  SPAKE2 message A, confirmation (MAC under the session key)
    holder  -> client  the kit, sealed under the session key (XChaCha20-Poly1305)

What this buys (``docs/security.md``): a host that is not a member, whatever it answers, can
test at most the one passphrase guess it committed to in its SPAKE2 message per attempt; the
transcript lets nobody test guesses offline. A holder learns nothing it did not hold (it keeps
the verifier already). The client refuses KDF limits below ``MIN_OPSLIMIT``/``MIN_MEMLIMIT``,
so a rogue server cannot make a guess cheaper, and the kit travels sealed, so a host in the
middle that relays the exchange gets no wrapped key to attack offline either.

Pure computation, no I/O (the protocol messages carry the bytes). SPAKE2 in pure Python costs
~5 ms per side; callers run it off the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

import nacl.bindings
import nacl.exceptions
import nacl.pwhash
from spake2 import SPAKE2_A, SPAKE2_B

from .errors import CatalogFormatError, WrongPassphraseError
from .keys import KdfParams, kdf_limits

PAKE_MESSAGE_SIZE = 33  # SPAKE2 on Ed25519: a side byte and a point
CONFIRM_SIZE = 32
# Whatever a server says, the client derives with at least these: libsodium's "moderate"
# Argon2id limits, which every kit is made with (the test suite's weakened kits aside).
MIN_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_MODERATE
MIN_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_MODERATE
_CLIENT_ID = b"lanvault recovery client"
_TRANSCRIPT = struct.Struct(">16sIQQ16s")  # domain, owner, opslimit, memlimit, salt
_DOMAIN = b"lanvault-kit-v2\x00"


def minimum_kdf() -> tuple[int, int]:
    """The weakest Argon2id limits a client accepts: those every kit is made with (lower only
    in the test suite, whose kits are weakened: ``keys.WEAKEN_KDF_ENV``)."""
    return kdf_limits()


def check_offered_kdf(params: KdfParams) -> None:
    """Refuse a server's KDF limits that would make a passphrase guess cheaper than ours."""
    opslimit, memlimit = minimum_kdf()
    if params.opslimit < opslimit or params.memlimit < memlimit:
        raise WrongPassphraseError(
            f"the peer offered Argon2id limits below lanvault's minimum (ops {params.opslimit}"
            f" < {opslimit} or memory {params.memlimit} < {memlimit}): refused, nothing sent"
        )


def _server_id(owner: int) -> bytes:
    return b"lanvault kit holder for node %d" % owner


def _transcript(owner: int, params: KdfParams, message_b: bytes, message_a: bytes) -> bytes:
    head = _TRANSCRIPT.pack(_DOMAIN, owner, params.opslimit, params.memlimit, params.salt)
    return head + message_b + message_a


def _subkeys(session: bytes) -> tuple[bytes, bytes]:
    def sub(person: bytes) -> bytes:
        return hashlib.blake2b(b"", key=session, person=person, digest_size=32).digest()

    return sub(b"lvkit:confirm"), sub(b"lvkit:seal")


def confirmation(
    session: bytes, owner: int, params: KdfParams, message_b: bytes, message_a: bytes
) -> bytes:
    """The client's proof that it holds ``session``: a MAC over the whole exchange."""
    confirm_key = _subkeys(session)[0]
    transcript = _transcript(owner, params, message_b, message_a)
    return hmac.new(confirm_key, b"client" + transcript, hashlib.sha256).digest()


def _check_message(message: bytes) -> None:
    if len(message) != PAKE_MESSAGE_SIZE:
        raise CatalogFormatError(f"a SPAKE2 message is {PAKE_MESSAGE_SIZE} bytes")


class KitOffer:
    """The holder's side of one exchange, for one owner's kit (or a decoy: see ``decoy``)."""

    def __init__(self, verifier: bytes, owner: int, params: KdfParams) -> None:
        self.owner = owner
        self.params = params
        self._spake = SPAKE2_B(verifier, idA=_CLIENT_ID, idB=_server_id(owner))
        self.message: bytes = self._spake.start()
        self._seal_key: bytes | None = None
        self._transcript = b""

    def check(self, message_a: bytes, confirm: bytes) -> bool:
        """Does the client's confirmation prove it used the same verifier? One use only."""
        _check_message(message_a)
        if self._transcript:
            raise CatalogFormatError("this exchange was already answered")
        self._transcript = _transcript(self.owner, self.params, self.message, message_a)
        try:
            session = self._spake.finish(message_a)
        except Exception:  # a point off the curve or of small order: not a client's message
            return False
        expected = confirmation(session, self.owner, self.params, self.message, message_a)
        if not hmac.compare_digest(expected, confirm):
            return False
        self._seal_key = _subkeys(session)[1]
        return True

    def seal(self, kit: bytes) -> bytes:
        """The kit for the client that passed ``check`` (only it can open it)."""
        if self._seal_key is None:
            raise WrongPassphraseError("the exchange was not confirmed")
        nonce = os.urandom(24)
        return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            kit, self._transcript, nonce, self._seal_key
        )


class KitRequestor:
    """The recovering client's side, once the passphrase gave the verifier for ``params``."""

    def __init__(self, verifier: bytes, owner: int, params: KdfParams, message_b: bytes) -> None:
        _check_message(message_b)
        self.owner = owner
        spake = SPAKE2_A(verifier, idA=_CLIENT_ID, idB=_server_id(owner))
        self.message: bytes = spake.start()
        try:
            session = spake.finish(message_b)
        except Exception:
            raise CatalogFormatError("the peer's SPAKE2 message is not a valid point") from None
        self._transcript = _transcript(owner, params, message_b, self.message)
        self._seal_key = _subkeys(session)[1]
        self.confirm = confirmation(session, owner, params, message_b, self.message)

    def open(self, sealed: bytes) -> bytes:
        """The kit the holder sealed; ``WrongPassphraseError`` if it did not know the verifier."""
        if len(sealed) < 24 + 16:
            raise CatalogFormatError("the sealed kit is truncated")
        try:
            return bytes(
                nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    sealed[24:], self._transcript, sealed[:24], self._seal_key
                )
            )
        except nacl.exceptions.CryptoError:
            raise WrongPassphraseError(
                "the peer's kit does not open with this exchange's key"
            ) from None


def decoy_params(secret: bytes, owner: int) -> KdfParams:
    """What a holder without ``owner``'s kit offers: the limits every kit has, and a salt that
    is the same at every request, so a stranger cannot tell which owners keep a kit here."""
    opslimit, memlimit = kdf_limits()
    salt = hmac.new(secret, b"decoy salt %d" % owner, hashlib.sha256).digest()[:16]
    return KdfParams(opslimit, memlimit, salt)
