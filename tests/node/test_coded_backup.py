"""Backups kept with a K-of-N code (``--code``) on real nodes over the in-memory network, in
virtual time: N shares of every chunk on N computers, restored from any K, deleted with the
chunk; checked against the holders' stores (the ground truth)."""

from __future__ import annotations

import contextlib
import json
import random
from collections import defaultdict
from pathlib import Path

import trio
import trio.testing

from chunkstore.envelope import open_chunk, seal_chunk
from chunkstore.keys import KeyRing
from chunkstore.shares import Code, encode, items_of, parse, share_address
from lanvault.state_report import state_report, state_report_json
from node.fetch_coded import CodedFetch
from node.owner import Owner
from node.report import BackupPending
from node.verify import read_data

from .cluster import SIZES, Cluster, eventually, open_cluster, write_files

CODE = Code(2, 4)


def shares_held(cluster: Cluster, owner_id: int = 1) -> dict[bytes, set[int]]:
    """Ground truth: share address -> the live nodes whose store holds it."""
    held: dict[bytes, set[int]] = {}
    for node_id, member in cluster.members.items():
        if member.scope.cancel_called:
            continue
        for chunk in member.store.chunks(owner_id):
            assert chunk.share is not None, "a coded backup stores no copies"
            held.setdefault(chunk.address, set()).add(node_id)
    return held


async def test_a_coded_backup_keeps_n_shares_on_n_computers_and_restores_from_any_k(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        files = write_files(tmp_path / "src", random.Random(3))
        owner = cluster.members[1].owner
        report = await owner.backup_path(tmp_path / "src", degree=CODE.as_degree())
        assert report.files_done == len(SIZES)
        versions = [v for v, complete in owner.catalog.latest_versions("") if complete]
        chunks = {a for v in versions for a in v.chunks}
        assert all(v.code == CODE for v in versions) and len(versions) == len(SIZES) + 1
        held = shares_held(cluster)
        for address in chunks:
            homes = [held.get(share_address(address, i), set()) for i in range(CODE.n)]
            assert all(len(h) == 1 for h in homes), "each share on one node"
            assert len(set.union(*homes)) == CODE.n, "the N shares on N different computers"
        # Stored: N/K times the envelopes, like degree 2, headers aside.
        stored = sum(m.store.used_bytes for m in cluster.members.values())
        envelopes = 0
        for address in chunks:
            first = share_address(address, 0)
            [home] = held[first]
            envelopes += parse(cluster.members[home].store.get(1, first)).family.envelope_length
        assert 2 * envelopes < stored < 2 * envelopes + len(chunks) * CODE.n * 300

        # ``state`` says the code and, per chunk, its shares present (all N).
        state = await state_report(owner)
        listed = state["files"]
        assert isinstance(listed, list) and len(listed) == len(SIZES)  # files, not folders
        for entry in listed:
            assert entry["code"] == "2-of-4" and entry["desired_degree"] == 4
            assert all(c["degree"] == 4 for c in entry["chunks"]) and entry["complete"]
        assert json.loads(await state_report_json(owner)) == state

        # A second backup of unchanged files sends nothing.
        again = await owner.backup_path(tmp_path / "src", degree=CODE.as_degree())
        assert again.bytes_sent == 0

        # Any two holders lost: every file comes back identical from the other two.
        for lost in ((2, 3), (4, 5)):
            for n in lost:
                cluster.kill(n)
            out = tmp_path / f"out-{lost}"
            await owner.restorer.restore_path(tmp_path / "src", out)
            for path, data in files.items():
                assert (out / path.name).read_bytes() == data
            for n in lost:
                await cluster.start(n)
            await cluster.wait_connected()


async def test_deleting_a_coded_backup_deletes_every_share(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        write_files(tmp_path / "src", random.Random(4))
        owner = cluster.members[1].owner
        await owner.backup_path(tmp_path / "src", degree=CODE.as_degree())
        assert shares_held(cluster)
        result = await owner.delete_path(tmp_path / "src")
        assert result["pending_holders"] == 0
        assert all(m.store.chunks(1) == [] for m in cluster.members.values())


async def test_a_chunk_both_copied_and_coded_is_kept_both_ways(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        body = random.Random(5).randbytes(100_000)
        (tmp_path / "a" / "f").write_bytes(body)
        (tmp_path / "b" / "f").write_bytes(body)
        owner = cluster.members[1].owner
        await owner.backup_path(tmp_path / "a", degree=2)
        await owner.backup_path(tmp_path / "b", degree=CODE.as_degree())
        # Deleting the copies leaves the shares: the coded version still restores.
        await owner.delete_path(tmp_path / "a")
        for n in (2, 3):
            cluster.kill(n)
        await owner.restorer.restore_path(tmp_path / "b" / "f", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == body


async def test_check_read_data_checks_every_share_alone_and_drops_a_forged_one(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        (tmp_path / "src").mkdir()
        body = random.Random(6).randbytes(3 * 64_000)
        (tmp_path / "src" / "f").write_bytes(body)
        owner = cluster.members[1].owner
        await owner.backup_path(tmp_path / "src", degree=CODE.as_degree())
        clean = await read_data(owner)
        shares = len(shares_held(cluster))
        assert clean.bad_copies == [] and clean.copies_verified >= shares
        # A member swaps one share for one of its own making: consistent alone, filed at the
        # right address, but not sealed by the owner.
        forged_at, [holder] = next(iter(shares_held(cluster).items()))
        mine = parse(cluster.members[holder].store.get(1, forged_at))
        liar = KeyRing.from_master(bytes(32))
        forged = encode(
            random.Random(7).randbytes(mine.family.envelope_length),
            mine.family.chunk_address,
            CODE,
            liar.share_key,
        )[mine.number]
        store = cluster.members[holder].store
        store.delete_many(1, [forged_at])
        store.put(1, forged_at, forged)
        found = await read_data(owner, repair=True)
        assert len(found.bad_copies) == 1 and "seal" in found.bad_copies[0]
        assert found.copies_dropped == 1
        # The holders' repair makes the share again from the others: the owner's own bytes.
        await eventually(lambda: shares_held(cluster).get(forged_at), 60)
        [again] = shares_held(cluster)[forged_at]
        assert parse(cluster.members[again].store.get(1, forged_at)).family == mine.family
        await owner.restorer.restore_path(tmp_path / "src" / "f", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == body


def test_a_restore_asks_its_shares_of_the_fastest_holders() -> None:
    class Up:
        @staticmethod
        def is_up(_node: int) -> bool:
            return True

    class FakeNode:
        membership = Up()

    async def unused(*_args: object) -> dict[bytes, set[int]]:
        raise AssertionError("not called")

    chunks = [bytes([i]) * 32 for i in range(40)]
    holders = {share_address(c, i): {2 + i} for c in chunks for i in range(CODE.n)}
    fetch = CodedFetch(
        FakeNode(),  # type: ignore[arg-type]
        KeyRing.from_master(bytes(32)),
        CODE,
        unused,
        unused,  # type: ignore[arg-type]
        unused,  # type: ignore[arg-type]
        pace={2: 0.5, 3: 0.01, 4: 0.01, 5: 0.012},  # node 2 is fifty times slower
    )
    plan = fetch._spread(chunks, holders, defaultdict(dict), defaultdict(set))
    asked = {holder: len(shares) for holder, shares in plan.items()}
    assert sum(asked.values()) == CODE.k * len(chunks)  # K shares of each chunk, no more
    assert asked.get(2, 0) == 0  # the slow one is left out while the others can give them
    assert asked[3] > 0 and asked[4] > 0 and asked[5] > 0  # ... and the others share the load
    even = CodedFetch(FakeNode(), KeyRing.from_master(bytes(32)), CODE, unused, unused, unused)  # type: ignore[arg-type]
    spread = {
        h: len(s)
        for h, s in even._spread(chunks, holders, defaultdict(dict), defaultdict(set)).items()
    }
    # Not timed yet: data shares (on nodes 2 and 3; no decode needed) first, the parity
    # shares' holders taking what the data shares' would give later.
    assert sum(spread.values()) == 80 and spread[2] == spread[3] > spread[4] == spread[5] > 0


async def test_a_share_held_twice_is_trimmed_to_one_holder(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        (tmp_path / "src").mkdir()
        body = random.Random(8).randbytes(64_000)
        (tmp_path / "src" / "f").write_bytes(body)
        owner = cluster.members[1].owner
        await owner.backup_path(tmp_path / "src", degree=CODE.as_degree())
        held = shares_held(cluster)
        twice, [home] = next(iter(held.items()))
        spare = next(n for n in range(2, 7) if all(n not in h for h in held.values()))
        # Two repairers racing both made this share: it is on two nodes now.
        cluster.members[spare].store.put(1, twice, cluster.members[home].store.get(1, twice))
        assert len(shares_held(cluster)[twice]) == 2
        report = await owner.trim_surplus()
        assert report.surplus == 1 and report.dropped == 1
        assert {k: len(v) for k, v in shares_held(cluster).items()} == dict.fromkeys(held, 1)
        await owner.restorer.restore_path(tmp_path / "src" / "f", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == body


async def test_a_share_its_first_holder_did_not_take_goes_to_the_next_computer(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 6) as cluster:
        files = write_files(tmp_path / "src", random.Random(9))
        owner = cluster.members[1].owner
        cluster.kill(2)  # still counted up for a few seconds: placement picks it, it fails
        assert owner.node.membership.is_up(2)
        await owner.backup_path(tmp_path / "src", degree=CODE.as_degree())
        held = shares_held(cluster)
        versions = [v for v, complete in owner.catalog.latest_versions("") if complete]
        chunks = {a for v in versions for a in v.chunks}
        assert len(versions) == len(SIZES) + 1  # every version complete
        for address in chunks:  # four shares on the four computers that answered
            homes = [held[share_address(address, i)] for i in range(CODE.n)]
            assert set().union(*homes) == {3, 4, 5, 6} and all(len(h) == 1 for h in homes)
        await owner.restorer.restore_path(tmp_path / "src", tmp_path / "out")
        for path, data in files.items():
            assert (tmp_path / "out" / path.name).read_bytes() == data


async def _short_of_one_share(cluster: Cluster, tmp_path: Path) -> tuple[Owner, bytes]:
    """Node 1's 2-of-4 backup of one file while node 2, one of only four holders, is dead:
    three shares of its chunk out there, the version pending."""
    (tmp_path / "src").mkdir()
    body = random.Random(10).randbytes(50_000)
    (tmp_path / "src" / "f").write_bytes(body)
    owner = cluster.members[1].owner
    cluster.kill(2)
    with contextlib.suppress(BackupPending):
        await owner.backup_path(tmp_path / "src", degree=CODE.as_degree())
    assert owner.catalog.incomplete_versions()
    assert len(shares_held(cluster)) == 3 * 2  # the file's chunk and the folder's: 3 of 4 each
    return owner, body


async def _back(cluster: Cluster, owner: Owner) -> None:
    """Node 2 comes back: the owner's pending versions are completed (it kicks them)."""
    await cluster.start(2)
    await cluster.wait_connected()
    await eventually(lambda: not owner.catalog.incomplete_versions(), 60)


async def test_a_chunk_short_of_a_share_is_completed_from_the_same_envelope(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        owner, body = await _short_of_one_share(cluster, tmp_path)
        await _back(cluster, owner)
        assert all(len(h) == 1 for h in shares_held(cluster).values())
        assert len(shares_held(cluster)) == 4 * 2
        for n in (3, 4):  # any two lost: the completed family decodes
            cluster.kill(n)
        await owner.restorer.restore_path(tmp_path / "src" / "f", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == body


async def test_a_missing_share_is_made_from_the_family_out_there_not_another_sealing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with open_cluster(tmp_path / "c", 5) as cluster:
        owner, body = await _short_of_one_share(cluster, tmp_path)
        # The envelope kept aside is replaced by one sealed again with a random nonce (as a
        # copies version's would be): shares made from it would be of another family.
        unsent = owner.pending.unsent
        assert unsent is not None
        [file_version] = [v for v in owner.catalog.incomplete_versions() if v.size]
        [address] = file_version.chunks
        plain = open_chunk(owner.keys, address, unsent.get(1, address))
        unsent.delete_many(1, [address])
        unsent.put(1, address, seal_chunk(owner.keys, address, plain))
        out_there = {
            parse(m.store.get(1, a)).family
            for m in cluster.members.values()
            if not m.scope.cancel_called
            for a in items_of(address, CODE.as_degree())
            if m.store.has(1, a)
        }
        made = encode(unsent.get(1, address), address, CODE, owner.keys.share_key)
        assert len(out_there) == 1 and parse(made[0]).family not in out_there
        await _back(cluster, owner)
        families = {
            parse(cluster.members[next(iter(h))].store.get(1, s)).family
            for s, h in shares_held(cluster).items()
            if s in items_of(address, CODE.as_degree())
        }
        assert len(families) == 1  # one family: the one out there, completed from 3 of it
        for n in (3, 4):
            cluster.kill(n)
        await owner.restorer.restore_path(tmp_path / "src" / "f", tmp_path / "out")
        assert (tmp_path / "out").read_bytes() == body
