"""Chunk addresses and the encrypted envelope a chunk travels and rests in.

Address: HMAC-SHA256 of the plaintext under the owner's address key. It is keyed so that a peer
cannot test whether an owner holds a known file; HMAC-SHA256 rather than keyed BLAKE2b because this
machine's SHA instructions make it about twice as fast (see ``scripts/bench_chunkstore.py``).

Envelope, version 1 (``docs/formats.md`` has the byte layout)::

    version(1) | codec(1) | address(32) | length(u32, of what follows the nonce) | nonce(24)
    | XChaCha20-Poly1305( body ) with tag(16)

The associated data binds the version, the codec, the address and the length, so moving an
envelope to another address, truncating it or flipping any bit each fail, each with its own
error. (The codec is authenticated but not secret: the length shows compressibility anyway, and
keeping it outside saves a copy of every chunk.)
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading

import nacl.utils
import zstandard
from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _sodium

from .chunking import CHUNK_SIZE
from .errors import (
    EnvelopeError,
    TamperedEnvelopeError,
    TruncatedEnvelopeError,
    UnsupportedVersionError,
    WrongAddressError,
)
from .keys import KeyRing

ADDRESS_SIZE = 32
ENVELOPE_VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1

_HEADER = struct.Struct(">BB32sI24s")
ADDRESS_OFFSET = 2
_TAG_SIZE = 16
MIN_ENVELOPE_SIZE = _HEADER.size + _TAG_SIZE
# An envelope never exceeds an uncompressed chunk plus its overhead.
MAX_ENVELOPE_SIZE = MIN_ENVELOPE_SIZE + CHUNK_SIZE
_AAD_PREFIX = b"lanvault-chunk"

# Compression is tried on a prefix first: random or already-compressed data is skipped for the
# price of compressing 4 KiB, instead of the whole chunk.
_PROBE_SIZE = 4096
_PROBE_RATIO = 0.97
_local = threading.local()

# libsodium's XChaCha20-Poly1305, called through PyNaCl's own cffi binding of it rather than
# through nacl.bindings' wrappers: those zero a fresh output buffer and copy it out once more,
# and the envelope's header then costs a third copy, all with the GIL held. Here the
# ciphertext is written straight behind the header into an uninitialised buffer, and the body
# is decrypted in place from the envelope: the pipeline runs about 10% faster, and two
# threads scale better (see scripts/bench_chunkstore.py).
_uninitialised = _ffi.new_allocator(should_clear_after_alloc=False)
_encrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_encrypt
_decrypt = _sodium.crypto_aead_xchacha20poly1305_ietf_decrypt
_NONCE_SIZE = 24


def _compressor() -> zstandard.ZstdCompressor:
    # zstd contexts are not thread-safe; one per thread, reused across chunks.
    comp: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=1)
        _local.compressor = comp
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor()
        _local.decompressor = dec
    return dec


def chunk_address(keys: KeyRing, plaintext: bytes) -> bytes:
    """The 32-byte keyed address of a chunk's plaintext."""
    return hmac.digest(keys.address_key, plaintext, "sha256")


def _compress(plaintext: bytes) -> tuple[int, bytes]:
    if len(plaintext) < 64:
        return CODEC_RAW, plaintext
    comp = _compressor()
    if len(plaintext) > _PROBE_SIZE:
        probe = comp.compress(plaintext[:_PROBE_SIZE])
        if len(probe) > _PROBE_SIZE * _PROBE_RATIO:
            return CODEC_RAW, plaintext
    packed = comp.compress(plaintext)
    if len(packed) < len(plaintext):
        return CODEC_ZSTD, packed
    return CODEC_RAW, plaintext


def _aad(version: int, codec: int, address: bytes, length: int) -> bytes:
    return _AAD_PREFIX + bytes([version, codec]) + address + length.to_bytes(4, "big")


def seal_chunk(
    keys: KeyRing, address: bytes, plaintext: bytes, *, deterministic: bool = False
) -> bytes:
    """Compress (when it helps) and encrypt ``plaintext`` for storage under ``address``.

    ``deterministic``: the nonce is derived from the address (a PRF under the data key)
    instead of drawn, so sealing the same chunk again gives the same envelope, and so the same
    shares: a coded chunk's missing shares can be made from the file again and match the ones
    sent before. A nonce repeats only for the same plaintext, which then encrypts to the same
    bytes (equality of chunks is what the address shows anyway)."""
    if len(address) != ADDRESS_SIZE:
        raise ValueError("address must be 32 bytes")
    if len(plaintext) > CHUNK_SIZE:
        raise ValueError(f"a chunk holds at most {CHUNK_SIZE} bytes")
    codec, body = _compress(plaintext)
    if deterministic:
        nonce = hashlib.blake2b(
            address, key=keys.data_key, person=b"lanvault:nonce", digest_size=_NONCE_SIZE
        ).digest()
    else:
        nonce = nacl.utils.random(_NONCE_SIZE)
    length = len(body) + _TAG_SIZE
    aad = _aad(ENVELOPE_VERSION, codec, address, length)
    out = _uninitialised("unsigned char[]", _HEADER.size + length)
    view = _ffi.buffer(out)
    _HEADER.pack_into(view, 0, ENVELOPE_VERSION, codec, address, length, nonce)
    status = _encrypt(
        out + _HEADER.size,
        _ffi.NULL,
        body,
        len(body),
        aad,
        len(aad),
        _ffi.NULL,
        nonce,
        keys.data_key,
    )
    if status != 0:  # libsodium fails only on a message beyond its limit, never for a chunk
        raise EnvelopeError(f"encryption failed ({status})")
    sealed: bytes = view[:]
    return sealed


def envelope_address(envelope: bytes) -> bytes:
    """The address recorded in an envelope's header (not authenticated by itself)."""
    if len(envelope) < MIN_ENVELOPE_SIZE:
        raise TruncatedEnvelopeError(f"envelope of {len(envelope)} bytes is truncated")
    return bytes(envelope[ADDRESS_OFFSET : ADDRESS_OFFSET + ADDRESS_SIZE])


def open_chunk(keys: KeyRing, address: bytes, envelope: bytes) -> bytes:
    """Decrypt and verify an envelope expected at ``address``; return the plaintext."""
    if len(envelope) < MIN_ENVELOPE_SIZE:
        raise TruncatedEnvelopeError(f"envelope of {len(envelope)} bytes is truncated")
    version, codec, recorded, length, nonce = _HEADER.unpack_from(envelope)
    if version != ENVELOPE_VERSION:
        raise UnsupportedVersionError(f"envelope format version {version} is not supported")
    if recorded != address:
        raise WrongAddressError(
            f"envelope belongs to chunk {recorded.hex()[:16]}…, not {address.hex()[:16]}…"
        )
    actual = len(envelope) - _HEADER.size
    if actual != length:
        raise TruncatedEnvelopeError(f"envelope body has {actual} bytes, header says {length}")
    if codec not in (CODEC_RAW, CODEC_ZSTD):
        raise UnsupportedVersionError(f"unknown compression codec {codec}")
    aad = _aad(version, codec, address, length)
    out = _uninitialised("unsigned char[]", length - _TAG_SIZE)
    status = _decrypt(
        out,
        _ffi.NULL,
        _ffi.NULL,
        _ffi.from_buffer(envelope) + _HEADER.size,
        length,
        aad,
        len(aad),
        nonce,
        keys.data_key,
    )
    if status != 0:
        raise TamperedEnvelopeError(
            f"chunk {address.hex()[:16]}… failed authentication (modified or wrong key)"
        )
    body = _ffi.buffer(out)
    if codec == CODEC_RAW:
        plaintext: bytes = body[:]
    else:
        try:
            plaintext = _decompressor().decompress(body, max_output_size=CHUNK_SIZE)
        except zstandard.ZstdError as exc:
            raise EnvelopeError(f"chunk {address.hex()[:16]}… does not decompress: {exc}") from None
    if len(plaintext) > CHUNK_SIZE or not hmac.compare_digest(
        chunk_address(keys, plaintext), address
    ):
        raise TamperedEnvelopeError(f"chunk {address.hex()[:16]}… does not match its address")
    return plaintext
