"""TLS 1.3 with mutual certificates on real loopback sockets."""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path

import pytest
import trio

from node.identity import (
    IdentityError,
    Invitation,
    NetworkCA,
    create_network_ca,
    decode_join_code,
    encode_join_code,
    issue_node_credentials,
    tls_contexts,
)
from node.messages import (
    PROTOCOL_VERSION,
    Error,
    ErrorCode,
    Hello,
    ProtocolError,
    Status,
    StatusReply,
)
from node.transport import Authenticated, Channel, Link, PeerUnavailable, PinStore, TLSNetwork

from .cluster import eventually


def contexts_for(
    tmp: Path, ca: NetworkCA, node_id: int
) -> tuple[ssl.SSLContext, ssl.SSLContext, Path]:
    """A node's (server, client) TLS contexts under ``ca``, and the folder of its files."""
    creds = issue_node_credentials(ca, node_id)
    folder = tmp / f"id{node_id}-{id(creds)}"
    folder.mkdir(parents=True)
    (folder / "cert.pem").write_bytes(creds.cert_pem)
    (folder / "key.pem").write_bytes(creds.key_pem)
    server, client = tls_contexts(creds, str(folder / "cert.pem"), str(folder / "key.pem"))
    return server, client, folder


def network_for(tmp: Path, ca: NetworkCA, node_id: int, pins: PinStore | None = None) -> TLSNetwork:
    server, client, folder = contexts_for(tmp, ca, node_id)
    return TLSNetwork(server, client, pins or PinStore(folder / "pins.json"), node_id)


def hello(node_id: int) -> Hello:
    return Hello((PROTOCOL_VERSION,), node_id, f"host-{node_id}", "127.0.0.1:0")


async def start_echo_server(
    nursery: trio.Nursery, network: TLSNetwork, node_id: int, seen: list[int]
) -> str:
    async def handler(auth: Authenticated) -> None:
        seen.append(auth.peer_id)
        channel = Channel(auth, hello(node_id))
        try:
            await channel.handshake()
            message = await channel.receive()
            if isinstance(message, Status):
                await channel.send(StatusReply(message.req, {"node_id": node_id}))
            await channel.receive()
        except (ProtocolError, trio.EndOfChannel, trio.BrokenResourceError):
            pass

    return str(await nursery.start(network.serve, "127.0.0.1:0", handler))


async def test_members_authenticate_each_other(tmp_path: Path) -> None:
    ca = create_network_ca()
    server = network_for(tmp_path, ca, 1)
    client = network_for(tmp_path, ca, 2)
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        address = await start_echo_server(nursery, server, 1, seen)
        auth = await client.connect(address)
        assert auth.peer_id == 1
        channel = Channel(auth, hello(2))
        peer_hello = await channel.handshake()
        assert peer_hello.node_id == 1
        link = Link(channel)
        nursery.start_soon(link.run)
        answer = await link.request(lambda r: Status(r), 5)
        assert isinstance(answer, StatusReply) and answer.info["node_id"] == 1
        assert seen == [2]
        await link.aclose()
        nursery.cancel_scope.cancel()


async def test_certificate_from_another_network_is_refused(tmp_path: Path) -> None:
    ours, theirs = create_network_ca(), create_network_ca()
    server = network_for(tmp_path, ours, 1)
    stranger = network_for(tmp_path, theirs, 2)
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        address = await start_echo_server(nursery, server, 1, seen)
        with pytest.raises(PeerUnavailable, match="TLS"):
            await stranger.connect(address)
        await eventually(lambda: server.admission.failed_tls == 1, 10)  # the server is done
        assert seen == []  # the handler never ran: no protocol byte was parsed
        nursery.cancel_scope.cancel()


async def test_a_member_cannot_pose_as_a_known_node(tmp_path: Path) -> None:
    ca = create_network_ca()
    pins = PinStore(tmp_path / "server-pins.json")
    server = network_for(tmp_path, ca, 1, pins)
    honest = network_for(tmp_path, ca, 2)
    impostor = network_for(tmp_path, ca, 2)  # a new key and certificate for the same id
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        address = await start_echo_server(nursery, server, 1, seen)
        auth = await honest.connect(address)
        await trio.aclose_forcefully(auth.stream)
        await eventually(lambda: seen == [2], 10)
        with pytest.raises((PeerUnavailable, trio.BrokenResourceError)):
            auth2 = await impostor.connect(address)
            try:
                # TLS 1.3 may finish the client side first; the server then drops the connection.
                await auth2.stream.send_all(b"\x00\x00\x00\x01\x00")
                await auth2.stream.receive_some(10)
                await auth2.stream.send_all(b"\x00\x00\x00\x01\x00")
                raise PeerUnavailable("closed")
            finally:
                await trio.aclose_forcefully(auth2.stream)
        await eventually(lambda: server.admission.failed_tls == 1, 10)  # refused, by the pin
        assert seen == [2]
        # The pin survives a restart.
        assert "2" in (tmp_path / "server-pins.json").read_text()
        nursery.cancel_scope.cancel()


async def test_hello_must_name_the_certificate_id(tmp_path: Path) -> None:
    ca = create_network_ca()
    server = network_for(tmp_path, ca, 1)
    liar = network_for(tmp_path, ca, 3)
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        address = await start_echo_server(nursery, server, 1, seen)
        auth = await liar.connect(address)
        channel = Channel(auth, hello(4))  # certificate says 3, HELLO says 4
        await channel.handshake()
        refusal = await channel.receive()
        assert isinstance(refusal, Error) and refusal.code == ErrorCode.FORBIDDEN
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await channel.receive()
        await channel.aclose()
        nursery.cancel_scope.cancel()


def test_join_code_round_trip_and_damage() -> None:
    ca = create_network_ca()
    invitation = Invitation(ca.network_id, ca.cert_pem, os.urandom(32), ("10.0.0.1:7420",))
    code = encode_join_code(invitation)
    assert decode_join_code(code) == invitation
    assert b"PRIVATE" not in base64.urlsafe_b64decode(code[8:] + "==")  # never the CA's key
    with pytest.raises(IdentityError, match="damaged"):
        decode_join_code(code[:-10])
    with pytest.raises(IdentityError, match="not a lanvault join code"):
        decode_join_code("hello")
    with pytest.raises(IdentityError, match="older lanvault"):
        decode_join_code("lvjoin1-AAAA")
