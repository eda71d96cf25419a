"""What lets a new computer rebuild a node from its passphrase: the recovery kit and the
catalog manifest, both kept by every peer.

*Recovery kit* (one per owner, ``docs/formats.md``): the wrapped master key, a *verifier* the
peer checks a passphrase proof against, and the node's credentials (join code, certificate,
key, config) sealed under the metadata key. A peer hands the kit only to someone who runs the
passphrase exchange with it (SPAKE2 keyed by the verifier: ``kitexchange``); so anyone else on
the LAN can only guess online, one Argon2id derivation and one round trip per guess, and a
rogue peer learns nothing it can test guesses against. The verifier is a one-way function of
the passphrase's wrapping key, so a peer holding it cannot unwrap the master key.

*Catalog manifest*: the list of chunks holding a copy of the owner's catalog (a SQLite file,
chunked, encrypted and replicated like any file), with a sequence number that only grows. It is
sealed under the metadata key and MAC'd under the catalog MAC key over (owner, seq, sealed
bytes), so a peer can neither forge one nor pass an old one off with a higher number; recovery
takes the highest valid sequence among the peers it reaches.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

import msgpack

from .catalog import (
    CATALOG_VERSION,
    KIND_CATALOG_MANIFEST,
    KIND_RECOVERY_KIT,
    open_record,
    seal_record,
)
from .errors import CatalogFormatError, TamperedEnvelopeError
from .keys import KdfParams, KeyRing, kdf_params

KIT_MAGIC = b"LVKIT"
KIT_VERSION = 1
_KIT_HEADER = struct.Struct(">5sB32sH")  # magic, version, verifier, length of the wrapped key
_MANIFEST_MAC = struct.Struct(">IQ")  # owner, seq (what the MAC binds besides the bytes)
MAX_MANIFEST_CHUNKS = 25_000  # 1.6 GB of catalog; a manifest stays under the 900 kB blob limit


def kit_verifier(wrapping_key: bytes) -> bytes:
    """What a peer stores to check passphrase proofs (one-way from the wrapping key)."""
    return hashlib.blake2b(
        b"", key=wrapping_key, person=b"lanvault:kitver", digest_size=32
    ).digest()


@dataclass(frozen=True, slots=True)
class RecoveryKit:
    verifier: bytes
    wrapped_key: bytes
    sealed: bytes  # the credentials, sealed under the metadata key

    @property
    def kdf(self) -> KdfParams:
        return kdf_params(self.wrapped_key)


def make_kit(keys: KeyRing, wrapped_key: bytes, verifier: bytes, credentials: bytes) -> bytes:
    kdf_params(wrapped_key)  # refuse to publish a malformed key
    if len(verifier) != 32:
        raise ValueError("the verifier must be 32 bytes")
    header = _KIT_HEADER.pack(KIT_MAGIC, KIT_VERSION, verifier, len(wrapped_key))
    return header + wrapped_key + seal_record(keys, KIND_RECOVERY_KIT, credentials)


def parse_kit(blob: bytes) -> RecoveryKit:
    """The public parts of a kit (what a peer needs to serve it); ``CatalogFormatError`` if bad."""
    if len(blob) < _KIT_HEADER.size:
        raise CatalogFormatError("recovery kit is truncated")
    magic, version, verifier, key_length = _KIT_HEADER.unpack_from(blob)
    if magic != KIT_MAGIC:
        raise CatalogFormatError("not a lanvault recovery kit")
    if version != KIT_VERSION:
        raise CatalogFormatError(f"recovery kit version {version} is not supported")
    wrapped = blob[_KIT_HEADER.size : _KIT_HEADER.size + key_length]
    sealed = blob[_KIT_HEADER.size + key_length :]
    if len(wrapped) != key_length or not sealed:
        raise CatalogFormatError("recovery kit is truncated")
    try:
        kdf_params(wrapped)
    except Exception as exc:
        raise CatalogFormatError(f"recovery kit holds a bad wrapped key: {exc}") from None
    return RecoveryKit(verifier, wrapped, sealed)


def open_kit(keys: KeyRing, kit: RecoveryKit) -> bytes:
    """The credentials inside a kit (needs the master key's subkeys)."""
    return open_record(keys, KIND_RECOVERY_KIT, kit.sealed)


@dataclass(frozen=True, slots=True)
class CatalogManifest:
    owner: int
    seq: int
    created_ns: int
    size: int  # bytes of the catalog file
    chunks: tuple[bytes, ...]  # its 64,000-byte chunks' addresses, in order
    config: bytes  # the node's config.json as of then


def seal_manifest(keys: KeyRing, manifest: CatalogManifest) -> bytes:
    if len(manifest.chunks) > MAX_MANIFEST_CHUNKS:
        raise CatalogFormatError("the catalog is too large for one manifest")
    body: bytes = msgpack.packb(
        [
            KIND_CATALOG_MANIFEST,
            CATALOG_VERSION,
            manifest.owner,
            manifest.seq,
            manifest.created_ns,
            manifest.size,
            b"".join(manifest.chunks),
            manifest.config,
        ],
        use_bin_type=True,
    )
    sealed = seal_record(keys, KIND_CATALOG_MANIFEST, body)
    return _manifest_mac(keys, manifest.owner, manifest.seq, sealed) + sealed


def _manifest_mac(keys: KeyRing, owner: int, seq: int, sealed: bytes) -> bytes:
    bound = _MANIFEST_MAC.pack(owner, seq) + sealed
    return hmac.new(keys.catalog_mac_key, bound, hashlib.sha256).digest()


def open_manifest(keys: KeyRing, blob: bytes, owner: int, seq: int) -> CatalogManifest:
    """Check and open a manifest a peer says is ``owner``'s number ``seq``."""
    if len(blob) < 32:
        raise CatalogFormatError("catalog manifest is truncated")
    mac, sealed = blob[:32], blob[32:]
    if not hmac.compare_digest(mac, _manifest_mac(keys, owner, seq, sealed)):
        raise TamperedEnvelopeError("catalog manifest failed its MAC (forged, or another seq)")
    body = open_record(keys, KIND_CATALOG_MANIFEST, sealed)
    try:
        fields = msgpack.unpackb(body, raw=False)
    except Exception as exc:
        raise CatalogFormatError(f"malformed catalog manifest: {exc}") from None
    if (
        not isinstance(fields, list)
        or len(fields) != 8
        or fields[:2]
        != [
            KIND_CATALOG_MANIFEST,
            CATALOG_VERSION,
        ]
    ):
        raise CatalogFormatError("not a catalog manifest of a known version")
    _, _, m_owner, m_seq, created, size, joined, config = fields
    if (m_owner, m_seq) != (owner, seq):
        raise TamperedEnvelopeError("catalog manifest names another owner or sequence")
    if not (
        isinstance(created, int)
        and isinstance(size, int)
        and isinstance(joined, bytes)
        and isinstance(config, bytes)
        and len(joined) % 32 == 0
    ):
        raise CatalogFormatError("catalog manifest has a field of the wrong type")
    chunks = tuple(joined[i : i + 32] for i in range(0, len(joined), 32))
    return CatalogManifest(owner, seq, created, size, chunks, config)
