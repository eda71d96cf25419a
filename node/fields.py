"""The peer protocol's limits and the checks of its fields: each check returns the value or
raises ``ProtocolError`` (``messages.py`` names a check per field of every message;
``docs/protocol.md`` states the limits, and a test compares them)."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Final

PROTOCOL_VERSION: Final = 3
SUPPORTED_VERSIONS: Final = (
    1,
    2,
    3,
)  # what a node's HELLO offers; both sides use the highest common
RELAY_VERSION: Final = 3  # RELAYCHUNKS (a holder forwards the batch to the next) from this on
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
MAX_CHAIN: Final = 8  # holders a RELAYCHUNKS names to forward to (degree 9 less the first)
# The rest of a PUTCHUNKS or RELAYCHUNKS frame: type, req, owner, degree, the forward list of up
# to MAX_CHAIN u32 (5 bytes each), the chunk list's header.
PUT_FRAME_OVERHEAD: Final = 80
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


def _forward(v: Any) -> tuple[int, ...]:
    """The holders a RELAYCHUNKS is forwarded to, in order: 1..MAX_CHAIN distinct node ids."""
    if type(v) is not list or not 1 <= len(v) <= MAX_CHAIN:
        raise ProtocolError(f"a forward list names 1..{MAX_CHAIN} nodes")
    ids = tuple(_u32(x) for x in v)
    if len(set(ids)) != len(ids):
        raise ProtocolError("a forward list names each node once")
    return ids


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
