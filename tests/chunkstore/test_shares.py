"""Erasure-coded shares (chunkstore/shares.py): any K of N rebuild the envelope, each share
verifies alone, a holder rebuilds missing shares without keys, and bad bytes are refused with
one clear reason, never decoded into a wrong envelope."""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.envelope import MAX_ENVELOPE_SIZE, open_chunk
from chunkstore.keys import KeyRing
from chunkstore.pipeline import prepare_chunk
from chunkstore.shares import (
    MAX_SHARE_SIZE,
    MIN_SHARE_SIZE,
    Code,
    ShareError,
    data_size,
    decode,
    encode,
    header_size,
    is_share,
    parse,
    rebuild,
    share_address,
    verify,
)

RING = KeyRing.from_master(bytes(range(32)))
OTHER = KeyRing.from_master(bytes(range(1, 33)))


def codes() -> st.SearchStrategy[Code]:
    return st.integers(3, 16).flatmap(lambda n: st.integers(2, n - 1).map(lambda k: Code(k, n)))


@given(st.binary(min_size=1, max_size=3000), codes(), st.randoms(use_true_random=False))
@settings(max_examples=80)
def test_any_k_shares_give_the_envelope_back(envelope: bytes, code: Code, rng: object) -> None:
    address = os.urandom(32)
    blobs = encode(envelope, address, code, RING.share_key)
    assert len(blobs) == code.n
    shares = [
        verify(b, share_address(address, i), share_key=RING.share_key) for i, b in enumerate(blobs)
    ]
    assert all(is_share(b) for b in blobs)
    picked = rng.sample(shares, code.k)  # type: ignore[attr-defined]
    assert decode(picked) == envelope


def test_every_k_subset_of_2_of_4_decodes_a_real_envelope() -> None:
    prepared = prepare_chunk(RING, os.urandom(64_000))
    blobs = encode(prepared.envelope, prepared.address, Code(2, 4), RING.share_key)
    shares = [parse(b) for b in blobs]
    for pair in itertools.combinations(shares, 2):
        envelope = decode(pair)
        assert envelope == prepared.envelope
        assert len(open_chunk(RING, prepared.address, envelope)) == 64_000
    # Each share holds half the envelope and its header: 2x stored, like degree 2.
    assert all(len(b) == header_size(4) + 32_039 for b in blobs)
    with pytest.raises(ShareError, match="1 distinct shares of a 2-of-4"):
        decode([shares[3], shares[3]])


def test_the_byte_format_is_the_documented_one() -> None:
    envelope = os.urandom(1000)
    address = os.urandom(32)
    blob = encode(envelope, address, Code(3, 5), RING.share_key)[4]
    kind, k, recorded, n, number, chunk, length = struct.unpack_from(">BB32sBB32sI", blob)
    assert (kind, k, n, number, chunk, length) == (2, 3, 5, 4, address, 1000)
    assert recorded == hashlib.sha256(b"lanvault-share-v1" + address + bytes([4])).digest()
    data = blob[72 + 32 * 5 + 32 :]
    assert len(data) == 334  # ceil(1000 / 3)
    assert blob[72 + 32 * 4 : 72 + 32 * 5] == hashlib.sha256(data).digest()
    sealed = struct.pack(">BBI", 3, 5, 1000) + address + blob[72 : 72 + 32 * 5]
    seal = hashlib.blake2b(sealed, key=RING.share_key, person=b"lanvault:shares", digest_size=32)
    assert blob[72 + 32 * 5 : 72 + 32 * 6] == seal.digest()
    # The holder's store files an item by the address at offset 2, as for an envelope.
    assert blob[2:34] == share_address(address, 4)


def test_sizes_bound_every_share() -> None:
    smallest = encode(b"x", os.urandom(32), Code(2, 3), RING.share_key)[0]
    assert len(smallest) == MIN_SHARE_SIZE
    largest = encode(os.urandom(MAX_ENVELOPE_SIZE), os.urandom(32), Code(2, 16), RING.share_key)
    assert len(largest[0]) == MAX_SHARE_SIZE
    assert data_size(64_078, 2) == 32_039


def test_a_holder_rebuilds_missing_shares_without_keys() -> None:
    envelope = os.urandom(64_078)
    address = os.urandom(32)
    blobs = encode(envelope, address, Code(3, 7), RING.share_key)
    kept = [parse(blobs[i]) for i in (1, 4, 6)]
    rebuilt = rebuild(kept, [0, 2, 3, 5])
    assert rebuilt == [blobs[0], blobs[2], blobs[3], blobs[5]]  # byte for byte the owner's
    # ... and they pass the owner's check, seal included.
    for i, blob in zip((0, 2, 3, 5), rebuilt, strict=True):
        verify(blob, share_address(address, i), share_key=RING.share_key)


def test_a_share_verifies_alone_and_lies_are_named() -> None:
    envelope = os.urandom(5000)
    address = os.urandom(32)
    blobs = encode(envelope, address, Code(2, 4), RING.share_key)
    mine = parse(blobs[0])  # what a holder holds, from the owner
    fine = verify(blobs[1], share_address(address, 1), family=mine.family)
    assert fine.number == 1
    with pytest.raises(ShareError, match="another address"):
        verify(blobs[1], share_address(address, 2), share_key=RING.share_key)
    with pytest.raises(ShareError, match="not its owner's"):
        verify(blobs[1], share_address(address, 1), share_key=OTHER.share_key)
    # A member that forges a whole share of its own making: consistent alone, but its seal is
    # not the owner's, and it is not of the family the other holders hold.
    forged = encode(os.urandom(5000), address, Code(2, 4), OTHER.share_key)[1]
    parse(forged)
    with pytest.raises(ShareError, match="not its owner's"):
        verify(forged, share_address(address, 1), share_key=RING.share_key)
    with pytest.raises(ShareError, match="another family"):
        verify(forged, share_address(address, 1), family=mine.family)
    with pytest.raises(ShareError, match="different families"):
        decode([mine, parse(forged)])
    # One flipped bit of data: the share's own digest says so.
    rotten = bytearray(blobs[2])
    rotten[-1] ^= 1
    with pytest.raises(ShareError, match="does not match its digest"):
        parse(bytes(rotten))


def test_rebuild_refuses_a_family_that_is_not_a_code() -> None:
    # A family whose digests are of data that is not one code's shares (made by hand, as a
    # lying member could): each share matches its digest, but what decodes from them does not
    # re-encode to the others, so nothing is rebuilt.
    address = os.urandom(32)
    good = [parse(b) for b in encode(os.urandom(600), address, Code(2, 3), RING.share_key)]
    datas = [good[0].data, os.urandom(len(good[1].data)), good[2].data]
    digests = tuple(hashlib.sha256(d).digest() for d in datas)
    fam = type(good[0].family)(2, 3, address, 600, digests, good[0].family.seal)
    shares = [type(good[0])(fam, i, d) for i, d in enumerate(datas)]
    with pytest.raises(ShareError, match="a share lied"):
        rebuild(shares[:2], [2])


@given(st.binary(max_size=2 * header_size(4)))
@settings(max_examples=300)
def test_parse_survives_any_bytes(blob: bytes) -> None:
    try:
        share = parse(blob)
    except ShareError:
        return
    assert share.to_bytes() == blob


@given(st.data())
@settings(max_examples=200)
def test_every_mutation_of_a_share_is_refused_or_harmless(data: st.DataObject) -> None:
    address = os.urandom(32)
    envelope = os.urandom(data.draw(st.integers(1, 800)))
    blobs = encode(envelope, address, Code(2, 4), RING.share_key)
    number = data.draw(st.integers(0, 3))
    blob = bytearray(blobs[number])
    where = data.draw(st.integers(0, len(blob) - 1))
    blob[where] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ShareError):
        verify(bytes(blob), share_address(address, number), share_key=RING.share_key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2-of-4", Code(2, 4)),
        ("3of10", Code(3, 10)),
        (" 2/3 ", Code(2, 3)),
        ("15-of-16", Code(15, 16)),
    ],
)
def test_codes_parse(text: str, expected: Code) -> None:
    assert Code.parse(text) == expected
    assert Code.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["4-of-2", "2-of-2", "0-of-3", "1-of-3", "2-of-17", "two of four", "2", "-1-of-3"]
)
def test_bad_codes_say_so(text: str) -> None:
    with pytest.raises(ValueError, match=r"code|K-of-N|copies: use a degree"):
        Code.parse(text)


def test_what_a_code_costs_and_buys() -> None:
    assert Code(2, 4).stored_ratio == 2.0 and Code(2, 4).survives == 2
    assert Code(3, 10).survives == 7


def test_the_formats_doc_states_the_sizes_the_code_makes() -> None:
    text = " ".join((Path(__file__).parents[2] / "docs" / "formats.md").read_text().split())
    assert header_size(4) == 72 + 32 * 4 + 32 and "its size is `104 + 32N + D`" in text
    full = len(encode(os.urandom(MAX_ENVELOPE_SIZE), os.urandom(32), Code(2, 4), RING.share_key)[0])
    assert f"2-of-4 of a full chunk's envelope is four shares of {full:,} bytes" in text
    assert 104 + 32 * 16 + data_size(MAX_ENVELOPE_SIZE, 2) == MAX_SHARE_SIZE
    assert f"at most {MAX_SHARE_SIZE:,} bytes (2-of-16)" in text
    lowest = min(Code(k, n).as_degree() for n in range(3, 17) for k in range(2, n))
    assert f"`32·K + N` (at least {lowest}: never a number of copies)" in text


def test_a_code_is_recorded_in_a_degree_no_number_of_copies_can_be() -> None:
    seen = set()
    for n in range(3, 17):
        for k in range(2, n):
            degree = Code(k, n).as_degree()
            assert degree > 9 and Code.of_degree(degree) == Code(k, n)
            seen.add(degree)
    assert len(seen) == sum(n - 2 for n in range(3, 17))
    assert all(Code.of_degree(d) is None for d in range(1, 10))
    for bad in (0, 10, 31, 32 * 2 + 2, 32 * 5 + 17, -1):
        with pytest.raises(ValueError):
            Code.of_degree(bad)
