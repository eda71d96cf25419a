"""The cloud tier: a chunk store whose envelopes live in an S3-compatible bucket.

A node started with ``--bucket s3://NAME[/PREFIX]`` holds chunks like any other node (it joins
the network, is placed by the same hashing, serves, deletes, repairs), but the bytes go to an
object store (AWS S3, MinIO, Ceph RGW, Garage...) instead of this computer's disk. Only
envelopes leave: they are sealed by their owner, so the bucket's operator learns sizes and
nothing else. Layout (``docs/formats.md``)::

    STORE/index.sqlite3   the disk store's index (segment and offset are 0), plus ``doomed``
    STORE/cloud.json      which bucket this store belongs to; a disk store refuses to open it
    bucket: PREFIX chunks/<owner>/<address hex>.<first 16 hex of the envelope's SHA-256>

Durability: ``put_many`` returns after every new envelope's PUT was answered (an object store
answers only once the object is durable) and the index rows are committed. A crash between
the two leaves an object no row names: ``check --repair`` deletes such orphans. The digest in
the key means two different envelopes of one address (sealed twice) never overwrite each other.

Removal commits the index change and the object's key in ``doomed`` in one transaction, then
deletes the objects; a bucket that cannot be reached then keeps them doomed, and ``compact``
(run periodically by the node) deletes them later. Reads are verified against the index's
digest like the disk store's. Scrubbing lists the bucket and checks every object is there with
its size (downloading everything each day would cost what the bucket charges for egress);
every read still verifies the bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .chunkindex import BadChunk, ChunkIndex, IndexedChunk, Location, PutItem, Record, connect_index
from .errors import ChunkstoreError, CorruptChunkError
from .segments import StorageReport
from .store import CLOUD_MARKER, ChunkStore

log = logging.getLogger(__name__)
PARALLEL_REQUESTS = 16  # an object store answers each request in milliseconds: overlap them
_DOOMED_SCHEMA = """
CREATE TABLE IF NOT EXISTS doomed (  -- objects whose chunks were removed, to delete from the bucket
    key    TEXT    PRIMARY KEY,
    length INTEGER NOT NULL
) WITHOUT ROWID;
"""


class BucketError(ChunkstoreError, OSError):
    """The bucket could not be reached or refused a request (an I/O error: retried later)."""


class ObjectBucket(Protocol):
    """The four object-store operations the cloud tier needs; ``S3Bucket`` is the real one."""

    @property
    def description(self) -> str: ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ``KeyError`` if there is none."""
        ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these objects; a key that is already absent is fine."""
        ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Every ``(key, size)`` under ``prefix``."""
        ...


@dataclass(frozen=True, slots=True)
class BucketAddress:
    """``s3://NAME[/PREFIX]`` parsed; ``prefix`` is empty or ends with ``/``."""

    name: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> BucketAddress:
        if not url.startswith("s3://"):
            raise ChunkstoreError(f"invalid bucket {url!r}: expected s3://NAME[/PREFIX]")
        name, _sep, prefix = url[len("s3://") :].partition("/")
        if not 3 <= len(name) <= 63 or not all(c.isalnum() or c in ".-" for c in name):
            raise ChunkstoreError(f"invalid bucket name {name!r} in {url!r}")
        prefix = prefix.strip("/")
        return cls(name, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.name}/{self.prefix}"


class S3Bucket:
    """An S3-compatible bucket through boto3 (thread-safe: one client, a pool of connections).

    Credentials come from boto3's usual places: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    ``~/.aws/credentials``, an instance role. ``endpoint`` selects a non-AWS service.
    """

    def __init__(self, address: BucketAddress, endpoint: str = "", region: str = "") -> None:
        import boto3
        from botocore.config import Config

        self.address = address
        self.endpoint = endpoint
        config = Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=PARALLEL_REQUESTS,
        )
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=region or None,
            config=config,
        )

    @property
    def description(self) -> str:
        return f"{self.endpoint or 'aws'} {self.address}"

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.address.name, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in ("NoSuchKey", "404") and what == "get":
                raise KeyError(kwargs.get("Key")) from None
            code = str(error.get("Code", ""))
            message = {
                "404": "no such bucket",  # HEAD has no body: only the status tells
                "403": "access denied (check the credentials and the bucket's policy)",
            }.get(code) or str(error.get("Message") or code or exc)
            raise BucketError(f"bucket {self.address}: {what} failed: {message}") from None
        except BotoCoreError as exc:
            raise BucketError(f"bucket {self.address}: {what} failed: {exc}") from None

    def check_access(self) -> None:
        """Fail with one clear line when the bucket is missing or the credentials are wrong."""
        self._call("open", self._client.head_bucket)

    def put(self, key: str, data: bytes) -> None:
        self._call("put", self._client.put_object, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        answer = self._call("get", self._client.get_object, Key=key)
        try:
            return bytes(answer["Body"].read())
        except Exception as exc:  # the body streams after the headers: a reset shows here
            raise BucketError(f"bucket {self.address}: get failed: {exc}") from None

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            objects = [{"Key": k} for k in keys[start : start + 1000]]
            answer = self._call(
                "delete",
                self._client.delete_objects,
                Delete={"Objects": objects, "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if errors:
                raise BucketError(
                    f"bucket {self.address}: delete failed for {len(errors)} objects:"
                    f" {errors[0].get('Message') or errors[0].get('Code')}"
                )

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            answer = self._call("list", self._client.list_objects_v2, Prefix=prefix, **extra)
            for entry in answer.get("Contents") or []:
                yield str(entry["Key"]), int(entry["Size"])
            if not answer.get("IsTruncated"):
                return
            token = answer["NextContinuationToken"]


T = TypeVar("T")


class BucketBackend:
    """Envelopes as objects in ``bucket`` (one each), for a store's index. Thread-safe; the
    index's lock is never held during a request."""

    def __init__(self, index: ChunkIndex, bucket: ObjectBucket, prefix: str) -> None:
        index.db.executescript(_DOOMED_SCHEMA)
        self.bucket = bucket
        self._index = index
        self._lock = index.lock
        self._chunk_prefix = prefix + "chunks/"
        self._requests = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix="bucket")
        self._in_flight: set[str] = set()  # keys being put: not orphans, whatever a list says
        self._purge_lock = threading.Lock()

    def close(self) -> None:
        self._requests.shutdown(wait=True)

    def room(self, fresh: bool = False) -> int:
        """The envelopes go to the bucket: only the quota bounds what this store takes."""
        return 2**62

    def object_key(self, owner: int, address: bytes, digest: bytes) -> str:
        return f"{self._chunk_prefix}{owner}/{address.hex()}.{digest.hex()[:16]}"

    # -- writing -------------------------------------------------------------------------

    def begin(self, records: Sequence[Record]) -> list[tuple[str, PutItem]]:
        """(lock held) The records' keys, in flight until ``end``: no check takes them for
        orphans meanwhile."""
        keys = [(self.object_key(i.owner, i.address, d), i) for i, d in records]
        self._in_flight.update(key for key, _i in keys)
        return keys

    def write(self, keys: list[tuple[str, PutItem]]) -> list[tuple[int, int]]:
        """PUT every envelope (in parallel); every PUT has ended when this returns (none may
        still be writing), then the first failure, if any, is raised. An object store answers
        only once the object is durable."""
        futures = [self._requests.submit(self.bucket.put, key, i.envelope) for key, i in keys]
        for future in futures:
            future.exception()
        for future in futures:
            future.result()
        return [(0, 0)] * len(keys)

    def end(self, keys: list[tuple[str, PutItem]], failed: bool) -> None:
        """(lock held)"""
        self._in_flight.difference_update(key for key, _i in keys)

    def lost_race(self, raced: Sequence[tuple[Record, Location]]) -> None:
        """(lock held) A concurrent put was indexed first: its object stands; ours goes,
        unless it was the same envelope, hence the very same object."""
        superseded = [
            (self.object_key(item.owner, item.address, digest),)
            for (item, digest), loc in raced
            if loc.digest != digest
        ]
        if superseded:
            with self._index.transaction():
                self._index.db.executemany(
                    "INSERT OR IGNORE INTO doomed(key, length) VALUES (?, 0)", superseded
                )

    # -- reading -------------------------------------------------------------------------

    def read(self, owner: int, address: bytes, loc: Location) -> bytes:
        short = address.hex()[:16]
        try:
            envelope = self.bucket.get(self.object_key(owner, address, loc.digest))
        except KeyError:
            raise CorruptChunkError(f"chunk {short}… is missing from the bucket") from None
        if len(envelope) != loc.length or hashlib.sha256(envelope).digest() != loc.digest:
            raise CorruptChunkError(f"chunk {short}… failed its checksum")
        return envelope

    def map_reads(self, read: Callable[[bytes], T], addresses: Sequence[bytes]) -> list[T]:
        return list(self._requests.map(read, addresses))  # requests overlap

    # -- removing ------------------------------------------------------------------------

    def forgetting(self, removed: Sequence[IndexedChunk]) -> None:
        """(transaction open) The objects to delete are written down in the same transaction
        as the rows' removal."""
        self._index.db.executemany(
            "INSERT OR IGNORE INTO doomed(key, length) VALUES (?, ?)",
            [(self.object_key(o, a, loc.digest), loc.length) for o, a, loc in removed],
        )

    def forgotten(self) -> None:
        self._purge_quietly()

    def purge(self) -> int:
        """Delete the doomed objects from the bucket; return their bytes. Raises
        ``BucketError`` (they stay doomed) when the bucket cannot be reached."""
        with self._purge_lock:
            with self._lock:
                self._index.ensure_open()
                rows = self._index.db.execute("SELECT key, length FROM doomed").fetchall()
            if not rows:
                return 0
            keys = [str(k) for k, _n in rows]
            self.bucket.delete(keys)
            with self._lock, self._index.transaction():
                self._index.db.executemany("DELETE FROM doomed WHERE key=?", [(k,) for k in keys])
            return sum(int(n) for _k, n in rows)

    def _purge_quietly(self) -> None:
        try:
            self.purge()
        except BucketError as exc:
            log.warning("%s; the objects will be deleted later", exc)

    # -- verification and upkeep ---------------------------------------------------------

    def _listing(self) -> dict[str, int]:
        return dict(self.bucket.list(self._chunk_prefix))

    def scrub(self) -> list[BadChunk]:
        """Check every chunk's object is in the bucket with its size (reads verify bytes); and
        delete what an earlier removal could not."""
        self._purge_quietly()
        # The rows before the listing: a chunk indexed later (its object put after the listing
        # began) must not be taken for missing.
        rows = self._index.located()
        listed = self._listing()
        bad: list[BadChunk] = []
        for owner, address, loc in rows:
            size = listed.get(self.object_key(owner, address, loc.digest))
            if size is None:
                bad.append(BadChunk(owner, address, "missing from the bucket"))
            elif size != loc.length:
                reason = f"has {size} bytes in the bucket, {loc.length} expected"
                bad.append(BadChunk(owner, address, reason))
        if bad:  # removed meanwhile (its object with it): not a bad copy
            expected = {(o, a): loc.digest for o, a, loc in rows}
            with self._lock:
                now = {(b.owner, b.address): self._index.location(b.owner, b.address) for b in bad}
            bad = [
                b
                for b in bad
                if (found := now[(b.owner, b.address)]) is not None
                and found.digest == expected[(b.owner, b.address)]
            ]
        return bad

    def check(self, repair: bool) -> StorageReport:
        """Objects no entry names counted (and deleted with ``repair``)."""
        listed = self._listing()
        with self._lock:
            expected = {
                self.object_key(int(o), bytes(a), bytes(d))
                for o, a, d in self._index.db.execute("SELECT owner, address, digest FROM chunks")
            }
            expected.update(str(k) for (k,) in self._index.db.execute("SELECT key FROM doomed"))
            expected.update(self._in_flight)
        orphans = {k: n for k, n in listed.items() if k not in expected}
        report = StorageReport(orphan_records=len(orphans), orphan_bytes=sum(orphans.values()))
        if repair:
            if orphans:
                self.bucket.delete(sorted(orphans))
            self.purge()
        return report

    def garbage_bytes(self) -> int:
        with self._lock:
            return self._index.query_int("SELECT COALESCE(SUM(length), 0) FROM doomed")

    def compact(self, min_garbage_ratio: float = 0.5) -> int:
        """No segments to rewrite: delete what removal could not delete at the time."""
        try:
            return self.purge()
        except BucketError as exc:
            log.warning("%s; trying again at the next compaction", exc)
            return 0


class CloudChunkStore(ChunkStore):
    """A ``ChunkStore`` whose backend is a bucket (the index stays on this disk)."""

    backend: BucketBackend

    @property
    def bucket(self) -> ObjectBucket:
        return self.backend.bucket

    def object_key(self, owner: int, address: bytes, digest: bytes) -> str:
        return self.backend.object_key(owner, address, digest)

    def purge(self) -> int:
        """Delete the objects of removed chunks now (``BucketBackend.purge``)."""
        return self.backend.purge()

    @classmethod
    def open_cloud(
        cls,
        root: str | Path,
        bucket: ObjectBucket,
        prefix: str = "",
        capacity: int | None = None,
    ) -> CloudChunkStore:
        """Open (creating) the store at ``root`` bound to ``bucket``; refuse another bucket, or
        a directory that already holds chunks on this disk."""
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        marker = path / CLOUD_MARKER
        binding = {"bucket": bucket.description, "prefix": prefix}
        if marker.exists():
            recorded = json.loads(marker.read_text())
            if recorded != binding:
                raise ChunkstoreError(
                    f"{path} keeps its chunks in {recorded.get('bucket')!r}"
                    f" (prefix {recorded.get('prefix')!r}), not {bucket.description!r}"
                )
        else:
            if (path / "index.sqlite3").exists():
                conn, _capacity = connect_index(path)
                try:
                    held = int(conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
                finally:
                    conn.close()
                if held:
                    raise ChunkstoreError(
                        f"{path} holds {held} chunks on this disk; a node keeping its chunks"
                        " in a bucket needs a state directory of its own"
                    )
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(binding))
            tmp.replace(marker)
        index = ChunkIndex(*connect_index(path))
        store = cls(path, index, BucketBackend(index, bucket, prefix))
        if capacity is not None:
            store.set_capacity(capacity)
        return store
