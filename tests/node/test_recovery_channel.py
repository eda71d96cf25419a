"""The anonymous recovery channel on a real node over TLS: a computer without a certificate
gets a recovery kit through the passphrase exchange, and nothing else."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from chunkstore.keys import (
    KdfParams,
    KeyRing,
    derive_wrapping_key,
    kdf_limits,
    kdf_params,
    new_master_key,
    wrap_master_key,
)
from chunkstore.kitexchange import KitRequestor
from chunkstore.recovery import kit_verifier, make_kit
from chunkstore.store import ChunkStore
from node.identity import create_network_ca
from node.messages import PROTOCOL_VERSION, Error, ErrorCode, Hello, KitChallenge, PutChunk
from node.node import Node, NodeConfig
from node.safekeeping import KIT_NAME, fetch_kit
from node.transport import Channel, RemoteError, connect_anonymous
from tests.node.test_transport import network_for


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[tuple[str, ChunkStore]]:
    store = ChunkStore.open(tmp_path / "store", capacity=10**9)
    network = network_for(tmp_path, create_network_ca(), 1)
    node = Node(NodeConfig(node_id=1, host_id="a", listen="127.0.0.1:0"), store, network)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(node.run)
        yield str(address), store
        nursery.cancel_scope.cancel()
    store.close()


def prover(
    passphrase: str, owner: int, seen: list[KitChallenge] | None = None
) -> Callable[[KitChallenge], Awaitable[KitRequestor]]:
    async def exchange(challenge: KitChallenge) -> KitRequestor:
        if seen is not None:
            seen.append(challenge)
        params = KdfParams(challenge.opslimit, challenge.memlimit, challenge.salt)
        key = await trio.to_thread.run_sync(derive_wrapping_key, passphrase, params)
        return KitRequestor(kit_verifier(key), owner, params, challenge.pake)

    return exchange


async def test_anonymous_clients_may_only_ask_for_a_kit(serving: tuple[str, ChunkStore]) -> None:
    address, store = serving
    auth, _der = await connect_anonymous(address)
    channel = Channel(auth, Hello((PROTOCOL_VERSION,), 7, "stranger", ""))
    try:
        hello = await channel.handshake()
        # A stranger learns nothing of the node from its HELLO (id, computer, address).
        assert (hello.node_id, hello.host_id, hello.listen) == (0, "", "")
        envelope = bytes(100)
        await channel.send(PutChunk(1, 7, bytes(32), 1, envelope))
        answer = await channel.receive()
        assert isinstance(answer, Error) and answer.code == ErrorCode.BAD_MESSAGE
        with pytest.raises((trio.EndOfChannel, trio.BrokenResourceError)):
            await channel.receive()
    finally:
        await channel.aclose()
    assert store.chunk_count() == 0
    # No kit stored for that owner: a decoy challenge, the same at every request as a real
    # kit's would be, then FORBIDDEN as for a wrong passphrase: a stranger cannot tell which
    # owners keep a kit here.
    seen: list[KitChallenge] = []
    for _ in range(2):
        with pytest.raises(RemoteError) as info:
            await fetch_kit(address, 7, prover("x", 7, seen))
        assert info.value.code == ErrorCode.FORBIDDEN
    assert seen[0].salt == seen[1].salt and seen[0].pake != seen[1].pake
    assert (seen[0].opslimit, seen[0].memlimit) == kdf_limits()


async def test_kit_for_the_passphrase_only_and_slowly(serving: tuple[str, ChunkStore]) -> None:
    address, store = serving
    master = new_master_key()
    wrapped = wrap_master_key(master, "the passphrase")
    verifier = kit_verifier(derive_wrapping_key("the passphrase", kdf_params(wrapped)))
    blob = make_kit(KeyRing.from_master(master), wrapped, verifier, b"credentials")
    store.put_blob(9, KIT_NAME, 1, blob)

    got, der = await fetch_kit(address, 9, prover("the passphrase", 9))
    assert got == blob and der
    started = time.monotonic()
    for _ in range(2):
        with pytest.raises(RemoteError) as info:
            await fetch_kit(address, 9, prover("a guess", 9))
        assert info.value.code == ErrorCode.FORBIDDEN
    # Guessing is slow: after the right proof one per second, then the delay doubles.
    assert time.monotonic() - started >= 1.5
    # A proof for another owner's challenge, or a nonce never issued, is refused.
    with pytest.raises(RemoteError):
        await fetch_kit(address, 9, prover("the passphrase", 10))
