"""LAN discovery: nodes of one network announce themselves by UDP multicast.

An announcement says only "node N of network X listens at HOST:PORT"; it grants nothing. The
address is dialed and must still pass mutual TLS with the network's CA, so a forged announcement
costs one refused connection. Datagrams are parsed strictly and anything odd is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Callable

import msgpack
import trio

log = logging.getLogger(__name__)
MAGIC = b"LVDISC1"
GROUP = "239.255.74.20"
PORT = 7421
MAX_DATAGRAM = 512


def encode_announcement(network_id: str, node_id: int, address: str, host_id: str) -> bytes:
    payload: bytes = msgpack.packb([network_id, node_id, address, host_id], use_bin_type=True)
    return MAGIC + payload


def decode_announcement(data: bytes) -> tuple[str, int, str, str] | None:
    if len(data) > MAX_DATAGRAM or not data.startswith(MAGIC):
        return None
    try:
        fields = msgpack.unpackb(data[len(MAGIC) :], raw=False, max_array_len=8, max_str_len=300)
    except Exception:  # any malformed datagram is simply not an announcement
        return None
    if (
        not isinstance(fields, list)
        or len(fields) != 4
        or not all(isinstance(f, str) for f in (fields[0], fields[2], fields[3]))
        or type(fields[1]) is not int
        or not 0 <= fields[1] < 2**32
    ):
        return None
    return fields[0], fields[1], fields[2], fields[3]


def with_source_host(address: str, source: str) -> str:
    """An announced 0.0.0.0 (listen on all) becomes the address the datagram came from."""
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        return f"{source}:{port}"
    return address


async def _multicast_receiver(group: str, port: int) -> trio.socket.SocketType:
    """A UDP socket bound to ``port`` that has joined ``group`` (closed again on failure)."""
    receiver = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(AttributeError, OSError):
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await receiver.bind(("", port))
        membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0"))
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except BaseException:
        receiver.close()
        raise
    return receiver


async def run_discovery(
    network_id: str,
    node_id: int,
    address: Callable[[], str],
    host_id: str,
    on_peer: Callable[[int, str, str], None],
    interval: float = 5.0,
    group: str = GROUP,
    port: int = PORT,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce this node every ``interval`` seconds and report peers of the same network."""
    try:
        receiver = await _multicast_receiver(group, port)
    except OSError as exc:
        log.warning("LAN discovery is off (%s); peers must be given with --peer", exc)
        task_status.started()
        return
    sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)  # this LAN only
    sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)  # several nodes per computer

    async def announce() -> None:
        while True:
            datagram = encode_announcement(network_id, node_id, address(), host_id)
            try:
                await sender.sendto(datagram, (group, port))
            except OSError as exc:
                log.debug("announcement not sent: %s", exc)
            await trio.sleep(interval)

    with receiver, sender:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(announce)
            task_status.started()
            while True:
                data, source = await receiver.recvfrom(MAX_DATAGRAM + 1)
                parsed = decode_announcement(data)
                if parsed is None:
                    continue
                their_network, their_id, their_address, their_host = parsed
                if their_network != network_id or their_id == node_id:
                    continue
                on_peer(their_id, with_source_host(their_address, source[0]), their_host)


async def listen_for_nodes(
    seconds: float, group: str = GROUP, port: int = PORT
) -> list[tuple[str, int, str]]:
    """(network id, node id, address) of every node heard announcing itself within ``seconds``
    (any network: a computer recovering from nothing does not know its network yet)."""
    try:
        receiver = await _multicast_receiver(group, port)
    except OSError as exc:
        log.warning("cannot listen for LAN announcements: %s", exc)
        return []
    heard: dict[tuple[str, int], str] = {}
    with receiver:
        with trio.move_on_after(seconds):
            while True:
                data, source = await receiver.recvfrom(MAX_DATAGRAM + 1)
                parsed = decode_announcement(data)
                if parsed is not None:
                    network, node_id, address, _host = parsed
                    heard[(network, node_id)] = with_source_host(address, source[0])
    return [(network, node_id, address) for (network, node_id), address in sorted(heard.items())]
