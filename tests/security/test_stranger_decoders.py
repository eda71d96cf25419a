"""Fuzzing every decoder a host that is not a member can reach: a discovery datagram, the
frames of a connection before HELLO and of an anonymous (recovery) one, the passphrase
exchange's messages (from a stranger client or a rogue server), and a rogue server's
certificate. Each either decodes to something well-formed or fails with its one error type;
memory stays within the limits a stranger is held to (docs/security.md)."""

from __future__ import annotations

import datetime

import msgpack
import nacl.pwhash
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.errors import ChunkstoreError
from chunkstore.keys import KdfParams
from chunkstore.kitexchange import KitOffer, KitRequestor
from node.discovery import MAGIC, decode_announcement
from node.identity import IdentityError, node_id_from_certificate
from node.messages import (
    MAX_ANONYMOUS_FRAME,
    MAX_HELLO_FRAME,
    MESSAGE_TYPES,
    SUPPORTED_VERSIONS,
    Hello,
    Message,
    ProtocolError,
)
from node.protocol import NEED_DATA, Connection

PARAMS = KdfParams(nacl.pwhash.argon2id.OPSLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_MIN, bytes(16))
ME = Hello(SUPPORTED_VERSIONS, 0, "", "")
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.binary(max_size=64),
    st.text(max_size=64),
    st.floats(allow_nan=True),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.one_of(st.binary(max_size=700), values.map(lambda v: MAGIC + msgpack.packb(v))))
@settings(max_examples=400)
def test_a_discovery_datagram_is_an_announcement_or_nothing(data: bytes) -> None:
    found = decode_announcement(data)
    if found is not None:
        network, node_id, address, host = found
        assert isinstance(network, str) and isinstance(address, str) and isinstance(host, str)
        assert 0 <= node_id < 2**32


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def feed(conn: Connection, data: bytes) -> list[Message]:
    """What a stranger's bytes give, read as the pump reads them (never more than ``room``)."""
    out: list[Message] = []
    view = memoryview(data)
    while view:
        room = conn.room()
        if room == 0:
            raise ProtocolError("no room: the pump stops reading")
        conn.receive_data(bytes(view[:room]))
        view = view[room:]
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, Message)
            out.append(event)
    return out


message_like = st.tuples(st.sampled_from(sorted(MESSAGE_TYPES)), st.lists(values, max_size=7)).map(
    lambda t: msgpack.packb([t[0], *t[1]], use_bin_type=True)
)


@given(st.lists(st.one_of(message_like, st.binary(max_size=300)), max_size=6), st.booleans())
@settings(max_examples=400)
def test_a_strangers_frames_decode_or_are_refused_and_stay_small(
    payloads: list[bytes], hello_first: bool
) -> None:
    conn = Connection(ME)
    conn.initiate()
    data = b"".join(frame(p) for p in payloads)
    if hello_first:  # an anonymous client past HELLO: only small frames
        stranger = Connection(Hello(SUPPORTED_VERSIONS, 0, "", ""))
        data = stranger.initiate() + data
        conn.limit_frames(MAX_ANONYMOUS_FRAME)
    try:
        for message in feed(conn, data):
            assert type(message) in (*MESSAGE_TYPES.values(), Hello)
            message.to_list()  # well-formed: it encodes again
    except ProtocolError:
        pass
    limit = MAX_ANONYMOUS_FRAME if hello_first else MAX_HELLO_FRAME
    assert conn.buffered <= limit + 4


@given(st.binary(max_size=40), st.binary(max_size=40))
@settings(max_examples=300, deadline=None)
def test_a_strangers_kit_proof_is_refused_not_a_crash(pake: bytes, confirm: bytes) -> None:
    offer = KitOffer(bytes(32), 7, PARAMS)
    try:
        assert offer.check(pake, confirm) is False
    except ChunkstoreError:
        assert len(pake) != 33


@given(st.binary(max_size=40), st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_a_rogue_servers_kit_messages_are_refused_not_a_crash(pake: bytes, sealed: bytes) -> None:
    try:
        requestor = KitRequestor(bytes(32), 7, PARAMS, pake)
    except ChunkstoreError:
        return
    try:
        requestor.open(sealed)
        raise AssertionError("a forged kit opened")
    except ChunkstoreError:
        pass


KEY = ec.generate_private_key(ec.SECP256R1())


def certificate(common_names: list[str]) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(KEY, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


cn = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda t: len(t.encode()) <= 64),
    st.integers(0, 10**11).map(lambda n: f"lanvault-node-{n}"),
)


@given(st.one_of(st.binary(max_size=600), st.lists(cn, max_size=3).map(certificate)))
@settings(max_examples=200, deadline=None)
def test_a_rogue_servers_certificate_names_a_node_or_is_refused(der: bytes) -> None:
    try:
        node_id = node_id_from_certificate(der)
    except IdentityError:
        return
    assert 0 <= node_id < 2**32
