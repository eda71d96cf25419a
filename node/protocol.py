"""The peer protocol as a pure state machine (sans-I/O, as h11 is): no sockets, no trio.

``Connection.receive_data`` takes bytes from the network; ``Connection.next_event`` returns the
next complete message (or ``NEED_DATA``); ``Connection.send`` turns a message into bytes to
write. ``Requests`` keeps the asking side's request ids and checks each answer against the
request it answers. The messages themselves are in ``messages.py``; ``docs/protocol.md`` is the
specification.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .messages import (
    ANSWER_TYPES,
    ANSWERS,
    LENGTH_PREFIX,
    MAX_BUFFER,
    MAX_FRAME,
    MAX_HELLO_FRAME,
    RELAY_VERSION,
    Enrol,
    Error,
    ErrorCode,
    Hello,
    KitProof,
    KitRequest,
    Message,
    Online,
    ProtocolError,
    PutChunks,
    RelayChunks,
    Request,
    decode_payload,
    encode_message,
    put_batch_limit,
)

# The requests a connection without a member's certificate may make: a lost node asking for
# its recovery kit, and a new computer enrolling with its join code.
ANONYMOUS_REQUESTS: Final = (KitRequest, KitProof, Enrol)


def check_anonymous(message: Message) -> Request:
    """``message`` if a connection without a certificate may send it; else ``ProtocolError``."""
    if not isinstance(message, ANONYMOUS_REQUESTS):
        raise ProtocolError(f"{type(message).__name__} needs a member's certificate")
    return message


class Announcements:
    """ONLINE goes to each peer once per start of this node, on the first link to it.

    A peer that hears ONLINE takes this node for restarted (it forgets that it had given this
    node up, and pending work towards it goes on); a link made again after a dropped
    connection is not a restart, so it says nothing more."""

    def __init__(self, boot_id: int) -> None:
        self.boot_id = boot_id
        self._told: set[int] = set()

    def online_for(self, peer_id: int) -> Online | None:
        """The ONLINE to send on a new link to ``peer_id``, or None if it was sent already."""
        if peer_id in self._told:
            return None
        self._told.add(peer_id)
        return Online(self.boot_id)


class Requests:
    """The asking side of a connection: request ids, and which answer fits which request.

    Ids run 1..2**32-1 and wrap. An answer to a request still open must be of the type the
    request calls for (``ANSWERS``) or an ERROR; else ``ProtocolError``. An answer to a request
    given up on (``forget``, after a timeout) or never made is ``None``: dropped.
    """

    def __init__(self) -> None:
        self._next = 1
        self._open: dict[int, type[Request]] = {}

    def start(self, make: Callable[[int], Request]) -> Request:
        """The request ``make(id)`` under a fresh id, now open."""
        req = self._next
        self._next = self._next % (2**32 - 1) + 1
        request = make(req)
        if request.req != req:
            raise ValueError("a request must carry the id it is given")
        self._open[req] = type(request)
        return request

    def forget(self, req: int) -> None:
        """Give up on request ``req`` (an answer that comes later is dropped)."""
        self._open.pop(req, None)

    def answer(self, message: Message) -> int | None:
        """The id of the open request ``message`` answers (closed now), or None."""
        req = getattr(message, "req", 0)
        if not isinstance(message, ANSWER_TYPES) or req == 0:
            return None
        kind = self._open.pop(req, None)
        if kind is None:
            return None
        if not isinstance(message, (Error, *ANSWERS[kind])):
            raise ProtocolError(f"{type(message).__name__} does not answer {kind.__name__}")
        return req

    @property
    def open(self) -> int:
        return len(self._open)


class NeedData:
    """Sentinel returned by ``next_event`` when more bytes are required."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class Connection:
    """One side of a peer connection: framing, the HELLO handshake, and message validation."""

    def __init__(self, hello: Hello) -> None:
        self._our_hello = hello
        self._buffer = bytearray()
        self._hello_sent = False
        self.peer_hello: Hello | None = None
        self.version: int | None = None
        self.closed = False
        self._frame_limit = MAX_FRAME

    def limit_frames(self, limit: int) -> None:
        """Accept no frame longer than ``limit`` from now on (an anonymous peer's)."""
        self._frame_limit = min(self._frame_limit, limit)

    @property
    def frame_limit(self) -> int:
        return MAX_HELLO_FRAME if self.peer_hello is None else self._frame_limit

    def room(self) -> int:
        """How many more bytes ``receive_data`` accepts now: read no more than this."""
        if self.peer_hello is None or self._frame_limit < MAX_FRAME:
            cap = self.frame_limit + LENGTH_PREFIX.size
        else:
            cap = MAX_BUFFER
        return max(0, cap - len(self._buffer))

    def initiate(self) -> bytes:
        """Bytes to send first: our HELLO."""
        if self._hello_sent:
            raise ProtocolError("HELLO already sent")
        self._hello_sent = True
        return encode_message(self._our_hello)

    @property
    def put_limit(self) -> int:
        """Chunks a PUTCHUNKS may hold on this connection (by the version both sides speak)."""
        return put_batch_limit(self.version)

    @property
    def relays(self) -> bool:
        """Whether a RELAYCHUNKS may be sent on this connection (both sides speak version 3)."""
        return self.version is not None and self.version >= RELAY_VERSION

    def send(self, message: Message) -> bytes:
        if self.closed:
            raise ProtocolError("connection is closed")
        if isinstance(message, Hello):
            raise ProtocolError("HELLO is sent by initiate()")
        if not self._hello_sent:
            raise ProtocolError("HELLO must be sent first")
        if isinstance(message, PutChunks | RelayChunks) and len(message.chunks) > self.put_limit:
            raise ProtocolError(
                f"a PUTCHUNKS of {len(message.chunks)} chunks is more than this peer's"
                f" protocol version allows ({self.put_limit})"
            )
        if isinstance(message, RelayChunks) and not self.relays:
            raise ProtocolError(f"RELAYCHUNKS needs protocol version {RELAY_VERSION}")
        return encode_message(message)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the network. ``b""`` means the peer closed its side."""
        if not data:
            self.closed = True
            return
        if len(data) > self.room():
            raise ProtocolError("receive buffer overflow: events are not being consumed")
        self._buffer += data

    def next_event(self) -> Message | NeedData:
        """The next complete message, or ``NEED_DATA``; raises ``ProtocolError`` on bad input."""
        if len(self._buffer) < LENGTH_PREFIX.size:
            return self._end_or_need()
        (length,) = LENGTH_PREFIX.unpack_from(self._buffer)
        if not 1 <= length <= self.frame_limit:
            raise ProtocolError(f"frame length {length} outside 1..{self.frame_limit}")
        if len(self._buffer) < LENGTH_PREFIX.size + length:
            return self._end_or_need()
        # Decoded in place: the values are copied out once, the payload is not copied first.
        try:
            with (
                memoryview(self._buffer) as view,
                view[LENGTH_PREFIX.size : LENGTH_PREFIX.size + length] as payload,
            ):
                message = decode_payload(payload)
        finally:  # a bad frame is consumed too: asked again, the stream does not repeat it
            del self._buffer[: LENGTH_PREFIX.size + length]
        if self.peer_hello is None:
            if not isinstance(message, Hello):
                raise ProtocolError(f"expected HELLO first, got {type(message).__name__}")
            common = set(message.versions) & set(self._our_hello.versions)
            if not common:
                raise ProtocolError(
                    f"no common protocol version (peer speaks {list(message.versions)})",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
            self.peer_hello = message
            self.version = max(common)
        elif isinstance(message, Hello):
            raise ProtocolError("HELLO sent twice")
        elif isinstance(message, PutChunks | RelayChunks) and len(message.chunks) > self.put_limit:
            raise ProtocolError(
                f"a PUTCHUNKS holds at most {self.put_limit} chunks in protocol version"
                f" {self.version}"
            )
        elif isinstance(message, RelayChunks) and not self.relays:
            raise ProtocolError(f"RELAYCHUNKS needs protocol version {RELAY_VERSION}")
        return message

    def _end_or_need(self) -> NeedData:
        if self.closed and self._buffer:
            raise ProtocolError("connection closed in the middle of a frame")
        return NEED_DATA

    @property
    def buffered(self) -> int:
        return len(self._buffer)
