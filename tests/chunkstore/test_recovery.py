"""The recovery kit and the catalog manifest: round trips, proofs, and every kind of damage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.errors import CatalogFormatError, ChunkstoreError, TamperedEnvelopeError
from chunkstore.keys import (
    KeyRing,
    derive_wrapping_key,
    kdf_params,
    new_master_key,
    unwrap_with_key,
    wrap_master_key,
)
from chunkstore.recovery import (
    CatalogManifest,
    kit_verifier,
    make_kit,
    open_kit,
    open_manifest,
    parse_kit,
    seal_manifest,
)


@pytest.fixture(scope="module")
def owner_secrets() -> tuple[bytes, bytes, bytes]:
    master = new_master_key()
    wrapped = wrap_master_key(master, "correct horse")
    wrapping = derive_wrapping_key("correct horse", kdf_params(wrapped))
    return master, wrapped, wrapping


def test_kit_round_trip_and_proof(owner_secrets: tuple[bytes, bytes, bytes]) -> None:
    master, wrapped, wrapping = owner_secrets
    keys = KeyRing.from_master(master)
    blob = make_kit(keys, wrapped, kit_verifier(wrapping), b"credentials")
    kit = parse_kit(blob)
    assert kit.wrapped_key == wrapped
    # The verifier is what the passphrase gives with the kit's parameters (the exchange's
    # password, tests/chunkstore/test_kitexchange.py), and only that passphrase.
    assert kit.verifier == kit_verifier(derive_wrapping_key("correct horse", kit.kdf))
    assert kit.verifier != kit_verifier(derive_wrapping_key("wrong horse", kit.kdf))
    # With the passphrase's key: the master key, then the sealed credentials.
    assert unwrap_with_key(kit.wrapped_key, wrapping) == master
    assert open_kit(keys, kit) == b"credentials"
    # The verifier alone does not unwrap the master key.
    with pytest.raises(ChunkstoreError):
        unwrap_with_key(kit.wrapped_key, kit.verifier)


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_parse_kit_raises_only_format_errors(data: bytes) -> None:
    with pytest.raises(CatalogFormatError):
        parse_kit(data)


def test_damaged_kits(owner_secrets: tuple[bytes, bytes, bytes]) -> None:
    master, wrapped, wrapping = owner_secrets
    keys = KeyRing.from_master(master)
    blob = make_kit(keys, wrapped, kit_verifier(wrapping), b"secret")
    for cut in (3, 10, 40, len(blob) - len(blob) // 3):
        with pytest.raises(ChunkstoreError):
            open_kit(keys, parse_kit(blob[:cut]))
    flipped = bytearray(blob)
    flipped[-5] ^= 1
    with pytest.raises(TamperedEnvelopeError):
        open_kit(keys, parse_kit(bytes(flipped)))


def manifest(seq: int) -> CatalogManifest:
    return CatalogManifest(5, seq, 1_700_000_000, 128_000, (b"a" * 32, b"b" * 32), b'{"id": 5}')


def test_manifest_round_trip_and_binding(keys: KeyRing) -> None:
    blob = seal_manifest(keys, manifest(41))
    assert open_manifest(keys, blob, 5, 41) == manifest(41)
    # A peer cannot pass it off under another sequence number or owner.
    with pytest.raises(TamperedEnvelopeError):
        open_manifest(keys, blob, 5, 42)
    with pytest.raises(TamperedEnvelopeError):
        open_manifest(keys, blob, 6, 41)
    # Nor forge one without the owner's keys.
    other = KeyRing.from_master(new_master_key())
    with pytest.raises(TamperedEnvelopeError):
        open_manifest(keys, seal_manifest(other, manifest(99)), 5, 99)
    for index in (0, 40, len(blob) - 1):
        damaged = bytearray(blob)
        damaged[index] ^= 0x80
        with pytest.raises(ChunkstoreError):
            open_manifest(keys, bytes(damaged), 5, 41)


@settings(max_examples=200)
@given(st.binary(max_size=300), st.integers(0, 2**32 - 1), st.integers(0, 2**63))
def test_open_manifest_raises_only_chunkstore_errors(data: bytes, owner: int, seq: int) -> None:
    keys = KeyRing.from_master(bytes(32))
    with pytest.raises(ChunkstoreError):
        open_manifest(keys, data, owner, seq)
