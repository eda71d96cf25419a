"""The trio side of the protocol: authenticated streams, a pump around ``protocol.Connection``,
and request/answer multiplexing over one connection.

``Network`` is what a node dials and listens with. ``TLSNetwork`` is the real one (TCP + TLS 1.3,
mutual certificates); the tests also use an in-memory network with the same interface.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from .admission import Admission, accept_loop
from .identity import IdentityError, certificate_fingerprint, node_id_from_certificate
from .messages import Error, ErrorCode, Hello, Message, ProtocolError, Request
from .protocol import NEED_DATA, Connection, Requests

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 10.0
READ_SIZE = 256 * 1024
SMALL_READ = 17 * 1024  # one TLS record and its overhead: what the handshake reads at a time


class PeerUnavailable(Exception):
    """A peer could not be reached or answered nothing in time."""


class RemoteError(Exception):
    """The peer answered a request with ERROR."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code_name}: {error.message}")
        self.code = error.code
        self.error = error


@dataclass(slots=True)
class Authenticated:
    """A stream whose far end proved to be node ``peer_id``."""

    stream: trio.abc.Stream
    peer_id: int
    remote_host: str = ""  # the far end's IP address, when the transport knows it
    # No certificate at all: only the recovery-kit exchange is allowed (docs/protocol.md).
    anonymous: bool = False


Handler = Callable[[Authenticated], Awaitable[None]]


class Network(Protocol):
    async def connect(self, address: str) -> Authenticated: ...

    async def serve(
        self, listen: str, handler: Handler, *, task_status: trio.TaskStatus[str] = ...
    ) -> None: ...


def split_address(address: str, allow_any_port: bool = False) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    lowest = 0 if allow_any_port else 1
    if not sep or not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class PinStore:
    """Trust on first use of a node id: the first certificate fingerprint seen for it sticks."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._pins: dict[str, str] = {}
        if path is not None and path.exists():
            self._pins = json.loads(path.read_text())

    def check(self, node_id: int, fingerprint: str) -> None:
        known = self._pins.get(str(node_id))
        if known is None:
            self._pins[str(node_id)] = fingerprint
            self._save()
        elif known != fingerprint:
            raise IdentityError(
                f"node {node_id} presented a different certificate than before; refusing it"
            )

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._pins, indent=1))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        tmp.replace(self._path)


class TLSStream(trio.abc.Stream):
    """TLS over a trio socket stream: the ``ssl`` module's engine (memory BIOs), as
    ``trio.SSLStream`` drives it, but reading every record that has arrived at once.

    ``trio.SSLStream.receive_some`` returns one TLS record (16 KiB) per call, each through its
    locks and checkpoints: a 64,000-byte chunk took four calls, and TLS cost about 1.6 ms of CPU
    per MB received (0.3 without TLS). Draining the records of one socket read (up to
    ``READ_SIZE``) in one call takes a third of that off. Semantics follow ``trio.SSLStream``:
    a cancelled or failed send breaks the stream, a peer closing without TLS close_notify is a
    ``BrokenResourceError``, errors of the engine are ``BrokenResourceError``.
    """

    def __init__(
        self,
        transport: trio.SocketStream,
        ctx: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        # Reads can produce records to send too (TLS 1.3 key updates): whoever sends takes
        # everything pending, in order, under this lock, until nothing is pending.
        self._send_lock = trio.StrictFIFOLock()
        self._broken = False
        self._eof = False

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        return self._tls.getpeercert(binary_form=True)

    def _check(self) -> None:
        if self._broken:
            raise trio.BrokenResourceError("the TLS stream broke earlier")

    async def _flush(self) -> None:
        async with self._send_lock:
            while self._outgoing.pending:
                data = self._outgoing.read()
                try:
                    await self.transport.send_all(data)
                except BaseException:
                    self._broken = True  # cancelled or failed: half a record ruins the stream
                    raise

    async def _receive_into_engine(self, wanted: int = SMALL_READ) -> None:
        # No more ciphertext than the reader asked for (a record's worth at least): a peer
        # not yet authenticated is read in small steps, and never buffered beyond them.
        data = await self.transport.receive_some(min(READ_SIZE, max(wanted, SMALL_READ)))
        if not data:
            self._incoming.write_eof()
        else:
            self._incoming.write(data)

    async def do_handshake(self) -> None:
        self._check()
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._receive_into_engine()
                continue
            except (ssl.SSLError, ssl.SSLEOFError) as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            await self._flush()
            return

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            self._broken = True
            raise trio.BrokenResourceError(f"TLS failed: {exc}") from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check()
        limit = READ_SIZE if max_bytes is None else max_bytes
        while True:
            parts: list[bytes] = []
            size = 0
            try:
                while size < limit:
                    part = self._tls.read(limit - size)
                    if not part:  # the peer's close_notify: a clean end
                        self._eof = True
                        break
                    parts.append(part)
                    size += len(part)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self._eof = True  # the same, as some ssl versions report it
            except ssl.SSLError as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"TLS failed: {exc}") from exc
            if self._outgoing.pending and not self._send_lock.locked():
                # Records a read produced (rare); a send in progress takes them along. Never
                # wait for it here: two ends each sending while the other's reader waits for
                # its own sender would stall for good.
                await self._flush()
            if parts:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._eof:
                return b""
            await self._receive_into_engine(limit)

    async def aclose(self) -> None:
        # Like the node's every caller (aclose_forcefully): no close_notify, the socket goes.
        self._broken = True
        await self.transport.aclose()


class TLSNetwork:
    """TCP with TLS 1.3 and mutual certificate authentication."""

    def __init__(
        self,
        server_ctx: ssl.SSLContext,
        client_ctx: ssl.SSLContext,
        pins: PinStore,
        own_id: int,
    ) -> None:
        self._server_ctx = server_ctx
        self._client_ctx = client_ctx
        self._pins = pins
        self._own_id = own_id
        self.admission = Admission()
        # Who may link, by id and certificate fingerprint (the roster); raises IdentityError.
        self.admit: Callable[[int, str], None] | None = None

    def _authenticate(self, stream: TLSStream) -> int | None:
        """The verified peer's node id; None for a client without a certificate."""
        der = stream.getpeercert(binary_form=True)
        if not der:
            return None
        peer_id = node_id_from_certificate(der)
        assert der is not None
        fingerprint = certificate_fingerprint(der)
        if self.admit is not None:
            self.admit(peer_id, fingerprint)
        self._pins.check(peer_id, fingerprint)
        return peer_id

    async def connect(self, address: str) -> Authenticated:
        host, port = split_address(address)
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                tcp = await trio.open_tcp_stream(host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise PeerUnavailable(f"cannot connect to {address}: {exc or 'timeout'}") from None
        stream = TLSStream(tcp, self._client_ctx, server_hostname="lanvault-peer")
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await stream.do_handshake()
            peer_id = self._authenticate(stream)
            if peer_id is None:
                raise IdentityError("the peer presented no certificate")
        except (trio.BrokenResourceError, trio.TooSlowError, IdentityError, ssl.SSLError) as exc:
            await trio.aclose_forcefully(stream)
            raise PeerUnavailable(f"TLS with {address} failed: {exc}") from None
        return Authenticated(stream, peer_id)

    async def serve(
        self,
        listen: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = split_address(listen, allow_any_port=True)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        actual = f"{host}:{bound[1]}"
        admission = self.admission

        async def on_connection(tcp: trio.SocketStream) -> None:
            try:
                remote = tcp.socket.getpeername()[0]
            except OSError:  # gone already
                await trio.aclose_forcefully(tcp)
                return
            if not admission.admit(remote):
                await trio.aclose_forcefully(tcp)
                return
            admitted = True
            try:
                stream = TLSStream(tcp, self._server_ctx, server_side=True)
                try:
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await stream.do_handshake()
                    peer_id = self._authenticate(stream)
                except (
                    trio.BrokenResourceError,
                    trio.TooSlowError,
                    IdentityError,
                    ssl.SSLError,
                ) as exc:
                    admission.failed(str(exc))
                    await trio.aclose_forcefully(stream)
                    return
                try:
                    if peer_id is None:  # stays counted: it never proves anything
                        await handler(Authenticated(stream, 0, remote, anonymous=True))
                    else:
                        admission.release(remote)  # a member, by its certificate
                        admitted = False
                        await handler(Authenticated(stream, peer_id, remote))
                finally:
                    await trio.aclose_forcefully(stream)
            finally:
                if admitted:
                    admission.release(remote)

        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, on_connection, nursery)
            task_status.started(actual)


async def connect_anonymous(address: str) -> tuple[Authenticated, bytes]:
    """TLS without a certificate of our own (recovery): the stream and the server's certificate.

    The server cannot be verified yet (we have no CA); the caller checks the returned
    certificate against the CA it recovers before trusting anything else it got.
    """
    host, port = split_address(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            tcp = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise PeerUnavailable(f"cannot connect to {address}: {exc or 'timeout'}") from None
    stream = TLSStream(tcp, ctx, server_hostname="lanvault-peer")
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        if not der:
            raise IdentityError("the peer presented no certificate")
        peer_id = node_id_from_certificate(der)
    except (trio.BrokenResourceError, trio.TooSlowError, IdentityError, ssl.SSLError) as exc:
        await trio.aclose_forcefully(stream)
        raise PeerUnavailable(f"TLS with {address} failed: {exc}") from None
    return Authenticated(stream, peer_id, host, anonymous=True), der


@dataclass(slots=True)
class Traffic:
    """Bytes a node's peer connections sent and received, over all of them (status: what this
    computer's link carried for lanvault, TLS records aside)."""

    sent: int = 0
    received: int = 0


class Channel:
    """The protocol pump on one authenticated stream: HELLO, then messages in and out."""

    def __init__(self, auth: Authenticated, hello: Hello, traffic: Traffic | None = None) -> None:
        self.auth = auth
        self.peer_id = auth.peer_id
        self._conn = Connection(hello)
        self._send_lock = trio.Lock()
        self.peer_hello: Hello | None = None
        self._traffic = traffic if traffic is not None else Traffic()

    async def handshake(self, timeout: float = HANDSHAKE_TIMEOUT) -> Hello:
        with trio.fail_after(timeout):
            await self._write(self._conn.initiate())
            message = await self.receive()
        if not isinstance(message, Hello):  # Connection enforces this; keeps mypy informed
            raise ProtocolError("expected HELLO")
        if self.auth.anonymous:
            self.peer_hello = message  # an unknown computer: it may only ask for a kit
            return message
        if message.node_id != self.peer_id:
            await self.send_error(
                0, ErrorCode.FORBIDDEN, "HELLO names another node than the certificate"
            )
            raise ProtocolError(
                f"peer authenticated as node {self.peer_id} but says it is node {message.node_id}"
            )
        self.peer_hello = message
        return message

    @property
    def put_limit(self) -> int:
        """Chunks a PUTCHUNKS may hold here (by the protocol version both sides speak)."""
        return self._conn.put_limit

    @property
    def relays(self) -> bool:
        """Whether the peer forwards a RELAYCHUNKS (it speaks protocol version 3)."""
        return self._conn.relays

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            await self.auth.stream.send_all(data)
            self._traffic.sent += len(data)

    async def send(self, message: Message) -> None:
        if self._conn.closed:
            raise trio.ClosedResourceError("the peer closed the connection")
        await self._write(self._conn.send(message))

    async def send_error(self, req: int, code: int, text: str) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError):
            await self.send(Error(req, code, text[:400]))

    async def receive(self) -> Message:
        """The next message; raises ``trio.EndOfChannel`` when the peer closed cleanly."""
        while True:
            event = self._conn.next_event()
            if event is not NEED_DATA:
                assert isinstance(event, Message)
                return event
            if self._conn.closed:
                raise trio.EndOfChannel
            room = self._conn.room()
            if room == 0:  # cannot be: a frame that does not fit was refused by its length
                raise ProtocolError("receive buffer overflow: events are not being consumed")
            data = await self.auth.stream.receive_some(min(READ_SIZE, room))
            self._traffic.received += len(data)
            self._conn.receive_data(data)

    def limit_frames(self, limit: int) -> None:
        self._conn.limit_frames(limit)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.auth.stream)


class Link:
    """Our outgoing connection to one peer: many concurrent requests, answers matched by id."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.peer_id = channel.peer_id
        self._requests = Requests()  # ids and which answer fits which request (sans-I/O)
        self._waiting: dict[int, trio.MemorySendChannel[Message]] = {}
        self.closed = trio.Event()
        self.on_message: Callable[[Message], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read answers until the connection ends; then fail every waiting request."""
        task_status.started()
        try:
            while True:
                message = await self.channel.receive()
                if self.on_message is not None:
                    self.on_message(message)
                if isinstance(message, Error) and message.req == 0:
                    log.info("node %d closed our link: %s", self.peer_id, message.message)
                    return
                req = self._requests.answer(message)  # ProtocolError if it fits no request
                if req is not None:
                    self._waiting.pop(req).send_nowait(message)
        except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except ProtocolError as exc:
            log.warning("node %d broke the protocol: %s", self.peer_id, exc)
            await self.channel.send_error(0, exc.code, str(exc))
        finally:
            self.closed.set()
            for waiter in self._waiting.values():
                waiter.close()
            self._waiting.clear()
            await self.channel.aclose()

    async def request(self, make: Callable[[int], Request], timeout: float) -> Message:
        """Send ``make(req)`` and wait for its answer. Raises ``PeerUnavailable`` or ``RemoteError``."""
        if self.closed.is_set():
            raise PeerUnavailable(f"link to node {self.peer_id} is closed")
        request = self._requests.start(make)
        req = request.req
        send, receive = trio.open_memory_channel[Message](1)
        self._waiting[req] = send
        try:
            with trio.move_on_after(timeout) as scope:
                await self.channel.send(request)
                try:
                    answer = await receive.receive()
                except trio.EndOfChannel:
                    raise PeerUnavailable(f"connection to node {self.peer_id} broke") from None
            if scope.cancelled_caught:
                raise PeerUnavailable(f"node {self.peer_id} did not answer within {timeout:.0f} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise PeerUnavailable(f"connection to node {self.peer_id} broke") from None
        finally:
            self._waiting.pop(req, None)
            self._requests.forget(req)
        if isinstance(answer, Error):
            raise RemoteError(answer)
        return answer

    async def notify(self, message: Message) -> None:
        """Send a one-way message (HEARTBEAT, ONLINE)."""
        try:
            await self.channel.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerUnavailable(f"connection to node {self.peer_id} broke") from exc

    async def aclose(self) -> None:
        await self.channel.aclose()
