"""Owner keys: a random master key wrapped under a passphrase, and subkeys derived from it.

The master key is 32 random bytes. It is stored only wrapped: XChaCha20-Poly1305 under a key
derived from the passphrase with Argon2id (``nacl.pwhash.argon2id``). Subkeys come from the
master key by domain separation with keyed BLAKE2b, so no subkey reveals another.

Setting the environment variable ``LANVAULT_TEST_WEAKEN_KDF=1`` makes *new* wrappings use the
minimum Argon2id limits. It exists for the test suite only; the limits used are recorded in the
wrapped key, so a weakly wrapped key is never mistaken for a strong one.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.pwhash
import nacl.utils

from .errors import KeyFileError, WrongPassphraseError

MASTER_KEY_SIZE = 32
WEAKEN_KDF_ENV = "LANVAULT_TEST_WEAKEN_KDF"

_WRAP_MAGIC = b"LVKEY"
_WRAP_VERSION = 1
# magic(5) version(1) opslimit(u64) memlimit(u64) salt(16) nonce(24) -> then ciphertext(32+16)
_WRAP_HEADER = struct.Struct(">5sBQQ16s24s")
_WRAPPED_SIZE = _WRAP_HEADER.size + MASTER_KEY_SIZE + 16


def kdf_limits() -> tuple[int, int]:
    if os.environ.get(WEAKEN_KDF_ENV) == "1":
        return nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN
    return nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE


def _derive_wrapping_key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(
        32, passphrase.encode("utf-8"), salt, opslimit=opslimit, memlimit=memlimit
    )


def new_master_key() -> bytes:
    return nacl.utils.random(MASTER_KEY_SIZE)


def wrap_master_key(master_key: bytes, passphrase: str) -> bytes:
    """Return the wrapped form of ``master_key`` (safe to store anywhere, peers included)."""
    if len(master_key) != MASTER_KEY_SIZE:
        raise ValueError("master key must be 32 bytes")
    if not passphrase:
        raise WrongPassphraseError("the passphrase must not be empty")
    opslimit, memlimit = kdf_limits()
    salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
    nonce = nacl.utils.random(24)
    header = _WRAP_HEADER.pack(_WRAP_MAGIC, _WRAP_VERSION, opslimit, memlimit, salt, nonce)
    wrapping_key = _derive_wrapping_key(passphrase, salt, opslimit, memlimit)
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        master_key, header, nonce, wrapping_key
    )
    return header + sealed


@dataclass(frozen=True, slots=True)
class KdfParams:
    """The Argon2id parameters a wrapped key was made with (public: salt and limits)."""

    opslimit: int
    memlimit: int
    salt: bytes


def kdf_params(wrapped: bytes) -> KdfParams:
    """Parse and check the header of a wrapped key."""
    if len(wrapped) != _WRAPPED_SIZE:
        raise KeyFileError(f"wrapped key has {len(wrapped)} bytes, expected {_WRAPPED_SIZE}")
    magic, version, opslimit, memlimit, salt, _nonce = _WRAP_HEADER.unpack(
        wrapped[: _WRAP_HEADER.size]
    )
    if magic != _WRAP_MAGIC:
        raise KeyFileError("not a lanvault wrapped key (bad magic)")
    if version != _WRAP_VERSION:
        raise KeyFileError(f"wrapped key format version {version} is not supported")
    check_kdf_limits(opslimit, memlimit)
    return KdfParams(opslimit, memlimit, salt)


def check_kdf_limits(opslimit: int, memlimit: int) -> None:
    limits = nacl.pwhash.argon2id
    if not (
        limits.OPSLIMIT_MIN <= opslimit <= limits.OPSLIMIT_MAX
        and limits.MEMLIMIT_MIN <= memlimit <= min(limits.MEMLIMIT_MAX, 4 << 30)
    ):
        raise KeyFileError("out-of-range Argon2id limits")


def derive_wrapping_key(passphrase: str, params: KdfParams) -> bytes:
    """The key a passphrase gives with these parameters (Argon2id: deliberately slow)."""
    if len(params.salt) != nacl.pwhash.argon2id.SALTBYTES:
        raise KeyFileError("bad Argon2id salt")
    check_kdf_limits(params.opslimit, params.memlimit)
    return _derive_wrapping_key(passphrase, params.salt, params.opslimit, params.memlimit)


def unwrap_with_key(wrapped: bytes, wrapping_key: bytes) -> bytes:
    """The master key from a wrapped key and its (already derived) wrapping key."""
    kdf_params(wrapped)
    header = wrapped[: _WRAP_HEADER.size]
    nonce = header[-24:]
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            wrapped[_WRAP_HEADER.size :], header, nonce, wrapping_key
        )
    except nacl.exceptions.CryptoError:
        raise WrongPassphraseError("wrong passphrase") from None


def unwrap_master_key(wrapped: bytes, passphrase: str) -> bytes:
    """Recover the master key; raise ``WrongPassphraseError`` if the passphrase is wrong."""
    params = kdf_params(wrapped)
    return unwrap_with_key(wrapped, derive_wrapping_key(passphrase, params))


def _subkey(master_key: bytes, domain: bytes) -> bytes:
    # BLAKE2b keyed by the master key, personalised by the domain: a PRF per purpose.
    return hashlib.blake2b(b"", key=master_key, person=domain, digest_size=32).digest()


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The subkeys an owner uses. ``repr`` never shows key material."""

    address_key: bytes
    data_key: bytes
    metadata_key: bytes
    catalog_mac_key: bytes
    share_key: bytes  # seals the family of an erasure-coded chunk's shares (shares.py)

    @classmethod
    def from_master(cls, master_key: bytes) -> KeyRing:
        if len(master_key) != MASTER_KEY_SIZE:
            raise ValueError("master key must be 32 bytes")
        return cls(
            address_key=_subkey(master_key, b"lanvault:addr"),
            data_key=_subkey(master_key, b"lanvault:data"),
            metadata_key=_subkey(master_key, b"lanvault:meta"),
            catalog_mac_key=_subkey(master_key, b"lanvault:catmac"),
            share_key=_subkey(master_key, b"lanvault:share"),
        )

    def __repr__(self) -> str:
        return "KeyRing(<secret>)"
