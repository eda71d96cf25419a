from __future__ import annotations

import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.messages import (
    MAX_ANONYMOUS_FRAME,
    MAX_BATCH,
    MAX_BUFFER,
    MAX_CHAIN,
    MAX_ENVELOPE,
    MAX_FRAME,
    MAX_HELLO_FRAME,
    MAX_PUT_BATCH,
    Chunk,
    ChunksMany,
    Delete,
    Deleted,
    Error,
    ErrorCode,
    GetChunk,
    GetChunks,
    GetMeta,
    Heartbeat,
    Hello,
    Holding,
    Kit,
    KitChallenge,
    KitProof,
    KitRequest,
    Message,
    Meta,
    Ok,
    Online,
    ProtocolError,
    PutChunk,
    PutChunks,
    PutMeta,
    Query,
    RelayChunks,
    Removed,
    Status,
    StatusReply,
    Stored,
    StoredMany,
    decode_payload,
    encode_message,
    put_batches,
)
from node.protocol import NEED_DATA, Announcements, Connection

HELLO = Hello((1,), 7, "host-a", "127.0.0.1:7420")  # a node that speaks version 1 only
HELLO2 = Hello((1, 2), 7, "host-a", "127.0.0.1:7420")
HELLO3 = Hello((1, 2, 3), 7, "host-a", "127.0.0.1:7420")
addr = st.binary(min_size=32, max_size=32)
req = st.integers(1, 2**32 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
envelope = st.binary(min_size=1, max_size=2000)
names = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(PutChunk, req, u32, addr, st.integers(1, 9), envelope),
    st.builds(Stored, req, addr, st.booleans()),
    st.builds(GetChunk, req, u32, addr),
    st.builds(Chunk, req, addr, envelope),
    st.builds(Delete, req, u32, st.lists(addr, max_size=5).map(tuple)),
    st.builds(Deleted, req, u32),
    st.builds(Removed, req, u32, addr, st.integers(1, 9)),
    st.builds(Query, req, u32, st.lists(addr, max_size=5).map(tuple)),
    st.builds(Holding, req, st.lists(addr, max_size=5).map(tuple)),
    st.builds(Heartbeat, u64, u64, u64),
    st.builds(Online, u64),
    st.builds(Ok, req),
    st.builds(Error, u32, st.integers(1, 8), st.text(max_size=100)),
    st.builds(PutMeta, req, u32, names, u64, st.binary(max_size=500)),
    st.builds(GetMeta, req, u32, names),
    st.builds(Meta, req, names, u64, st.binary(max_size=500)),
    st.builds(Status, req),
    st.builds(
        PutChunks,
        req,
        u32,
        st.integers(1, 9),
        st.lists(st.tuples(addr, envelope), min_size=1, max_size=40).map(tuple),
    ),
    st.builds(
        RelayChunks,
        req,
        u32,
        st.integers(1, 9),
        st.lists(u32, min_size=1, max_size=8, unique=True).map(tuple),
        st.lists(st.tuples(addr, envelope), min_size=1, max_size=20).map(tuple),
    ),
    st.builds(StoredMany, req, st.lists(st.integers(0, 200), max_size=40).map(tuple)),
    st.builds(GetChunks, req, u32, st.lists(addr, min_size=1, max_size=15).map(tuple)),
    st.builds(
        ChunksMany,
        req,
        st.lists(st.one_of(st.just(b""), envelope), max_size=15).map(tuple),
        st.lists(st.integers(0, 8), max_size=15).map(tuple),
    ),
    st.builds(
        StatusReply,
        req,
        st.dictionaries(st.text(max_size=10), st.integers(-(2**63), 2**64 - 1), max_size=5),
    ),
    st.builds(KitRequest, req, u32),
    st.builds(
        KitChallenge,
        req,
        u64,
        u64,
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=33, max_size=33),
    ),
    st.builds(
        KitProof,
        req,
        u32,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=33, max_size=33),
        st.binary(min_size=32, max_size=32),
    ),
    st.builds(Kit, req, st.binary(max_size=500)),
)


def open_pair(hello: Hello = HELLO3) -> tuple[Connection, Connection]:
    a = Connection(hello)
    b = Connection(Hello((1, 2, 3), 8, "host-b", "127.0.0.1:7421"))
    b.receive_data(a.initiate())
    a.receive_data(b.initiate())
    assert b.next_event() == hello
    assert isinstance(a.next_event(), Hello)
    return a, b


def drain(conn: Connection) -> list[Message]:
    out: list[Message] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        assert isinstance(event, Message)
        out.append(event)


@given(messages)
@settings(max_examples=300)
def test_every_message_round_trips(message: Message) -> None:
    a, b = open_pair()
    b.receive_data(a.send(message))
    assert drain(b) == [message]


@given(st.lists(messages, min_size=1, max_size=8), st.data())
@settings(max_examples=150)
def test_splitting_the_stream_anywhere_gives_the_same_events(
    batch: list[Message], data: st.DataObject
) -> None:
    a, _ = open_pair()
    stream = b"".join(a.send(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    receiver = Connection(HELLO3)
    receiver.initiate()
    receiver.receive_data(encode_message(HELLO3))
    got: list[Message] = list(drain(receiver))  # the HELLO first: it lifts the small limit
    previous = 0
    for cut in [*cuts, len(stream)]:
        if cut > previous:
            receiver.receive_data(stream[previous:cut])
        previous = max(previous, cut)
        got.extend(drain(receiver))
    assert got[0] == HELLO3
    assert got[1:] == batch


def test_one_byte_at_a_time() -> None:
    a, _ = open_pair()
    message = PutChunk(5, 1, bytes(32), 3, b"x" * 5000)
    receiver = Connection(HELLO)
    got = []
    for byte in encode_message(HELLO) + a.send(message):
        receiver.receive_data(bytes([byte]))
        got.extend(drain(receiver))
    assert got == [HELLO, message]


def test_oversized_frame_refused_before_buffering() -> None:
    conn = Connection(HELLO)
    conn.receive_data((MAX_FRAME + 1).to_bytes(4, "big") + b"x" * 10)
    with pytest.raises(ProtocolError, match="frame length"):
        conn.next_event()
    zero = Connection(HELLO)
    zero.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(ProtocolError):
        zero.next_event()


def test_before_hello_a_stranger_can_make_us_buffer_a_few_kib_only() -> None:
    conn = Connection(HELLO)
    assert conn.room() == MAX_HELLO_FRAME + 4
    conn.receive_data((MAX_HELLO_FRAME + 1).to_bytes(4, "big"))  # declares a big frame
    with pytest.raises(ProtocolError, match=f"outside 1..{MAX_HELLO_FRAME}"):
        conn.next_event()  # refused from its length alone, nothing else read
    flood = Connection(HELLO)
    with pytest.raises(ProtocolError, match="overflow"):
        flood.receive_data(b"\x00\x00\x01\x00" + b"x" * (MAX_HELLO_FRAME + 1))
    member = Connection(HELLO)
    member.receive_data(encode_message(HELLO))
    assert list(drain(member)) == [HELLO]
    assert member.room() == MAX_BUFFER  # a member's HELLO is in: full-size frames
    message = PutChunk(5, 1, bytes(32), 3, b"x" * 60_000)
    member.receive_data(encode_message(message))
    assert list(drain(member)) == [message]


def test_an_anonymous_peer_gets_small_frames_only() -> None:
    conn = Connection(HELLO)
    conn.receive_data(encode_message(HELLO))
    drain(conn)
    conn.limit_frames(MAX_ANONYMOUS_FRAME)
    assert conn.room() == MAX_ANONYMOUS_FRAME + 4
    conn.receive_data(MAX_FRAME.to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="frame length"):
        conn.next_event()


def test_hello_must_come_first_and_once() -> None:
    conn = Connection(HELLO)
    conn.receive_data(encode_message(Ok(1)))
    with pytest.raises(ProtocolError, match="HELLO first"):
        conn.next_event()
    _a, b = open_pair()
    b.receive_data(encode_message(HELLO))
    with pytest.raises(ProtocolError, match="twice"):
        b.next_event()


def test_version_negotiation() -> None:
    a, b = open_pair(HELLO)  # a node of version 1 meets one of version 3
    assert a.version == 1 and b.version == 1
    a, b = open_pair(HELLO2)
    assert a.version == 2 and b.version == 2
    a, b = open_pair()
    assert a.version == 3 and b.version == 3
    future_only = Connection(HELLO)
    future_only.receive_data(encode_message(Hello((2, 3), 9, "h", "x:1")))
    with pytest.raises(ProtocolError) as info:
        future_only.next_event()
    assert info.value.code == ErrorCode.UNSUPPORTED_VERSION


def test_sending_rules() -> None:
    conn = Connection(HELLO)
    with pytest.raises(ProtocolError, match="HELLO must be sent first"):
        conn.send(Ok(1))
    conn.initiate()
    with pytest.raises(ProtocolError):
        conn.initiate()
    with pytest.raises(ProtocolError):
        conn.send(HELLO)


@pytest.mark.parametrize(
    "payload",
    [
        [2, 1, 1, b"short", 2, b"env"],  # address not 32 bytes
        [2, 1, 1, bytes(32), 10, b"env"],  # degree out of range
        [2, 0, 1, bytes(32), 1, b"env"],  # request id 0
        [2, 1, -1, bytes(32), 1, b"env"],  # negative owner
        [2, 1, 2**32, bytes(32), 1, b"env"],  # owner too large
        [2, 1, 1, bytes(32), True, b"env"],  # bool is not an int
        [2, 1, 1, bytes(32), 1, b""],  # empty envelope
        [2, 1, 1, bytes(32), 1, b"x" * 70_000],  # oversized envelope
        [2, 1, 1, bytes(32), 1],  # missing field
        [99, 1],  # unknown type
        [15, 1, 1, "../etc", 1, b""],  # hostile blob name
        [15, 1, 1, "a\x00b", 1, b""],  # NUL in a name
        [20, 1, 1, 2, []],  # empty batch
        [20, 1, 1, 2, [[bytes(32), b"e"]] * (MAX_PUT_BATCH + 1)],  # batch too large
        [21, 1, [0] * (MAX_PUT_BATCH + 1)],  # more results than a batch has chunks
        [22, 1, 1, [bytes(32)] * (MAX_BATCH + 1)],  # GETCHUNKS: answers must fit a frame
        [22, 1, 1, [b"short"]],  # bad address in a batch
        "not a list",
        [],
    ],
)
def test_malformed_payloads_are_protocol_errors(payload: object) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(msgpack.packb(payload, use_bin_type=True))


def test_unencodable_message_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="cannot be encoded"):
        encode_message(StatusReply(1, {"n": 2**70}))


def test_trailing_bytes_refused() -> None:
    with pytest.raises(ProtocolError):
        decode_payload(msgpack.packb([13, 1]) + b"\x00")


def test_truncated_stream_on_close() -> None:
    conn = Connection(HELLO)
    frame = encode_message(HELLO)
    conn.receive_data(frame[:-2])
    conn.receive_data(b"")
    with pytest.raises(ProtocolError, match="middle of a frame"):
        conn.next_event()


def test_receive_buffer_is_bounded() -> None:
    conn = Connection(HELLO)
    with pytest.raises(ProtocolError, match="overflow"):
        for _ in range(10):
            conn.receive_data(b"\x00\x0f\xff\xff" + b"x" * (MAX_FRAME - 4))


@given(st.binary(max_size=4096))
@settings(max_examples=500)
def test_fuzz_arbitrary_bytes_raise_only_protocol_errors(garbage: bytes) -> None:
    conn = Connection(HELLO)
    try:
        conn.receive_data(garbage)
        drain(conn)
    except ProtocolError:
        pass
    assert conn.buffered <= len(garbage)


@given(st.lists(st.binary(max_size=600), max_size=30))
@settings(max_examples=200)
def test_fuzz_after_handshake_and_memory_stays_bounded(pieces: list[bytes]) -> None:
    _, conn = open_pair()
    tracemalloc.start()
    try:
        for piece in pieces:
            conn.receive_data(piece)
            drain(conn)
    except ProtocolError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 2 * MAX_FRAME


def test_a_frame_that_does_not_decode_is_not_kept() -> None:
    _, conn = open_pair()
    junk = b"\xc1" * 100  # 0xc1 is never valid msgpack
    conn.receive_data(len(junk).to_bytes(4, "big") + junk)
    with pytest.raises(ProtocolError, match="undecodable"):
        conn.next_event()
    assert conn.buffered == 0


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(st.integers(78, MAX_ENVELOPE), st.sampled_from([78, 8_000, MAX_ENVELOPE])),
        min_size=1,
        max_size=3 * MAX_PUT_BATCH,
    )
)
def test_put_batches_fill_frames_that_a_holder_accepts(sizes: list[int]) -> None:
    """Every run ``put_batches`` makes is one PUTCHUNKS the peer decodes (at most
    MAX_PUT_BATCH chunks in at most MAX_FRAME bytes), the runs cover every chunk once in
    order, and a run ends only when the next chunk would not fit."""
    runs = list(put_batches(sizes))
    assert [i for start, end in runs for i in range(start, end)] == list(range(len(sizes)))
    for n, (start, end) in enumerate(runs):
        chunks = tuple((bytes([k % 256]) * 32, b"e" * sizes[k]) for k in range(start, end))
        message = PutChunks(2**32 - 1, 2**32 - 1, 9, chunks)
        frame = encode_message(message)
        conn = Connection(HELLO3)
        conn.initiate()
        conn.receive_data(encode_message(HELLO3))
        assert conn.next_event() == HELLO3
        conn.receive_data(frame)
        assert conn.next_event() == message
        # A RELAYCHUNKS of the same run, naming the most holders, fits a frame as well.
        forward = tuple(range(2**32 - MAX_CHAIN, 2**32))
        relayed = RelayChunks(2**32 - 1, 2**32 - 1, 9, forward, chunks)
        conn.receive_data(encode_message(relayed))
        assert conn.next_event() == relayed
        if n + 1 < len(runs):  # full: by count, or the next chunk would not have fit
            bigger = (*chunks, (bytes(32), b"e" * sizes[end]))
            assert end - start == MAX_PUT_BATCH or (
                len(encode_message(PutChunks(0, 0, 1, bigger))) - 4 > MAX_FRAME * 0.99
            )


def test_a_version_1_peer_is_never_sent_more_than_it_accepts() -> None:
    """Version 1 allowed 15 chunks per PUTCHUNKS and closed the connection on more: with a
    peer that speaks only version 1, a node neither sends nor accepts more than that."""
    chunks = tuple((bytes([n]) * 32, b"e" * 100) for n in range(MAX_BATCH + 1))
    old, new = open_pair(HELLO)
    assert old.put_limit == new.put_limit == MAX_BATCH == 15
    assert list(put_batches([100] * 40, new.put_limit)) == [(0, 15), (15, 30), (30, 40)]
    with pytest.raises(ProtocolError, match="protocol version allows"):
        new.send(PutChunks(1, 1, 2, chunks))
    old.receive_data(encode_message(PutChunks(1, 1, 2, chunks)))
    with pytest.raises(ProtocolError, match="at most 15 chunks in protocol version 1"):
        old.next_event()
    a, b = open_pair(HELLO2)  # both speak version 2
    assert a.put_limit == MAX_PUT_BATCH
    full = tuple((bytes([n % 256]) * 32, b"e" * 100) for n in range(MAX_PUT_BATCH))
    b.receive_data(a.send(PutChunks(1, 1, 2, full)))
    assert b.next_event() == PutChunks(1, 1, 2, full)


def test_requests_match_answers_by_id_and_type() -> None:
    from node.messages import ANSWERS, Chunk, GetChunk, Holding, Query, Request, Stored
    from node.protocol import Requests

    requests = Requests()
    get = requests.start(lambda r: GetChunk(r, 1, b"a" * 32))
    query = requests.start(lambda r: Query(r, 1, (b"a" * 32,)))
    assert (get.req, query.req) == (1, 2) and requests.open == 2
    assert requests.answer(Holding(query.req, ())) == query.req
    assert requests.answer(Holding(query.req, ())) is None  # answered already: dropped
    with pytest.raises(ProtocolError, match="Stored does not answer GetChunk"):
        requests.answer(Stored(get.req, b"a" * 32, True))
    late = requests.start(lambda r: GetChunk(r, 1, b"b" * 32))
    requests.forget(late.req)  # timed out
    assert requests.answer(Chunk(late.req, b"b" * 32, b"x")) is None
    failed = requests.start(lambda r: GetChunk(r, 1, b"c" * 32))
    assert requests.answer(Error(failed.req, ErrorCode.NOT_FOUND, "no")) == failed.req
    assert requests.answer(Heartbeat(1, 2, 3)) is None  # not an answer at all
    assert all(issubclass(k, Request) for k in ANSWERS)  # every request that is answered


def test_request_ids_wrap_and_skip_zero() -> None:
    from node.messages import GetChunk
    from node.protocol import Requests

    requests = Requests()
    requests._next = 2**32 - 1
    last = requests.start(lambda r: GetChunk(r, 1, b"a" * 32))
    first = requests.start(lambda r: GetChunk(r, 1, b"a" * 32))
    assert (last.req, first.req) == (2**32 - 1, 1)


def test_a_connection_without_a_certificate_may_only_ask_for_its_kit_or_enrol() -> None:
    from node.messages import KitRequest, Query
    from node.protocol import ANONYMOUS_REQUESTS, check_anonymous

    request = KitRequest(1, 7)
    assert check_anonymous(request) is request
    with pytest.raises(ProtocolError, match="Query needs a member's certificate"):
        check_anonymous(Query(1, 1, ()))
    assert {c.__name__ for c in ANONYMOUS_REQUESTS} == {"KitRequest", "KitProof", "Enrol"}


def test_online_goes_to_each_peer_once_per_start() -> None:
    announcements = Announcements(boot_id=77)
    first = announcements.online_for(2)
    assert first == Online(77)
    assert announcements.online_for(2) is None  # a link made again is not a restart
    assert announcements.online_for(3) == Online(77)
    assert Announcements(boot_id=78).online_for(2) == Online(78)  # a new start says it again


def test_relaychunks_needs_version_3_on_both_sides() -> None:
    """A holder that speaks version 2 knows no RELAYCHUNKS: a node never sends it one, and
    one that arrives on a version 2 connection ends it (the sender broke the rules)."""
    chunks = ((bytes(32), b"e" * 100),)
    relay = RelayChunks(1, 1, 2, (3,), chunks)
    old, new = open_pair(HELLO2)
    assert not new.relays and not old.relays
    with pytest.raises(ProtocolError, match="RELAYCHUNKS needs protocol version 3"):
        new.send(relay)
    old.receive_data(encode_message(relay))
    with pytest.raises(ProtocolError, match="RELAYCHUNKS needs protocol version 3"):
        old.next_event()
    a = Connection(HELLO3)
    b = Connection(Hello((1, 2, 3), 8, "host-b", "127.0.0.1:7421"))
    b.receive_data(a.initiate())
    a.receive_data(b.initiate())
    assert b.next_event() == HELLO3 and isinstance(a.next_event(), Hello)
    assert a.relays and b.relays
    b.receive_data(a.send(relay))
    assert b.next_event() == relay


@pytest.mark.parametrize(
    ("forward", "said"),
    [
        ([], "names 1..8 nodes"),
        (list(range(9)), "names 1..8 nodes"),
        ([2, 3, 2], "each node once"),
        ([-1], "expected a u32"),
        ([2**32], "expected a u32"),
        (["2"], "expected a u32"),
        (5, "names 1..8 nodes"),
    ],
)
def test_a_forward_list_is_checked(forward: object, said: str) -> None:
    frame = msgpack.packb([RelayChunks.TYPE, 1, 1, 2, forward, [[bytes(32), b"e"]]])
    with pytest.raises(ProtocolError, match=said):
        decode_payload(frame)
