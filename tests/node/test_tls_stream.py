"""TLSStream, the TLS pump under every peer connection, on real loopback sockets."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import random
import struct
import termios
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from node.identity import create_network_ca
from node.transport import READ_SIZE, Authenticated, TLSStream

from .cluster import eventually
from .test_transport import contexts_for, network_for

MIB = 1 << 20


@contextlib.asynccontextmanager
async def connected_pair(tmp: Path) -> AsyncIterator[tuple[TLSStream, TLSStream]]:
    """Both ends of one authenticated peer connection: (client, server); closed afterwards."""
    ca = create_network_ca()
    server, client = network_for(tmp, ca, 1), network_for(tmp, ca, 2)
    accepted: list[Authenticated] = []
    ready = trio.Event()

    async def handler(auth: Authenticated) -> None:
        accepted.append(auth)
        ready.set()
        await trio.sleep_forever()  # the test drives this end; leaving closes it

    async with trio.open_nursery() as nursery:
        address = str(await nursery.start(server.serve, "127.0.0.1:0", handler))
        auth = await client.connect(address)
        await ready.wait()
        assert isinstance(auth.stream, TLSStream) and isinstance(accepted[0].stream, TLSStream)
        try:
            yield auth.stream, accepted[0].stream
        finally:
            await trio.aclose_forcefully(auth.stream)
            nursery.cancel_scope.cancel()


def _pending(fd: int) -> int:
    """Bytes the kernel holds for reading on socket ``fd``."""
    (count,) = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))
    return int(count)


def pieces(seed: int, total: int) -> list[bytes]:
    """``total`` bytes in writes from 1 byte to 300 KB, reproducible from ``seed``."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < total:
        n = min(total - size, rng.choice((1, 7, 1000, 16384, 16385, 64000, 300_000)))
        out.append(rng.randbytes(n))
        size += n
    return out


async def test_both_directions_at_once_deliver_every_byte_in_order(tmp_path: Path) -> None:
    # Each end sends and receives at the same time on one stream, as a link does (requests
    # going out while answers come in): a send in progress must not disturb a receive.
    async with connected_pair(tmp_path) as (client, server):
        ends = {"client": client, "server": server}
        sent = {"client": pieces(1, 6 * MIB), "server": pieces(2, 6 * MIB)}
        got: dict[str, hashlib._Hash] = {name: hashlib.sha256() for name in ends}

        async def send(name: str) -> None:
            for piece in sent[name]:
                await ends[name].send_all(piece)

        async def receive(name: str) -> None:
            remaining = 6 * MIB
            while remaining:
                data = await ends[name].receive_some(READ_SIZE)
                assert data, "the stream ended early"
                got[name].update(data)
                remaining -= len(data)

        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                for name in ends:
                    inner.start_soon(send, name)
                    inner.start_soon(receive, name)
        assert got["server"].digest() == hashlib.sha256(b"".join(sent["client"])).digest()
        assert got["client"].digest() == hashlib.sha256(b"".join(sent["server"])).digest()


async def test_one_receive_returns_every_record_that_has_arrived(tmp_path: Path) -> None:
    # The reason for TLSStream: trio.SSLStream hands out one 16 KiB record per call.
    async with connected_pair(tmp_path) as (client, server):
        # 4 records, small enough for the socket buffers while nobody reads yet
        with trio.fail_after(10):
            await client.send_all(bytes(60_000))
        raw = server.transport
        assert isinstance(raw, trio.SocketStream)
        # Until the kernel holds all 4 records for the server (ciphertext: a little more).
        await eventually(lambda: _pending(raw.socket.fileno()) >= 60_000, 10, interval=0.01)
        data = await server.receive_some(READ_SIZE)
        assert len(data) == 60_000


async def test_a_peer_vanishing_breaks_the_stream(tmp_path: Path) -> None:
    async with connected_pair(tmp_path) as (client, server):
        await client.send_all(b"last words")
        await trio.aclose_forcefully(client)  # no TLS close_notify
        assert await server.receive_some(READ_SIZE) == b"last words"
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some(READ_SIZE)


async def test_a_cancelled_send_leaves_the_stream_broken(tmp_path: Path) -> None:
    # Part of a record may be out: nothing after it could be decrypted by the peer.
    async with connected_pair(tmp_path) as (client, _server):
        with trio.move_on_after(0.5) as scope:
            while True:  # the server reads nothing: the socket buffers fill up
                await client.send_all(bytes(1 * MIB))
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some(READ_SIZE)


async def test_a_clean_close_ends_the_stream(tmp_path: Path) -> None:
    # A peer that says goodbye properly (TLS close_notify, as trio.SSLStream.aclose does): the
    # data before it, then b"" for good, never a busy loop (the engine reports it as an empty
    # read, not as an error).
    ca = create_network_ca()
    server_ctx, _, _ = contexts_for(tmp_path, ca, 1)
    _, client_ctx, _ = contexts_for(tmp_path, ca, 2)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def polite_client() -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_ctx, server_hostname="lanvault-peer")
        await stream.send_all(b"goodbye")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(polite_client)
        server = TLSStream(await listeners[0].accept(), server_ctx, server_side=True)
        with trio.fail_after(10):
            await server.do_handshake()
            received = b""
            while len(received) < 7:
                received += await server.receive_some(READ_SIZE)
            assert received == b"goodbye"
            assert await server.receive_some(READ_SIZE) == b""
            assert await server.receive_some(READ_SIZE) == b""
        await server.aclose()
    for listener in listeners:
        await listener.aclose()
