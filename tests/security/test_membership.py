"""Membership, attacked with real node processes and real sockets (docs/security.md): the join
code carries no key and lets one computer in once; a member cannot make certificates or store
chunks for an owner that is not enrolled; a removed node is refused by every node."""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.keys import KeyRing, new_master_key
from lanvault.state import StateDir
from node.identity import private_pem, tls_contexts
from node.messages import (
    SUPPORTED_VERSIONS,
    Error,
    ErrorCode,
    Hello,
    PutChunks,
    PutMeta,
    StoredMany,
)
from node.transport import Channel, PeerUnavailable, PinStore, TLSNetwork
from tests.system.procs import ProcessCluster, lanvault

pytestmark = pytest.mark.slow
REFUSED = (PeerUnavailable, trio.BrokenResourceError, trio.EndOfChannel)


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path / "net", 3, gone_after="6s")
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()


def member_network(
    state: Path, node_id: int, tmp: Path, cert_pem: bytes | None = None
) -> TLSNetwork:
    """A member's own TLS credentials (from its state directory), or a forged certificate."""
    creds = StateDir(state).credentials()
    cert_file, key_file = str(state / "tls" / "node.pem"), str(state / "tls" / "node.key")
    if cert_pem is not None:
        cert_file = str(tmp / "forged.pem")
        Path(cert_file).write_bytes(cert_pem)
    server, client = tls_contexts(creds, cert_file, key_file)
    return TLSNetwork(server, client, PinStore(None), node_id)


async def put_for(network: TLSNetwork, address: str, sender: int, owner: int) -> object:
    """One PUTCHUNKS of a fresh chunk for ``owner``: the holder's answer."""
    keys = KeyRing.from_master(new_master_key())
    plain = os.urandom(1000)
    address_of = chunk_address(keys, plain)
    auth = await network.connect(address)
    channel = Channel(auth, Hello(SUPPORTED_VERSIONS, sender, "mallory", ""))
    try:
        with trio.fail_after(10):
            await channel.handshake()
            await channel.send(
                PutChunks(1, owner, 9, ((address_of, seal_chunk(keys, address_of, plain)),))
            )
            return await channel.receive()
    finally:
        await channel.aclose()


async def wait_refused(network: TLSNetwork, address: str) -> None:
    """Until the node at ``address`` refuses node 3's connection (it heard of the removal)."""
    with trio.fail_after(30):
        while True:
            try:
                await put_for(network, address, 3, 3)
            except REFUSED:
                return
            await trio.sleep(0.3)


def test_a_join_code_carries_no_key_and_lets_one_computer_in_once(
    cluster3: ProcessCluster, tmp_path: Path
) -> None:
    code = cluster3.json(1, "invite")["join_code"]
    assert b"PRIVATE KEY" not in base64.urlsafe_b64decode(code[8:] + "==")
    first = lanvault("init", "--dir", tmp_path / "a", "--id", "7", "--join", code, "--json")
    assert first.returncode == 0
    again = lanvault("init", "--dir", tmp_path / "b", "--id", "8", "--join", code, check=False)
    assert again.returncode == 1 and "unknown, used or expired invitation" in again.stderr
    assert not (tmp_path / "b").exists()  # nothing written
    # A member (not an administrator) has no network key: it can neither invite nor enrol.
    member = cluster3.nodes[2].state
    assert not (member / "tls" / "ca.key").exists()
    refused = cluster3.cli(2, "invite", check=False)
    assert refused.returncode == 1 and "keeps no network key" in refused.stderr
    # A taken id cannot be enrolled twice, even with a fresh invitation.
    code = cluster3.json(1, "invite")["join_code"]
    taken = lanvault("init", "--dir", tmp_path / "c", "--id", "2", "--join", code, check=False)
    assert taken.returncode == 1 and "already taken" in taken.stderr


async def test_a_member_cannot_mint_itself_a_certificate_or_store_for_an_invented_owner(
    cluster3: ProcessCluster, tmp_path: Path
) -> None:
    state = cluster3.nodes[2].state
    target = cluster3.nodes[1].address
    network = member_network(state, 2, tmp_path)
    # Chunks for a member: stored. For an owner id no node was enrolled with: refused.
    answer = await put_for(network, target, 2, 3)
    assert isinstance(answer, StoredMany) and answer.results == (0,)
    answer = await put_for(network, target, 2, 777)
    assert isinstance(answer, Error) and answer.code == ErrorCode.FORBIDDEN
    # With the member's own key (all it has), a certificate for a new id is not the CA's.
    key = serialization.load_pem_private_key((state / "tls" / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((state / "tls" / "ca.pem").read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lanvault-node-99")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert private_pem(key)  # the member's key is all it holds
    impostor = member_network(state, 99, tmp_path, forged.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(REFUSED):  # TLS 1.3: the server's refusal may come after our side ends
        await put_for(impostor, target, 99, 99)


async def test_a_removed_node_is_refused_by_every_node(
    cluster3: ProcessCluster, tmp_path: Path
) -> None:
    removed = cluster3.cli(1, "remove-node", "3")
    assert "removed" in removed.stdout
    # Node 2 hears of it from node 1 (a newer roster in its STATUS) and refuses node 3.
    network = member_network(cluster3.nodes[3].state, 3, tmp_path)
    for node_id in (1, 2):
        await wait_refused(network, cluster3.nodes[node_id].address)
    # Chunks of node 3 as an owner are refused too (a member storing them for it).
    answer = await put_for(
        member_network(cluster3.nodes[2].state, 2, tmp_path), cluster3.nodes[1].address, 2, 3
    )
    assert isinstance(answer, Error) and answer.code == ErrorCode.FORBIDDEN
    status = cluster3.json(2, "status")
    assert not any(n["id"] == 3 and n["up"] for n in status["nodes"])
    again = cluster3.cli(1, "remove-node", "3", check=False)
    assert again.returncode == 1 and "not a member" in again.stderr
    cluster3.assert_no_tracebacks()


async def test_a_member_cannot_park_records_beyond_a_real_nodes_quota(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path / "net", 2)
    try:
        cluster.start(1, "--quota", "2MB")
        cluster.start(2)
        network = member_network(cluster.nodes[2].state, 2, tmp_path)
        auth = await network.connect(cluster.nodes[1].address)
        channel = Channel(auth, Hello(SUPPORTED_VERSIONS, 2, "mallory", ""))
        codes = []
        try:
            with trio.fail_after(60):
                await channel.handshake()
                for n in range(10):  # 4.5 MB of records in distinct names
                    await channel.send(PutMeta(n + 1, 2, f"junk-{n}", 1, b"m" * 450_000))
                    answer = await channel.receive()
                    codes.append(answer.code if isinstance(answer, Error) else 0)
        finally:
            await channel.aclose()
        assert codes.count(0) <= 4 and set(codes) == {0, ErrorCode.QUOTA_EXCEEDED}
        status = cluster.json(1, "status")
        me = next(n for n in status["nodes"] if n.get("self"))
        assert me["used_bytes"] <= 2_000_000
        assert 0 < status["held_by_owner"]["2"] <= 2_000_000  # counted against its owner
    finally:
        cluster.stop_all()


def test_a_new_member_meets_the_others_while_the_administrator_is_away(
    cluster3: ProcessCluster, tmp_path: Path
) -> None:
    # Enrolled while node 1 runs; then node 1 goes away before nodes 2 and 3 hear of it. They
    # still link with the newcomer (its certificate is the administrator's), take the newer
    # roster from it, and keep its backup.
    code = cluster3.json(1, "invite")["join_code"]
    later = cluster3.json(1, "invite")["join_code"]
    bad = cluster3.cli(1, "invite", "--expires", "0", check=False)
    assert bad.returncode == 2 and "positive" in bad.stderr
    cluster3.stop(1)
    newcomer = cluster3.add(7, "computer-7")
    away = lanvault("init", "--dir", newcomer.state, "--id", "7", "--join", later, check=False)
    assert away.returncode == 1 and "could not join" in away.stderr  # said, nothing written
    assert not newcomer.state.exists()
    cluster3.start(1)
    lanvault(
        "init", "--dir", newcomer.state, "--id", "7", "--join", code,
        "--listen", newcomer.address, "--peer", cluster3.nodes[2].address,
    )  # fmt: skip
    cluster3.stop(1)
    cluster3.start(7)
    cluster3.wait(
        lambda: any(n["id"] == 7 and n["up"] for n in cluster3.json(2, "status")["nodes"]),
        30,
        "node 2 links with node 7",
    )
    cluster3.wait(lambda: cluster3.json(3, "status")["roster_version"] == 4, 30, "roster to 3")
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(os.urandom(200_000))
    cluster3.cli(7, "backup", data, "--degree", "2")
    out = tmp_path / "out"
    cluster3.cli(7, "restore", data, "--to", out)
    assert (out / "f").read_bytes() == (data / "f").read_bytes()
    held = {n: cluster3.json(n, "status")["held_by_owner"].get("7", 0) for n in (2, 3)}
    assert all(v > 200_000 for v in held.values()), held  # on the holders, for real
    cluster3.assert_no_tracebacks()
