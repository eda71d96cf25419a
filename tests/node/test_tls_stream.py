"""TLSStream, the TLS pump under every peer connection, on real loopback sockets."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import trio

from node.identity import create_network_ca, issue_node_credentials, tls_contexts
from node.transport import READ_SIZE, Authenticated, TLSStream

from .test_transport import network_for

MIB = 1 << 20


async def connected_pair(
    tmp: Path, nursery: trio.Nursery, server_side: list[Authenticated]
) -> Authenticated:
    """A client connection; its server end is appended to ``server_side`` and kept open."""
    ca = create_network_ca()
    server, client = network_for(tmp, ca, 1), network_for(tmp, ca, 2)
    ready = trio.Event()

    async def handler(auth: Authenticated) -> None:
        server_side.append(auth)
        ready.set()
        await trio.sleep_forever()  # the test drives this end; leaving closes it

    address = str(await nursery.start(server.serve, "127.0.0.1:0", handler))
    auth = await client.connect(address)
    await ready.wait()
    assert isinstance(auth.stream, TLSStream)
    return auth


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
    servers: list[Authenticated] = []
    async with trio.open_nursery() as nursery:
        client = await connected_pair(tmp_path, nursery, servers)
        ends = {"client": client.stream, "server": servers[0].stream}
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
        await trio.aclose_forcefully(client.stream)
        nursery.cancel_scope.cancel()


async def test_one_receive_returns_every_record_that_has_arrived(tmp_path: Path) -> None:
    # The reason for TLSStream: trio.SSLStream hands out one 16 KiB record per call.
    servers: list[Authenticated] = []
    async with trio.open_nursery() as nursery:
        client = await connected_pair(tmp_path, nursery, servers)
        # 4 records, small enough for the socket buffers while nobody reads yet
        with trio.fail_after(10):
            await client.stream.send_all(bytes(60_000))
        await trio.sleep(0.3)
        data = await servers[0].stream.receive_some(READ_SIZE)
        assert len(data) == 60_000
        await trio.aclose_forcefully(client.stream)
        nursery.cancel_scope.cancel()


async def test_a_peer_vanishing_breaks_the_stream(tmp_path: Path) -> None:
    servers: list[Authenticated] = []
    async with trio.open_nursery() as nursery:
        client = await connected_pair(tmp_path, nursery, servers)
        await client.stream.send_all(b"last words")
        await trio.aclose_forcefully(client.stream)  # no TLS close_notify
        server_stream = servers[0].stream
        assert await server_stream.receive_some(READ_SIZE) == b"last words"
        with pytest.raises(trio.BrokenResourceError):
            await server_stream.receive_some(READ_SIZE)
        await trio.aclose_forcefully(client.stream)
        nursery.cancel_scope.cancel()


async def test_a_cancelled_send_leaves_the_stream_broken(tmp_path: Path) -> None:
    # Part of a record may be out: nothing after it could be decrypted by the peer.
    servers: list[Authenticated] = []
    async with trio.open_nursery() as nursery:
        client = await connected_pair(tmp_path, nursery, servers)
        with trio.move_on_after(0.5) as scope:
            while True:  # the server reads nothing: the socket buffers fill up
                await client.stream.send_all(bytes(1 * MIB))
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):
            await client.stream.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError):
            await client.stream.receive_some(READ_SIZE)
        await trio.aclose_forcefully(client.stream)
        nursery.cancel_scope.cancel()


async def test_a_clean_close_ends_the_stream(tmp_path: Path) -> None:
    # A peer that says goodbye properly (TLS close_notify, as trio.SSLStream.aclose does): the
    # data before it, then b"" for good, never a busy loop (the engine reports it as an empty
    # read, not as an error).
    ca = create_network_ca()
    contexts = {}
    for node_id in (1, 2):
        creds = issue_node_credentials(ca, node_id)
        folder = tmp_path / str(node_id)
        folder.mkdir()
        (folder / "cert.pem").write_bytes(creds.cert_pem)
        (folder / "key.pem").write_bytes(creds.key_pem)
        contexts[node_id] = tls_contexts(creds, str(folder / "cert.pem"), str(folder / "key.pem"))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def polite_client() -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, contexts[2][1], server_hostname="lanvault-peer")
        await stream.send_all(b"goodbye")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(polite_client)
        server = TLSStream(await listeners[0].accept(), contexts[1][0], server_side=True)
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
