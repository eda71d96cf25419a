"""The peer protocol's messages: limits, field checks, one dataclass per message type, their
encoding (msgpack in length-prefixed frames), and which answer each request calls for.
``docs/protocol.md`` is the specification; this module follows it field for field. The
connection's state machine is in ``protocol.py``."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final

import msgpack

from chunkstore.kitexchange import CONFIRM_SIZE, PAKE_MESSAGE_SIZE

PROTOCOL_VERSION: Final = 2
SUPPORTED_VERSIONS: Final = (1, 2)  # what a node's HELLO offers; both sides use the highest common
MAX_FRAME: Final = 1_048_576
MAX_BUFFER: Final = 4 * MAX_FRAME
# Before the peer's HELLO is in, a frame can only be a HELLO: a few hundred bytes. A host that
# is not a member (or not yet proven one) can make a node buffer this much and no more.
MAX_HELLO_FRAME: Final = 4096
# A connection without a certificate may only exchange recovery-kit messages, all small.
MAX_ANONYMOUS_FRAME: Final = 16_384
MAX_ADDRESSES: Final = 16_384
MAX_CSR: Final = 4096  # a certificate request or a node certificate (an EC one is ~500 bytes)
MAX_ENVELOPE: Final = 64_078
MAX_BLOB: Final = 900_000
MAX_MESSAGE_TEXT: Final = 400
MAX_BATCH: Final = 15  # addresses per GETCHUNKS: 15 full envelopes fit in the answer's frame
# Chunks per PUTCHUNKS from version 2 on (version 1: MAX_BATCH). Its frame must fit MAX_FRAME
# as well: small chunks travel ~100 to a request (one holder commit each), full 64 KiB ones 15
# (``put_batches`` packs them).
MAX_PUT_BATCH: Final = 512
PUT_ITEM_OVERHEAD: Final = 40  # a PUTCHUNKS item's bytes beyond its envelope: [bin32, bin16]
PUT_FRAME_OVERHEAD: Final = 32  # the rest of a PUTCHUNKS frame: type, req, owner, degree, list
LENGTH_PREFIX = struct.Struct(">I")
_META_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the connection must close."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code  # the ErrorCode to report to the peer before closing


class ErrorCode:
    BAD_MESSAGE: Final = 1
    UNSUPPORTED_VERSION: Final = 2
    NOT_FOUND: Final = 3
    QUOTA_EXCEEDED: Final = 4
    FORBIDDEN: Final = 5
    CORRUPT: Final = 6
    INTERNAL: Final = 7
    SHUTTING_DOWN: Final = 8

    NAMES: ClassVar[dict[int, str]] = {
        1: "BAD_MESSAGE",
        2: "UNSUPPORTED_VERSION",
        3: "NOT_FOUND",
        4: "QUOTA_EXCEEDED",
        5: "FORBIDDEN",
        6: "CORRUPT",
        7: "INTERNAL",
        8: "SHUTTING_DOWN",
    }


# -- field validators: each returns the value or raises ProtocolError ------------------------


def _u32(v: Any) -> int:
    if type(v) is not int or not 0 <= v < 2**32:
        raise ProtocolError(f"expected a u32, got {type(v).__name__}")
    return v


def _req(v: Any) -> int:
    if _u32(v) == 0:
        raise ProtocolError("request id 0 is reserved")
    return int(v)


def _u64(v: Any) -> int:
    if type(v) is not int or not 0 <= v < 2**64:
        raise ProtocolError(f"expected a u64, got {type(v).__name__}")
    return v


def _degree(v: Any) -> int:
    if type(v) is not int or not 1 <= v <= 9:
        raise ProtocolError("degree must be 1..9")
    return v


def _address(v: Any) -> bytes:
    if type(v) is not bytes or len(v) != 32:
        raise ProtocolError("address must be 32 bytes")
    return v


def _addresses(v: Any) -> tuple[bytes, ...]:
    if type(v) is not list or len(v) > MAX_ADDRESSES:
        raise ProtocolError(f"address list must be a list of at most {MAX_ADDRESSES}")
    # Checked with C-level maps, not one call per address: a QUERY's answer may list 4,096.
    if v and (set(map(type, v)) != {bytes} or set(map(len, v)) != {32}):
        raise ProtocolError("address must be 32 bytes")
    return tuple(v)


def _envelope(v: Any) -> bytes:
    if type(v) is not bytes or not 0 < len(v) <= MAX_ENVELOPE:
        raise ProtocolError(f"envelope must be 1..{MAX_ENVELOPE} bytes")
    return v


def _blob(v: Any) -> bytes:
    if type(v) is not bytes or len(v) > MAX_BLOB:
        raise ProtocolError(f"blob must be at most {MAX_BLOB} bytes")
    return v


def _name(v: Any) -> str:
    if type(v) is not str or not _META_NAME.fullmatch(v):
        raise ProtocolError("blob name must be 1..64 of [A-Za-z0-9._-]")
    return v


def _text(limit: int) -> Any:
    def check(v: Any) -> str:
        if type(v) is not str or len(v) > limit:
            raise ProtocolError(f"text field must be a string of at most {limit} characters")
        return v

    return check


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ProtocolError("expected a boolean")
    return v


def _versions(v: Any) -> tuple[int, ...]:
    if type(v) is not list or not 1 <= len(v) <= 16:
        raise ProtocolError("versions must be a list of 1..16 integers")
    return tuple(_u32(x) for x in v)


def put_batch_limit(version: int | None) -> int:
    """Chunks one PUTCHUNKS may hold on a connection of this protocol version."""
    return MAX_PUT_BATCH if version is not None and version >= 2 else MAX_BATCH


def put_batches(sizes: Sequence[int], limit: int = MAX_PUT_BATCH) -> Iterator[tuple[int, int]]:
    """Split envelopes of these sizes, in order, into ``[start, end)`` runs that each fill one
    PUTCHUNKS: at most ``limit`` chunks (``put_batch_limit``) in at most MAX_FRAME bytes."""
    start, used = 0, PUT_FRAME_OVERHEAD
    for index, size in enumerate(sizes):
        cost = size + PUT_ITEM_OVERHEAD
        if index > start and (index - start >= limit or used + cost > MAX_FRAME):
            yield start, index
            start, used = index, PUT_FRAME_OVERHEAD
        used += cost
    if start < len(sizes):
        yield start, len(sizes)


def _envelope_batch(v: Any) -> tuple[tuple[bytes, bytes], ...]:
    if type(v) is not list or not 1 <= len(v) <= MAX_PUT_BATCH:
        raise ProtocolError(f"a chunk batch holds 1..{MAX_PUT_BATCH} chunks")
    out = []
    for item in v:
        if type(item) is not list or len(item) != 2:
            raise ProtocolError("a batch item is [address, envelope]")
        out.append((_address(item[0]), _envelope(item[1])))
    return tuple(out)


def _address_batch(v: Any) -> tuple[bytes, ...]:
    if type(v) is not list or not 1 <= len(v) <= MAX_BATCH:
        raise ProtocolError(f"a chunk batch holds 1..{MAX_BATCH} chunks")
    # Checked with C-level maps, not one call per address: a QUERY's answer may list 4,096.
    if v and (set(map(type, v)) != {bytes} or set(map(len, v)) != {32}):
        raise ProtocolError("address must be 32 bytes")
    return tuple(v)


def _results(v: Any) -> tuple[int, ...]:
    if type(v) is not list or len(v) > MAX_BATCH:
        raise ProtocolError(f"a result list holds at most {MAX_BATCH} entries")
    return tuple(_u32(x) for x in v)


def _put_results(v: Any) -> tuple[int, ...]:
    if type(v) is not list or len(v) > MAX_PUT_BATCH:
        raise ProtocolError(f"a result list holds at most {MAX_PUT_BATCH} entries")
    return tuple(_u32(x) for x in v)


def _maybe_envelopes(v: Any) -> tuple[bytes, ...]:
    """Envelopes, or empty bytes where a chunk could not be given (see the codes)."""
    if type(v) is not list or len(v) > MAX_BATCH:
        raise ProtocolError(f"a result list holds at most {MAX_BATCH} entries")
    return tuple(b"" if x == b"" else _envelope(x) for x in v)


def _bytes_upto(limit: int) -> Any:
    def check(v: Any) -> bytes:
        if type(v) is not bytes or not 0 < len(v) <= limit:
            raise ProtocolError(f"expected 1..{limit} bytes")
        return v

    return check


def _fixed(size: int) -> Any:
    def check(v: Any) -> bytes:
        if type(v) is not bytes or len(v) != size:
            raise ProtocolError(f"expected exactly {size} bytes")
        return v

    return check


def _info(v: Any) -> dict[str, Any]:
    if type(v) is not dict or len(v) > 256 or any(type(k) is not str for k in v):
        raise ProtocolError("info must be a map with string keys")
    return v


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
    GetChunks: (ChunksMany,),
    KitRequest: (KitChallenge,),
    KitProof: (Kit,),
    Enrol: (Enrolled,),
}
