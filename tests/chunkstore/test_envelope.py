from __future__ import annotations

import os
import struct

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import (
    MIN_ENVELOPE_SIZE,
    chunk_address,
    envelope_address,
    open_chunk,
    seal_chunk,
)
from chunkstore.errors import (
    TamperedEnvelopeError,
    TruncatedEnvelopeError,
    UnsupportedVersionError,
    WrongAddressError,
)
from chunkstore.keys import KeyRing, new_master_key
from chunkstore.pipeline import open_chunks, prepare_chunk, prepare_chunks

RING = KeyRing.from_master(bytes(range(32)))


@given(st.binary(max_size=CHUNK_SIZE))
@settings(max_examples=60)
def test_round_trip(plaintext: bytes) -> None:
    address = chunk_address(RING, plaintext)
    envelope = seal_chunk(RING, address, plaintext)
    assert open_chunk(RING, address, envelope) == plaintext
    assert envelope_address(envelope) == address


@pytest.mark.parametrize("size", [0, 1, 63_999, 64_000])
def test_round_trip_sizes(size: int) -> None:
    prepared = prepare_chunk(RING, os.urandom(size))
    assert prepared.size == size
    assert len(open_chunk(RING, prepared.address, prepared.envelope)) == size


@pytest.mark.parametrize("text", [False, True])
def test_the_byte_format_is_the_documented_one(text: bool) -> None:
    # seal/open call libsodium directly; what they write must be exactly docs/formats.md's
    # layout, so that envelopes stored by any version stay readable. Checked against PyNaCl's
    # own XChaCha20-Poly1305 wrapper both ways.
    plaintext = b"lanvault " * 7000 if text else os.urandom(CHUNK_SIZE)
    plaintext = plaintext[:CHUNK_SIZE]
    address = chunk_address(RING, plaintext)
    envelope = seal_chunk(RING, address, plaintext)
    version, codec, recorded, length, nonce = struct.unpack_from(">BB32sI24s", envelope)
    assert (version, codec, recorded, length) == (1, int(text), address, len(envelope) - 62)
    aad = b"lanvault-chunk" + bytes([version, codec]) + address + length.to_bytes(4, "big")
    body = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        envelope[62:], aad, nonce, RING.data_key
    )
    assert (len(body) < CHUNK_SIZE) == text
    # and an envelope made with PyNaCl's wrapper opens
    nonce = os.urandom(24)
    raw_aad = b"lanvault-chunk" + bytes([1, 0]) + address + (len(plaintext) + 16).to_bytes(4, "big")
    sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, raw_aad, nonce, RING.data_key
    )
    made = struct.pack(">BB32sI24s", 1, 0, address, len(sealed), nonce) + sealed
    assert open_chunk(RING, address, made) == plaintext
    assert open_chunk(RING, address, memoryview(bytearray(made))) == plaintext  # type: ignore[arg-type]


def test_address_is_keyed_not_a_plain_hash() -> None:
    import hashlib

    data = b"a well known file"
    other = KeyRing.from_master(new_master_key())
    assert chunk_address(RING, data) != chunk_address(other, data)
    assert chunk_address(RING, data) != hashlib.sha256(data).digest()


def test_text_is_compressed_random_is_not() -> None:
    text = b"the quick brown fox jumps over the lazy dog\n" * 1400
    text = text[:CHUNK_SIZE]
    random = os.urandom(CHUNK_SIZE)
    assert len(prepare_chunk(RING, text).envelope) < CHUNK_SIZE // 4
    rnd = prepare_chunk(RING, random)
    assert len(rnd.envelope) == len(random) + MIN_ENVELOPE_SIZE


def test_fresh_nonce_each_time() -> None:
    data = b"same plaintext"
    a = prepare_chunk(RING, data)
    b = prepare_chunk(RING, data)
    assert a.address == b.address
    assert a.envelope != b.envelope


@given(st.binary(min_size=1, max_size=2000), st.data())
@settings(max_examples=80)
def test_any_flipped_bit_in_the_sealed_part_is_tampering(
    plaintext: bytes, data: st.DataObject
) -> None:
    prepared = prepare_chunk(RING, plaintext)
    header = MIN_ENVELOPE_SIZE - 16  # version, codec, address, length, nonce
    nonce_start = header - 24
    position = data.draw(st.integers(nonce_start, len(prepared.envelope) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(prepared.envelope)
    damaged[position] ^= 1 << bit
    with pytest.raises(TamperedEnvelopeError):
        open_chunk(RING, prepared.address, bytes(damaged))


def test_truncation_has_its_own_error() -> None:
    prepared = prepare_chunk(RING, os.urandom(1000))
    for cut in (1, 16, 500, len(prepared.envelope) - 10):
        with pytest.raises(TruncatedEnvelopeError):
            open_chunk(RING, prepared.address, prepared.envelope[:-cut])


def test_swapped_envelope_has_its_own_error() -> None:
    a, b = prepare_chunks(RING, [b"alpha" * 100, b"bravo" * 100])
    with pytest.raises(WrongAddressError):
        open_chunk(RING, a.address, b.envelope)
    # Rewriting the header to claim the other address is caught by authentication.
    forged = b.envelope[:2] + a.address + b.envelope[34:]
    with pytest.raises(TamperedEnvelopeError):
        open_chunk(RING, a.address, forged)


def test_unknown_version_codec_and_wrong_key() -> None:
    prepared = prepare_chunk(RING, b"data")
    with pytest.raises(UnsupportedVersionError):
        open_chunk(RING, prepared.address, b"\x09" + prepared.envelope[1:])
    with pytest.raises(UnsupportedVersionError, match="codec"):
        open_chunk(RING, prepared.address, prepared.envelope[:1] + b"\x07" + prepared.envelope[2:])
    # A codec flipped between the two known ones is caught by authentication.
    flipped = prepared.envelope[:1] + bytes([prepared.envelope[1] ^ 1]) + prepared.envelope[2:]
    with pytest.raises(TamperedEnvelopeError):
        open_chunk(RING, prepared.address, flipped)
    other = KeyRing.from_master(new_master_key())
    with pytest.raises(TamperedEnvelopeError):
        open_chunk(other, prepared.address, prepared.envelope)


def test_open_chunks_batch() -> None:
    items = prepare_chunks(RING, [b"x", b"y" * 70_00, b""])
    assert open_chunks(RING, [(p.address, p.envelope) for p in items]) == [b"x", b"y" * 7000, b""]


def test_oversized_plaintext_refused() -> None:
    with pytest.raises(ValueError):
        seal_chunk(RING, bytes(32), b"x" * (CHUNK_SIZE + 1))


@given(st.binary(max_size=300))
def test_garbage_envelopes_raise_only_envelope_errors(garbage: bytes) -> None:
    from chunkstore.errors import EnvelopeError

    with pytest.raises(EnvelopeError):
        open_chunk(RING, bytes(32), garbage)
