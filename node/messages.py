"""The peer protocol's messages: one dataclass per message type (each field with its check,
from ``fields.py``, which also holds the limits), their encoding (msgpack in length-prefixed
frames), and which answer each request calls for.
``docs/protocol.md`` is the specification; this module follows it field for field. The
connection's state machine is in ``protocol.py``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final

import msgpack

from chunkstore.kitexchange import CONFIRM_SIZE, PAKE_MESSAGE_SIZE

from .fields import (
    LENGTH_PREFIX,
    MAX_ADDRESSES,
    MAX_ANONYMOUS_FRAME,
    MAX_BATCH,
    MAX_BLOB,
    MAX_BUFFER,
    MAX_CHAIN,
    MAX_CSR,
    MAX_ENVELOPE,
    MAX_FRAME,
    MAX_HELLO_FRAME,
    MAX_MESSAGE_TEXT,
    MAX_PUT_BATCH,
    PROTOCOL_VERSION,
    PUT_FRAME_OVERHEAD,
    PUT_ITEM_OVERHEAD,
    RELAY_VERSION,
    SUPPORTED_VERSIONS,
    ErrorCode,
    ProtocolError,
    _address,
    _address_batch,
    _addresses,
    _blob,
    _bool,
    _bytes_upto,
    _degree,
    _envelope,
    _envelope_batch,
    _fixed,
    _forward,
    _info,
    _maybe_envelopes,
    _name,
    _put_results,
    _req,
    _results,
    _text,
    _u32,
    _u64,
    _versions,
    put_batch_limit,
    put_batches,
)

__all__ = [  # the limits and errors callers take from here
    "LENGTH_PREFIX",
    "MAX_ADDRESSES",
    "MAX_ANONYMOUS_FRAME",
    "MAX_BATCH",
    "MAX_BLOB",
    "MAX_BUFFER",
    "MAX_CHAIN",
    "MAX_CSR",
    "MAX_ENVELOPE",
    "MAX_FRAME",
    "MAX_HELLO_FRAME",
    "MAX_MESSAGE_TEXT",
    "MAX_PUT_BATCH",
    "PROTOCOL_VERSION",
    "PUT_FRAME_OVERHEAD",
    "PUT_ITEM_OVERHEAD",
    "RELAY_VERSION",
    "SUPPORTED_VERSIONS",
    "ErrorCode",
    "ProtocolError",
    "put_batch_limit",
    "put_batches",
]

# -- messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    TYPE: ClassVar[int] = 0
    CHECKS: ClassVar[tuple[Any, ...]] = ()

    def to_list(self) -> list[Any]:
        out: list[Any] = [self.TYPE]
        for f in fields(self):
            value = getattr(self, f.name)
            out.append(list(value) if isinstance(value, tuple) else value)
        return out


@dataclass(frozen=True, slots=True)
class Request(Message):
    """A message that expects an answer carrying the same ``req``."""

    req: int


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[int] = 1
    CHECKS: ClassVar[tuple[Any, ...]] = (_versions, _u32, _text(128), _text(300))
    versions: tuple[int, ...]
    node_id: int
    host_id: str
    listen: str


@dataclass(frozen=True, slots=True)
class PutChunk(Request):
    TYPE: ClassVar[int] = 2
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _address, _degree, _envelope)
    owner: int
    address: bytes
    degree: int
    envelope: bytes


@dataclass(frozen=True, slots=True)
class Stored(Message):
    TYPE: ClassVar[int] = 3
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _address, _bool)
    req: int
    address: bytes
    new: bool


@dataclass(frozen=True, slots=True)
class GetChunk(Request):
    TYPE: ClassVar[int] = 4
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _address)
    owner: int
    address: bytes


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    TYPE: ClassVar[int] = 5
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _address, _envelope)
    req: int
    address: bytes
    envelope: bytes


@dataclass(frozen=True, slots=True)
class Delete(Request):
    TYPE: ClassVar[int] = 6
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _addresses)
    owner: int
    addresses: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Deleted(Message):
    TYPE: ClassVar[int] = 7
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32)
    req: int
    count: int


@dataclass(frozen=True, slots=True)
class Removed(Request):
    TYPE: ClassVar[int] = 8
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _address, _degree)
    owner: int
    address: bytes
    degree: int


@dataclass(frozen=True, slots=True)
class Query(Request):
    TYPE: ClassVar[int] = 9
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _addresses)
    owner: int
    addresses: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Holding(Message):
    TYPE: ClassVar[int] = 10
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _addresses)
    req: int
    addresses: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    TYPE: ClassVar[int] = 11
    CHECKS: ClassVar[tuple[Any, ...]] = (_u64, _u64, _u64)
    capacity: int
    used: int
    chunks: int


@dataclass(frozen=True, slots=True)
class Online(Message):
    TYPE: ClassVar[int] = 12
    CHECKS: ClassVar[tuple[Any, ...]] = (_u64,)
    boot_id: int


@dataclass(frozen=True, slots=True)
class Ok(Message):
    TYPE: ClassVar[int] = 13
    CHECKS: ClassVar[tuple[Any, ...]] = (_req,)
    req: int


@dataclass(frozen=True, slots=True)
class Error(Message):
    TYPE: ClassVar[int] = 14
    CHECKS: ClassVar[tuple[Any, ...]] = (_u32, _u32, _text(MAX_MESSAGE_TEXT))
    req: int
    code: int
    message: str

    @property
    def code_name(self) -> str:
        return ErrorCode.NAMES.get(self.code, f"code {self.code}")


@dataclass(frozen=True, slots=True)
class PutMeta(Request):
    TYPE: ClassVar[int] = 15
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _name, _u64, _blob)
    owner: int
    name: str
    seq: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class GetMeta(Request):
    TYPE: ClassVar[int] = 16
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _name)
    owner: int
    name: str


@dataclass(frozen=True, slots=True)
class Meta(Message):
    TYPE: ClassVar[int] = 17
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _name, _u64, _blob)
    req: int
    name: str
    seq: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class Status(Request):
    TYPE: ClassVar[int] = 18
    CHECKS: ClassVar[tuple[Any, ...]] = (_req,)


@dataclass(frozen=True, slots=True)
class StatusReply(Message):
    TYPE: ClassVar[int] = 19
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _info)
    req: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PutChunks(Request):
    TYPE: ClassVar[int] = 20
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _degree, _envelope_batch)
    owner: int
    degree: int
    chunks: tuple[tuple[bytes, bytes], ...]

    def to_list(self) -> list[Any]:
        return [self.TYPE, self.req, self.owner, self.degree, [list(c) for c in self.chunks]]


@dataclass(frozen=True, slots=True)
class RelayChunks(Request):
    """A PUTCHUNKS the holder also forwards, once stored, to ``forward[0]`` with the rest of the
    list (protocol version 3): the owner sends each byte once, the holders pass it on. The
    answer (STOREDMANY) is the holder's own results, sent once the forwarding is done or failed;
    the owner counts a copy downstream only when that holder itself says it holds it (QUERY)."""

    TYPE: ClassVar[int] = 34
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _degree, _forward, _envelope_batch)
    owner: int
    degree: int
    forward: tuple[int, ...]
    chunks: tuple[tuple[bytes, bytes], ...]

    def to_list(self) -> list[Any]:
        chunks = [list(c) for c in self.chunks]
        return [self.TYPE, self.req, self.owner, self.degree, list(self.forward), chunks]


@dataclass(frozen=True, slots=True)
class StoredMany(Message):
    """Per chunk of a PUTCHUNKS, in order: 0 stored now, 1 already held, else an error code + 100."""

    TYPE: ClassVar[int] = 21
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _put_results)
    req: int
    results: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GetChunks(Request):
    TYPE: ClassVar[int] = 22
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _address_batch)
    owner: int
    addresses: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ChunksMany(Message):
    """Per address of a GETCHUNKS, in order: the envelope, or b"" with its error code."""

    TYPE: ClassVar[int] = 23
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _maybe_envelopes, _results)
    req: int
    envelopes: tuple[bytes, ...]
    codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KitRequest(Request):
    """Anonymous connections only: ask for ``owner``'s recovery kit."""

    TYPE: ClassVar[int] = 24
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32)
    owner: int


@dataclass(frozen=True, slots=True)
class KitChallenge(Message):
    """The holder's half of the passphrase exchange (SPAKE2 message B, chunkstore.kitexchange).

    Types 25-27 were the exchange of version 1, whose proof a rogue server could test offline;
    they are no longer accepted (an old client gets BAD_MESSAGE)."""

    TYPE: ClassVar[int] = 29
    CHECKS: ClassVar[tuple[Any, ...]] = (
        _req,
        _u64,
        _u64,
        _fixed(16),
        _fixed(32),
        _fixed(PAKE_MESSAGE_SIZE),
    )
    req: int
    opslimit: int
    memlimit: int
    salt: bytes
    nonce: bytes
    pake: bytes


@dataclass(frozen=True, slots=True)
class KitProof(Request):
    """The client's half: SPAKE2 message A and the confirmation MAC under the session key."""

    TYPE: ClassVar[int] = 30
    CHECKS: ClassVar[tuple[Any, ...]] = (
        _req,
        _u32,
        _fixed(32),
        _fixed(PAKE_MESSAGE_SIZE),
        _fixed(CONFIRM_SIZE),
    )
    owner: int
    nonce: bytes
    pake: bytes
    confirm: bytes


@dataclass(frozen=True, slots=True)
class Kit(Message):
    """The recovery kit, sealed under the exchange's session key."""

    TYPE: ClassVar[int] = 31
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _blob)
    req: int
    sealed: bytes


@dataclass(frozen=True, slots=True)
class Wanted(Request):
    """To a chunk's owner: which of these does it still want kept? (HOLDING lists them.)"""

    TYPE: ClassVar[int] = 28
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _addresses)
    owner: int
    addresses: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Enrol(Request):
    """Anonymous connections only: a joining computer's certificate request, with the MAC of
    the join code's one-time secret over it (``node/enrolment.py``)."""

    TYPE: ClassVar[int] = 32
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _u32, _fixed(32), _bytes_upto(MAX_CSR), _fixed(32))
    node_id: int
    invite: bytes
    csr: bytes
    mac: bytes


@dataclass(frozen=True, slots=True)
class Enrolled(Message):
    TYPE: ClassVar[int] = 33
    CHECKS: ClassVar[tuple[Any, ...]] = (_req, _bytes_upto(MAX_CSR), _blob)
    req: int
    certificate: bytes
    roster: bytes


STORED_NEW: Final = 0
STORED_ALREADY: Final = 1
STORED_ERROR_BASE: Final = 100


MESSAGE_TYPES: Final[dict[int, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        PutChunk,
        Stored,
        GetChunk,
        Chunk,
        Delete,
        Deleted,
        Removed,
        Query,
        Holding,
        Heartbeat,
        Online,
        Ok,
        Error,
        PutMeta,
        GetMeta,
        Meta,
        Status,
        StatusReply,
        PutChunks,
        RelayChunks,
        StoredMany,
        GetChunks,
        ChunksMany,
        KitRequest,
        KitChallenge,
        KitProof,
        Kit,
        Wanted,
        Enrol,
        Enrolled,
    )
}
# Answers: messages that carry the ``req`` of a request they reply to.
ANSWER_TYPES: Final = (
    Stored,
    Chunk,
    Deleted,
    Holding,
    Ok,
    Error,
    Meta,
    StatusReply,
    StoredMany,
    ChunksMany,
    KitChallenge,
    Kit,
    Enrolled,
)


def encode_message(message: Message) -> bytes:
    """Serialize one message as a frame (length prefix included)."""
    try:
        payload: bytes = msgpack.packb(message.to_list(), use_bin_type=True)
    except (OverflowError, TypeError, ValueError) as exc:
        raise ProtocolError(f"{type(message).__name__} cannot be encoded: {exc}") from None
    if len(payload) > MAX_FRAME:
        raise ProtocolError(
            f"message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte frame limit"
        )
    return LENGTH_PREFIX.pack(len(payload)) + payload


def decode_payload(payload: bytes | memoryview) -> Message:
    """Parse and validate one frame payload."""
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_FRAME,
            max_str_len=MAX_FRAME,
            max_array_len=MAX_ADDRESSES + 16,
            max_map_len=256,
            max_ext_len=0,
        )
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}") from None
    if type(obj) is not list or not obj or type(obj[0]) is not int:
        raise ProtocolError("frame is not a typed message")
    cls = MESSAGE_TYPES.get(obj[0])
    if cls is None:
        raise ProtocolError(f"unknown message type {obj[0]}")
    values = obj[1:]
    if len(values) != len(cls.CHECKS):
        raise ProtocolError(f"{cls.__name__} takes {len(cls.CHECKS)} fields, got {len(values)}")
    checked = [check(value) for check, value in zip(cls.CHECKS, values, strict=True)]
    return cls(*checked)


# What answers each request (besides ERROR): any other answer to it is the peer's error.
ANSWERS: Final[dict[type[Request], tuple[type[Message], ...]]] = {
    PutChunk: (Stored,),
    GetChunk: (Chunk,),
    Delete: (Deleted,),
    Removed: (Ok,),
    Query: (Holding,),
    Wanted: (Holding,),
    PutMeta: (Ok,),
    GetMeta: (Meta,),
    Status: (StatusReply,),
    PutChunks: (StoredMany,),
    RelayChunks: (StoredMany,),
    GetChunks: (ChunksMany,),
    KitRequest: (KitChallenge,),
    KitProof: (Kit,),
    Enrol: (Enrolled,),
}
