"""Everything a node stores for others counts against its quota: a member cannot park records
(PUTMETA blobs) beyond it (docs/security.md, 'quotas and amplification')."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio.testing

from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.errors import QuotaExceededError
from chunkstore.keys import KeyRing, new_master_key
from chunkstore.store import ChunkStore
from node.messages import MAX_BLOB, ErrorCode, Ok, PutMeta
from node.transport import RemoteError
from tests.node.cluster import open_cluster


def test_records_count_against_the_quota(tmp_path: Path) -> None:
    store = ChunkStore.open(tmp_path / "store", capacity=10_000)
    assert store.put_blob(1, "a", 1, b"x" * 6_000)
    assert store.used_bytes == store.record_bytes == 6_000
    with pytest.raises(QuotaExceededError, match="quota exceeded"):
        store.put_blob(1, "b", 1, b"y" * 5_000)
    assert store.get_blob(1, "b") is None
    assert store.put_blob(1, "a", 2, b"x" * 9_000)  # a newer record replaces the old one
    assert store.used_bytes == 9_000
    assert store.put_blob(1, "a", 3, b"x" * 10)  # and a smaller one frees what it does not use
    assert store.put_blob(2, "b", 1, b"y" * 9_000)
    assert store.used_bytes == 9_010
    keys = KeyRing.from_master(new_master_key())
    address = chunk_address(keys, b"p" * 100)
    envelope = seal_chunk(keys, address, b"p" * 100)
    store.set_capacity(20_000)
    store.put(3, address, envelope)  # a chunk of a third owner
    usage = store.usage_by_owner()  # what each owner costs here
    assert usage == {1: 10, 2: 9_000, 3: len(envelope)}
    assert sum(usage.values()) == store.used_bytes
    store.close()
    reopened = ChunkStore.open(tmp_path / "store")
    assert reopened.used_bytes == 9_010 + len(envelope)  # what is counted is on the disk
    reopened.close()


async def test_a_member_cannot_store_records_beyond_the_quota(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    quota = 2 * 1024 * 1024
    async with open_cluster(tmp_path / "c", 2, capacity=quota) as cluster:
        mallory, victim = cluster.members[1].node, cluster.members[2]
        blob = b"m" * (MAX_BLOB // 2)
        stored, refused = 0, []
        for n in range(2 * quota // len(blob) + 2):  # twice the quota in distinct names
            try:
                answer = await mallory.pool.request(
                    2,
                    functools.partial(PutMeta, owner=1, name=f"junk-{n}", seq=1, blob=blob),
                    10,
                )
            except RemoteError as exc:
                refused.append(exc.code)
                continue
            assert isinstance(answer, Ok)
            stored += 1
        assert refused and set(refused) == {ErrorCode.QUOTA_EXCEEDED}
        assert stored * len(blob) <= quota
        assert victim.store.used_bytes <= quota
