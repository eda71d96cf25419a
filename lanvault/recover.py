"""``lanvault recover``: rebuild a lost node from its passphrase and one peer (or the LAN).

1. The recovery kit: over an anonymous TLS connection, the peer and we run the passphrase
   exchange (Argon2id, then SPAKE2 keyed by the kit's verifier: ``chunkstore.kitexchange``)
   and the peer hands over the kit, sealed under the exchange's key. The kit's wrapped
   master key opens with the same passphrase, and its sealed part gives the node's join code,
   certificate, key and config. The peer's certificate is then checked against the network's
   CA from the kit: an impostor in the middle gets nothing usable and is detected here.
2. The state directory is written (keys, TLS, config), marked ``.recovering``.
3. The node starts in the network with its own identity, asks every reachable peer for its
   catalog manifest, takes the highest sequence that verifies, fetches the catalog's chunks,
   checks the SQLite file and puts it in place. Then the mark goes.

Interrupted, it resumes: with the mark present the kit step is skipped, and the catalog is
fetched again (it is small). A wrong passphrase writes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from chunkstore.catalogcopy import catalog_files
from chunkstore.catalogdb import CatalogDB
from chunkstore.errors import ChunkstoreError, WrongPassphraseError
from chunkstore.keys import KdfParams, KeyRing, derive_wrapping_key, unwrap_with_key
from chunkstore.kitexchange import KitRequestor, check_offered_kdf
from chunkstore.recovery import (
    CatalogManifest,
    kit_verifier,
    open_kit,
    open_manifest,
    parse_kit,
)
from node.discovery import listen_for_nodes
from node.identity import issued_by, node_id_from_certificate
from node.messages import ErrorCode, KitChallenge
from node.offload import in_thread
from node.report import RestoreError
from node.safekeeping import fetch_kit, newest_manifests
from node.transport import PeerUnavailable, RemoteError

from .state import CommandError, Config, Identity, StateDir, install_state

log = logging.getLogger("lanvault.recover")
MARKER = ".recovering"
FETCH_BATCH = 64
FIRST_PEER_WAIT = 30.0  # seconds for a first peer to answer
PEER_WAIT = 30.0  # then, seconds for every other known peer

Progress = Callable[[str], None]
ProgressEvents = Callable[[dict[str, Any]], None]  # bytes and files done, as restores report


async def obtain_identity(
    addresses: list[str], node_id: int, passphrase: str, say: Progress
) -> Identity:
    """The recovery kit of ``node_id`` from the first peer that has it, opened.

    The passphrase never leaves this computer in any form a peer could test offline: the
    exchange is SPAKE2 keyed by the kit's verifier (``chunkstore.kitexchange``), and KDF
    limits below lanvault's own minimum are refused before anything is derived or sent.
    """
    verifiers: dict[KdfParams, tuple[bytes, bytes]] = {}  # params -> (wrapping key, verifier)

    async def exchange(challenge: KitChallenge) -> KitRequestor:
        params = KdfParams(challenge.opslimit, challenge.memlimit, challenge.salt)
        check_offered_kdf(params)
        if params not in verifiers:
            say("deriving the key from the passphrase (Argon2id) …")
            try:
                key = await in_thread(derive_wrapping_key, passphrase, params)
            except ChunkstoreError as exc:
                raise CommandError(f"the peer sent unusable key parameters: {exc}") from None
            verifiers[params] = (key, kit_verifier(key))
        verifier = verifiers[params][1]
        return await in_thread(KitRequestor, verifier, node_id, params, challenge.pake)

    problems: list[str] = []
    refused = False
    for address in addresses:
        say(f"asking {address} for the recovery kit of node {node_id} …")
        try:
            blob, server_der = await fetch_kit(address, node_id, exchange)
        except WrongPassphraseError as exc:  # limits below our minimum: a rogue or broken peer
            problems.append(f"{address}: {exc}")
            continue
        except RemoteError as exc:
            if exc.code == ErrorCode.FORBIDDEN:
                refused = True
            problems.append(f"{address}: {exc.error.message}")
            continue
        except PeerUnavailable as exc:
            problems.append(str(exc))
            continue
        try:
            kit = parse_kit(blob)
            key, verifier = verifiers[kit.kdf]
            if kit.verifier != verifier:
                raise ChunkstoreError("its verifier is not the passphrase's")
            master = unwrap_with_key(kit.wrapped_key, key)
            keys = KeyRing.from_master(master)
            identity = Identity.from_kit(master, kit.wrapped_key, kit.verifier, open_kit(keys, kit))
        except (ChunkstoreError, KeyError) as exc:
            problems.append(f"{address}: its recovery kit cannot be opened ({exc})")
            continue
        if not issued_by(server_der, identity.ca_cert):
            raise CommandError(
                f"{address} is not a member of this node's network (its certificate is not"
                " from the network's authority); nothing was written"
            )
        if node_id_from_certificate(_der_of(identity.node_cert)) != node_id:
            raise CommandError("the recovery kit belongs to another node; nothing was written")
        return identity
    if refused:
        raise CommandError(
            f"wrong passphrase (the peers refused it, or keep no kit for node {node_id});"
            " nothing was written"
        )
    detail = "; ".join(problems) if problems else "no peer answered"
    raise CommandError(f"no recovery kit for node {node_id} found ({detail})")


def _der_of(pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


async def find_peers(seconds: float, say: Progress) -> list[str]:
    say(f"listening {seconds:.0f} s for lanvault nodes on the LAN …")
    heard = await listen_for_nodes(seconds)
    return [address for _network, _node, address in heard]


async def restore_catalog(
    state: StateDir, config: Config, say: Progress, progress: ProgressEvents | None = None
) -> dict[str, Any]:
    """Start the node, fetch the newest valid catalog from the peers, put it in place."""
    from .daemon import Daemon  # the composition module; imported late (it pulls in a lot)

    temporary = state.root / "catalog.recovering.sqlite3"
    for leftover in catalog_files(temporary):
        leftover.unlink(missing_ok=True)
    daemon = Daemon(state, config, catalog_path=temporary)
    download = temporary.with_suffix(".download")
    result: dict[str, Any] = {}
    failure: list[BaseException] = []
    manifest: CatalogManifest | None = None

    async def fetch() -> None:
        nonlocal manifest
        say("waiting for the peers …")
        membership = daemon.node.membership
        for _ in range(int(FIRST_PEER_WAIT / 0.2)):  # polled: no event tells a peer came up
            if membership.up_ids():
                break
            await trio.sleep(0.2)
        if not membership.up_ids():
            raise CommandError("no peer could be reached to fetch the catalog from")
        unreachable = await _reach_known_peers(daemon, say)
        result["peers_unreachable"] = unreachable
        up = membership.up_ids()
        offers = await newest_manifests(daemon.owner)
        result["peers_asked"] = len(up)
        result["offers"] = {str(peer): seq for seq, peer, _blob in offers}
        for seq, peer, blob in offers:  # highest sequence first; a forged one fails its MAC
            try:
                manifest = open_manifest(daemon.keys, blob, config.node_id, seq)
                result["catalog_from_node"] = peer
                break
            except ChunkstoreError as exc:
                log.warning("node %d offered a catalog manifest that fails: %s", peer, exc)
        if manifest is None:
            say("no catalog copy on the peers: this node had backed nothing up")
            result["catalog_seq"] = 0
            return
        say(f"fetching catalog copy {manifest.seq} ({manifest.size / 1e6:.1f} MB) …")
        result["catalog_seq"] = manifest.seq
        try:
            await _fetch_catalog(daemon, manifest, download, progress)
        except RestoreError as exc:
            where = f"catalog copy {manifest.seq} from node {result['catalog_from_node']}"
            if unreachable:
                where += f"; not reachable: node {', '.join(map(str, unreachable))}"
            raise CommandError(
                f"a chunk of the catalog cannot be fetched ({where}): {exc}"
            ) from None

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.node.run)  # the holder and the links, no owner duties
            try:
                await fetch()
            except Exception as exc:  # re-raised below, outside the nursery (no group)
                failure.append(exc)
            nursery.cancel_scope.cancel()
    finally:
        daemon.close()
    if failure:
        raise failure[0]
    if manifest is not None:
        _install_catalog(download, state.catalog_path, manifest)
    result.update(_counts(state.catalog_path))
    for leftover in [*catalog_files(temporary), download]:
        leftover.unlink(missing_ok=True)
    return result


async def _reach_known_peers(daemon: Any, say: Progress) -> list[int]:
    """Wait until every peer known (from the config and the members' gossip) is up, or
    PEER_WAIT seconds; returns those still unreachable.

    Every one counts: the highest catalog copy wins, and a peer that was down when the newer
    copies were made offers a stale one whose chunks may since have been deleted. A node
    recovering has never seen its peers, so "gone" (silent for the grace period since our
    own start) means nothing here: a peer slow to answer is waited for, not written off.
    """
    membership = daemon.node.membership
    own = membership.own_id
    previous: set[int] = set()
    steady = 0  # rounds in which nothing new was learned and everyone known was up
    known: set[int] = set()
    with trio.move_on_after(PEER_WAIT):
        while steady < 2:
            await daemon.node.pool.gossip()
            known = {p.node_id for p in membership.peers()} - {own}
            steady = steady + 1 if known == previous and known <= set(membership.up_ids()) else 0
            previous = known
            if steady < 2:
                await trio.sleep(0.5)
    missing = sorted(known - set(membership.up_ids()))
    if missing:
        names = ", ".join(map(str, missing))
        say(
            f"warning: node {names} did not answer in {PEER_WAIT:.0f} s; a newer catalog copy may be on them"
        )
    return missing


async def _fetch_catalog(
    daemon: Any, manifest: CatalogManifest, path: Path, progress: ProgressEvents | None
) -> None:
    owner = daemon.owner
    started = time.monotonic()
    done = 0
    chunks = list(manifest.chunks)
    found = await daemon.node.replication.query_holders(owner.owner_id, list(dict.fromkeys(chunks)))
    await in_thread(owner.catalog.add_copy_holders, [(a, h) for a, hs in found.items() for h in hs])
    fd = await in_thread(
        functools.partial(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    )
    try:
        for start in range(0, len(chunks), FETCH_BATCH):
            batch = chunks[start : start + FETCH_BATCH]
            plains = await owner.fetcher.fetch_many(batch)
            await in_thread(_write_all, fd, b"".join(plains))
            done += sum(len(p) for p in plains)
            if progress is not None:
                progress(
                    {
                        "bytes_done": done,
                        "bytes_total": manifest.size,
                        "files_done": 0,
                        "files_total": 1,
                        "elapsed": time.monotonic() - started,
                    }
                )
        await in_thread(os.fsync, fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _install_catalog(download: Path, target: Path, manifest: CatalogManifest) -> None:
    if download.stat().st_size != manifest.size:
        raise CommandError("the fetched catalog has the wrong size")
    check = sqlite3.connect(str(download))
    try:
        verdict = check.execute("PRAGMA integrity_check").fetchone()
    finally:
        check.close()
    if not verdict or verdict[0] != "ok":
        raise CommandError(f"the fetched catalog is damaged ({verdict})")
    # Never let an old journal of a previous catalog, or the record of its copy on the peers,
    # meet the new file.
    for leftover in catalog_files(target):
        leftover.unlink(missing_ok=True)
    os.replace(download, target)
    catalog = CatalogDB(target)
    try:
        catalog.set_setting("catalog_seq", manifest.seq)
        catalog.set_catalog_chunks(manifest.chunks)
    finally:
        catalog.close()
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _counts(path: Path) -> dict[str, int]:
    catalog = CatalogDB(path)
    try:
        counts = catalog.counts()
        latest = catalog.latest_versions("")
        counts["files"] = sum(1 for v, _ in latest if not stat.S_ISDIR(v.mode))  # not folders
        return counts
    finally:
        catalog.close()


async def recover(
    root: Path,
    node_id: int,
    passphrase: Callable[[], str],
    peers: list[str],
    discovery_seconds: float,
    say: Progress,
    progress: ProgressEvents | None = None,
) -> dict[str, Any]:
    state = StateDir(root)
    marker = root / MARKER
    started = time.monotonic()
    resumed = state.exists() and marker.exists()
    if state.exists() and not resumed:
        raise CommandError(f"{root} already holds node state; recover into a new folder")
    addresses = list(dict.fromkeys(peers))
    if not resumed:
        if not addresses:
            addresses = await find_peers(discovery_seconds, say)
            if not addresses:
                raise CommandError(
                    "no lanvault node heard on the LAN: give one with --peer HOST:PORT"
                )
        identity = await obtain_identity(addresses, node_id, passphrase(), say)
        install_state(root, identity, marker=MARKER)
        say(f"node {node_id}'s keys and credentials are back in {root}")
    config = state.load_config()
    if config.node_id != node_id:
        raise CommandError(f"{root} holds node {config.node_id}, not node {node_id}")
    config.peers = list(dict.fromkeys(config.peers + addresses))
    state.save_config(config)
    result = await restore_catalog(state, config, say, progress)
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    result.update(
        {
            "node_id": node_id,
            "state": str(root),
            "resumed": resumed,
            "seconds": time.monotonic() - started,
        }
    )
    return result
