"""The cloud tier's chunk store: an in-memory bucket for the rules, a real S3 server for the
adapter."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from chunkstore.cloud import BucketAddress, BucketError, CloudChunkStore, S3Bucket
from chunkstore.envelope import chunk_address, open_chunk, seal_chunk
from chunkstore.errors import (
    ChunkNotFoundError,
    ChunkstoreError,
    CorruptChunkError,
    QuotaExceededError,
)
from chunkstore.keys import KeyRing
from chunkstore.pipeline import prepare_chunk
from chunkstore.shares import Code, ShareRef, encode, share_address
from chunkstore.store import ChunkStore, PutItem
from tests.conftest import make_bucket


class MemoryBucket:
    """A bucket in a dict, with switches to make requests fail."""

    def __init__(self, description: str = "memory s3://test/") -> None:
        self._description = description
        self.objects: dict[str, bytes] = {}
        self.fail_puts = False
        self.fail_deletes = False
        self.puts = 0
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return self._description

    def put(self, key: str, data: bytes) -> None:
        if self.fail_puts:
            raise BucketError("bucket s3://test/: put failed: connection refused")
        with self._lock:
            self.objects[key] = bytes(data)
            self.puts += 1

    def get(self, key: str) -> bytes:
        with self._lock:
            return self.objects[key]

    def delete(self, keys: Sequence[str]) -> None:
        if self.fail_deletes:
            raise BucketError("bucket s3://test/: delete failed: connection refused")
        with self._lock:
            for key in keys:
                self.objects.pop(key, None)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        with self._lock:
            found = [(k, len(v)) for k, v in self.objects.items() if k.startswith(prefix)]
        yield from sorted(found)


def sealed(keys: KeyRing, text: bytes) -> tuple[bytes, bytes]:
    address = chunk_address(keys, text)
    return address, seal_chunk(keys, address, text)


@pytest.fixture
def bucket() -> MemoryBucket:
    return MemoryBucket()


@pytest.fixture
def store(tmp_path: Path, bucket: MemoryBucket) -> Iterator[CloudChunkStore]:
    with CloudChunkStore.open_cloud(tmp_path / "store", bucket, capacity=10**7) as opened:
        yield opened


def test_put_get_round_trip_one_object_per_envelope(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    chunks = [sealed(keys, f"chunk {i}".encode() * 100) for i in range(20)]
    assert store.put_many([PutItem(7, a, e, 2) for a, e in chunks]) == [True] * 20
    assert len(bucket.objects) == 20
    assert store.put_many([PutItem(7, a, e, 2) for a, e in chunks[:3]]) == [False] * 3
    assert bucket.puts == 20  # a duplicate is not sent again
    for address, envelope in chunks:
        assert store.get(7, address) == envelope
        assert open_chunk(keys, address, store.get(7, address)).startswith(b"chunk")
    assert store.used_bytes == sum(len(e) for _a, e in chunks)
    assert store.which_held(7, [a for a, _e in chunks]) == {a for a, _e in chunks}
    with pytest.raises(ChunkNotFoundError):
        store.get(8, chunks[0][0])  # another owner's view is empty


def test_nothing_is_indexed_when_a_put_fails(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    address, envelope = sealed(keys, b"x" * 5000)
    bucket.fail_puts = True
    with pytest.raises(BucketError):
        store.put_many([PutItem(1, address, envelope)])
    assert not store.has(1, address)
    assert store.used_bytes == 0
    bucket.fail_puts = False
    assert store.put_many([PutItem(1, address, envelope)]) == [True]


def test_quota_refuses_before_any_request(
    tmp_path: Path, bucket: MemoryBucket, keys: KeyRing
) -> None:
    with CloudChunkStore.open_cloud(tmp_path / "s", bucket, capacity=3000) as small:
        address, envelope = sealed(keys, os.urandom(5000))  # does not compress
        with pytest.raises(QuotaExceededError):
            small.put_many([PutItem(1, address, envelope)])
    assert bucket.objects == {}


def test_a_bad_object_is_found_by_read_and_by_scrub(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    (a1, e1), (a2, e2), (a3, e3) = (sealed(keys, bytes([i]) * 3000) for i in range(3))
    store.put_many([PutItem(1, a1, e1), PutItem(1, a2, e2), PutItem(1, a3, e3)])
    key1 = store.object_key(1, a1, hashlib.sha256(e1).digest())
    key2 = store.object_key(1, a2, hashlib.sha256(e2).digest())
    bucket.objects[key1] = e1[:-1] + bytes([e1[-1] ^ 1])  # same size, one bit flipped
    del bucket.objects[key2]
    with pytest.raises(CorruptChunkError, match="checksum"):
        store.get(1, a1)
    with pytest.raises(CorruptChunkError, match="missing from the bucket"):
        store.get(1, a2)
    found = store.get_many(1, [a1, a2, a3])
    assert isinstance(found[0], CorruptChunkError) and isinstance(found[1], CorruptChunkError)
    assert found[2] == e3
    bad = store.scrub(drop_bad=True)  # a listing sees the missing one, not the flipped bit
    assert [(b.address, b.reason) for b in bad] == [(a2, "missing from the bucket")]
    assert not store.has(1, a2) and store.has(1, a1)


def test_a_scrub_does_not_take_a_chunk_stored_meanwhile_for_missing(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    (old, old_env), (new, new_env), (gone, gone_env) = (
        sealed(keys, bytes([i]) * 2000) for i in range(3)
    )
    store.put_many([PutItem(1, old, old_env), PutItem(1, gone, gone_env)])
    plain_list = bucket.list

    def list_then_race(prefix: str) -> Iterator[tuple[str, int]]:
        listing = list(plain_list(prefix))  # taken before the others' changes land
        store.put_many([PutItem(1, new, new_env)])
        store.delete_many(1, [gone])
        yield from listing

    bucket.list = list_then_race  # type: ignore[method-assign]
    assert store.scrub(drop_bad=True) == []
    assert store.get(1, new) == new_env and store.get(1, old) == old_env


def test_delete_and_evict_remove_the_objects(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    chunks = [sealed(keys, bytes([i]) * 4000) for i in range(10)]
    store.put_many([PutItem(3, a, e) for a, e in chunks])
    assert store.delete_many(3, [a for a, _e in chunks[:4]]) == [a for a, _e in chunks[:4]]
    assert len(bucket.objects) == 6
    dropped = store.evict(target_used=store.used_bytes - 1)
    assert len(dropped) == 1 and len(bucket.objects) == 5
    assert store.used_bytes == sum(len(e) for _a, e in chunks) - 5 * len(chunks[0][1])


def test_objects_a_delete_could_not_reach_are_deleted_later(
    tmp_path: Path, bucket: MemoryBucket, keys: KeyRing
) -> None:
    root = tmp_path / "s"
    address, envelope = sealed(keys, b"gone soon" * 500)
    with CloudChunkStore.open_cloud(root, bucket, capacity=10**6) as store:
        store.put_many([PutItem(2, address, envelope)])
        bucket.fail_deletes = True
        assert store.delete_many(2, [address]) == [address]  # the index is what counts
        assert not store.has(2, address) and len(bucket.objects) == 1
        assert store.garbage_bytes() == len(envelope)
        assert store.compact() == 0  # still unreachable: kept for later, no exception
    bucket.fail_deletes = False
    with CloudChunkStore.open_cloud(root, bucket) as store:  # the doomed list survived
        assert store.compact() == len(envelope)
        assert bucket.objects == {} and store.garbage_bytes() == 0


def test_check_finds_and_removes_orphans(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    address, envelope = sealed(keys, b"kept" * 900)
    store.put_many([PutItem(4, address, envelope)])
    # What a crash between the PUT and the index commit leaves behind:
    bucket.objects[store.object_key(4, b"\x01" * 32, b"\x02" * 32)] = b"orphan" * 10
    bucket.objects["somebody-else/file"] = b"not ours"
    report = store.check()
    assert (report.verified, report.orphan_records, report.orphan_bytes) == (1, 1, 60)
    report = store.check(repair=True)
    assert report.repaired and store.check().orphan_records == 0
    assert "somebody-else/file" in bucket.objects and store.get(4, address) == envelope


def test_two_envelopes_of_one_address_never_overwrite_each_other(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    text = b"sealed twice" * 300
    address = chunk_address(keys, text)
    first, second = seal_chunk(keys, address, text), seal_chunk(keys, address, text)
    assert first != second  # random nonces
    store.put_many([PutItem(5, address, first)])
    assert store.put_many([PutItem(5, address, second)]) == [False]
    assert store.get(5, address) == first and len(bucket.objects) == 1


@pytest.mark.parametrize("same_envelope", [False, True])
def test_concurrent_puts_of_one_chunk_leave_one_readable_object(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing, same_envelope: bool
) -> None:
    text = b"raced" * 700
    address = chunk_address(keys, text)
    slow = seal_chunk(keys, address, text)
    fast = slow if same_envelope else seal_chunk(keys, address, text)
    entered, release = threading.Event(), threading.Event()
    plain_put = bucket.put
    first_call = [True]

    def put(key: str, data: bytes) -> None:
        if first_call[0]:  # the first put stalls in its request until the second is indexed
            first_call[0] = False
            entered.set()
            release.wait(10)
        plain_put(key, data)

    bucket.put = put  # type: ignore[method-assign]
    results: dict[str, list[bool]] = {}
    racer = threading.Thread(
        target=lambda: results.setdefault("slow", store.put_many([PutItem(5, address, slow)]))
    )
    racer.start()
    assert entered.wait(10)
    results["fast"] = store.put_many([PutItem(5, address, fast)])
    release.set()
    racer.join(10)
    assert results == {"fast": [True], "slow": [False]}
    assert store.get(5, address) == fast and len(bucket.objects) == 1
    assert store.check().orphan_records == 0


def test_a_store_stays_bound_to_its_bucket(
    tmp_path: Path, bucket: MemoryBucket, keys: KeyRing
) -> None:
    root = tmp_path / "s"
    CloudChunkStore.open_cloud(root, bucket).close()
    with pytest.raises(ChunkstoreError, match="keeps its chunks in a bucket"):
        ChunkStore.open(root)
    with pytest.raises(ChunkstoreError, match="keeps its chunks in"):
        CloudChunkStore.open_cloud(root, MemoryBucket("memory s3://elsewhere/"))
    disk = tmp_path / "disk"
    with ChunkStore.open(disk, capacity=10**6) as local:
        address, envelope = sealed(keys, b"on disk" * 100)
        local.put_many([PutItem(1, address, envelope)])
    with pytest.raises(ChunkstoreError, match="holds 1 chunks on this disk"):
        CloudChunkStore.open_cloud(disk, bucket)


def test_bucket_urls() -> None:
    assert BucketAddress.parse("s3://backups") == BucketAddress("backups", "")
    assert BucketAddress.parse("s3://backups/lan/vault/") == BucketAddress("backups", "lan/vault/")
    for bad in ("backups", "s3://", "s3://a", "s3://bad_name!/x", "http://x/y"):
        with pytest.raises(ChunkstoreError):
            BucketAddress.parse(bad)


def test_against_a_real_s3_service(tmp_path: Path, s3_endpoint: str, keys: KeyRing) -> None:
    name = f"lanvault-{uuid.uuid4().hex[:12]}"
    missing = S3Bucket(BucketAddress.parse(f"s3://{name}"), s3_endpoint)
    with pytest.raises(BucketError, match=f"bucket s3://{name}/: open failed"):
        missing.check_access()
    make_bucket(s3_endpoint, name)
    bucket = S3Bucket(BucketAddress.parse(f"s3://{name}/tier"), s3_endpoint)
    bucket.check_access()
    chunks = [sealed(keys, bytes([i]) * 64000) for i in range(40)]
    with CloudChunkStore.open_cloud(tmp_path / "s", bucket, "tier/", capacity=10**8) as store:
        assert store.put_many([PutItem(9, a, e, 2) for a, e in chunks]) == [True] * 40
        assert store.get_many(9, [a for a, _e in chunks]) == [e for _a, e in chunks]
        listed = dict(bucket.list("tier/chunks/9/"))
        assert len(listed) == 40 and set(listed.values()) == {len(chunks[0][1])}
        assert store.scrub() == [] and store.check().orphan_records == 0
        assert len(store.delete_many(9, [a for a, _e in chunks[:25]])) == 25
        assert len(dict(bucket.list("tier/"))) == 15
        bucket.put("tier/chunks/9/stray", b"left by a crash")
        assert store.check(repair=True).orphan_records == 1
        assert len(dict(bucket.list("tier/"))) == 15


def test_the_cloud_tier_keeps_shares_as_a_disk_store_does(
    store: CloudChunkStore, bucket: MemoryBucket, keys: KeyRing
) -> None:
    chunk = prepare_chunk(keys, os.urandom(30_000))
    blobs = encode(chunk.envelope, chunk.address, Code(2, 4), keys.share_key)
    address = share_address(chunk.address, 3)
    assert store.put(9, address, blobs[3]) is True
    assert store.get(9, address) == blobs[3]
    assert list(bucket.objects.values()) == [blobs[3]]  # the share itself, one object
    [held] = store.chunks()
    assert held.share == ShareRef(chunk.address, 2, 4, 3)
    assert store.used_bytes == len(blobs[3])  # the quota counts a share as any item
    store.delete_many(9, [address])
    assert store.chunks() == []
