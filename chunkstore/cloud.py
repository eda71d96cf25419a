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
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ChunkNotFoundError, ChunkstoreError, CorruptChunkError
from .store import (
    CLOUD_MARKER,
    BadChunk,
    CheckReport,
    ChunkStore,
    PutItem,
    StoredChunk,
    _connect_index,
    validate_address,
    validate_owner,
)

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


class CloudChunkStore(ChunkStore):
    """A ``ChunkStore`` keeping its index here and its envelopes in ``bucket`` (one object
    each). Thread-safe like the disk store; the lock is never held during a request."""

    def __init__(
        self, root: Path, conn: Any, capacity: int, bucket: ObjectBucket, prefix: str
    ) -> None:
        super().__init__(root, conn, capacity)
        self.bucket = bucket
        self._chunk_prefix = prefix + "chunks/"
        self._requests = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix="bucket")
        self._in_flight: set[str] = set()  # keys being put: not orphans, whatever a list says
        self._purge_lock = threading.Lock()

    def disk_room(self, fresh: bool = False) -> int:
        """The envelopes go to the bucket: only the quota bounds what this store takes."""
        return 2**62

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
                conn, _capacity = _connect_index(path)
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
        conn, stored_capacity = _connect_index(path)
        conn.executescript(_DOOMED_SCHEMA)
        store = cls(path, conn, stored_capacity, bucket, prefix)
        if capacity is not None:
            store.set_capacity(capacity)
        return store

    def close(self) -> None:
        self._requests.shutdown(wait=True)
        super().close()

    def _segment_numbers(self) -> list[int]:
        return []  # no segments: the bucket holds the envelopes

    def object_key(self, owner: int, address: bytes, digest: bytes) -> str:
        return f"{self._chunk_prefix}{owner}/{address.hex()}.{digest.hex()[:16]}"

    # -- writing -------------------------------------------------------------------------

    def put_many(self, items: Sequence[PutItem]) -> list[bool]:
        digests = self._checked_digests(items)
        with self._lock:
            written, records, needed = self._admit(items, digests)
            if not records:
                return written
            keys = [self.object_key(i.owner, i.address, d) for i, d in records]
            self._reserved += needed
            self._in_flight.update(keys)
        superseded: list[str] = []
        now_held: set[tuple[int, bytes]] = set()
        try:
            # Every PUT must have ended before anything is indexed (none may still be
            # writing when this returns), then the first failure, if any, is raised.
            futures = [
                self._requests.submit(self.bucket.put, key, item.envelope)
                for key, (item, _d) in zip(keys, records, strict=True)
            ]
            for future in futures:
                future.exception()
            for future in futures:
                future.result()
            with self._lock:
                # Held meanwhile: a concurrent put was indexed first. Its object stands; ours
                # goes, unless it was the same envelope, hence the very same object.
                superseded = [
                    key
                    for key, (item, digest) in zip(keys, records, strict=True)
                    if (loc := self._location(item.owner, item.address)) is not None
                    and loc.digest != digest
                ]
                now_held = self._index_new(records, [(0, 0)] * len(records))
                with self._transaction():
                    self._db.executemany(
                        "INSERT OR IGNORE INTO doomed(key, length) VALUES (?, 0)",
                        [(k,) for k in superseded],
                    )
        finally:
            with self._lock:
                self._reserved -= needed
                self._in_flight.difference_update(keys)
        if superseded:
            self._purge_quietly()
        return self._not_raced(written, items, now_held)

    # -- reading -------------------------------------------------------------------------

    def get(self, owner: int, address: bytes) -> bytes:
        validate_owner(owner)
        validate_address(address)
        with self._lock:
            self._ensure_open()
            loc = self._location(owner, address)
        if loc is None:
            raise ChunkNotFoundError(f"no chunk {address.hex()} of owner {owner}")
        short = address.hex()[:16]
        try:
            envelope = self.bucket.get(self.object_key(owner, address, loc.digest))
        except KeyError:
            raise CorruptChunkError(f"chunk {short}… is missing from the bucket") from None
        if len(envelope) != loc.length or hashlib.sha256(envelope).digest() != loc.digest:
            raise CorruptChunkError(f"chunk {short}… failed its checksum")
        return envelope

    def get_many(
        self, owner: int, addresses: Sequence[bytes]
    ) -> list[bytes | ChunkstoreError | OSError]:
        def one(address: bytes) -> bytes | ChunkstoreError | OSError:
            try:
                return self.get(owner, address)
            except (ChunkstoreError, OSError) as exc:
                return exc

        return list(self._requests.map(one, addresses))

    # -- removing ------------------------------------------------------------------------

    def _drop_rows(self, pairs: Sequence[tuple[int, bytes]]) -> None:
        # The objects to delete are written down in the same transaction as the rows' removal.
        doomed = []
        for owner, address in pairs:
            row = self._db.execute(
                "SELECT digest, length FROM chunks WHERE owner=? AND address=?", (owner, address)
            ).fetchone()
            if row is not None:
                doomed.append((self.object_key(owner, address, bytes(row[0])), int(row[1])))
        self._db.executemany("INSERT OR IGNORE INTO doomed(key, length) VALUES (?, ?)", doomed)
        super()._drop_rows(pairs)

    def delete_many(self, owner: int, addresses: Iterable[bytes]) -> list[bytes]:
        removed = super().delete_many(owner, addresses)
        if removed:
            self._purge_quietly()
        return removed

    def evict(
        self, target_used: int, priority: Callable[[StoredChunk], float] | None = None
    ) -> list[StoredChunk]:
        dropped = super().evict(target_used, priority)
        if dropped:
            self._purge_quietly()
        return dropped

    def purge(self) -> int:
        """Delete the doomed objects from the bucket; return their bytes. Raises
        ``BucketError`` (they stay doomed) when the bucket cannot be reached."""
        with self._purge_lock:
            with self._lock:
                self._ensure_open()
                rows = self._db.execute("SELECT key, length FROM doomed").fetchall()
            if not rows:
                return 0
            keys = [str(k) for k, _n in rows]
            self.bucket.delete(keys)
            with self._lock, self._transaction():
                self._db.executemany("DELETE FROM doomed WHERE key=?", [(k,) for k in keys])
            return sum(int(n) for _k, n in rows)

    def _purge_quietly(self) -> None:
        try:
            self.purge()
        except BucketError as exc:
            log.warning("%s; the objects will be deleted later", exc)

    # -- verification and upkeep ---------------------------------------------------------

    def _listing(self) -> dict[str, int]:
        return dict(self.bucket.list(self._chunk_prefix))

    def scrub(self, drop_bad: bool = False, found_by: str = "scrub") -> list[BadChunk]:
        """Check every chunk's object is in the bucket with its size (reads verify bytes); and
        delete what an earlier removal could not."""
        self._purge_quietly()
        # The rows before the listing: a chunk indexed later (its object put after the listing
        # began) must not be taken for missing.
        with self._lock:
            rows = self._db.execute("SELECT owner, address, length, digest FROM chunks").fetchall()
        listed = self._listing()
        bad: list[BadChunk] = []
        for owner, address, length, digest in rows:
            key = self.object_key(int(owner), bytes(address), bytes(digest))
            size = listed.get(key)
            if size is None:
                bad.append(BadChunk(int(owner), bytes(address), "missing from the bucket"))
            elif size != int(length):
                reason = f"has {size} bytes in the bucket, {int(length)} expected"
                bad.append(BadChunk(int(owner), bytes(address), reason))
        if bad:  # removed meanwhile (its object with it): not a bad copy
            with self._lock:
                digests = {(b.owner, b.address): self._location(b.owner, b.address) for b in bad}
            expected = {(int(o), bytes(a)): bytes(d) for o, a, _n, d in rows}
            bad = [
                b
                for b in bad
                if (loc := digests[(b.owner, b.address)]) is not None
                and loc.digest == expected[(b.owner, b.address)]
            ]
        if drop_bad and bad:
            self.drop_damaged(bad, found_by)
            self._purge_quietly()
        return bad

    def check(self, repair: bool = False) -> CheckReport:
        """Reconcile index and bucket: every entry present, objects nobody names counted (and
        deleted with ``repair``)."""
        report = CheckReport(found_before=self.damage_summary())
        report.bad = self.scrub(drop_bad=repair, found_by="check")
        listed = self._listing()
        with self._lock:
            report.verified = self.chunk_count() if repair else self.chunk_count() - len(report.bad)
            expected = {
                self.object_key(int(o), bytes(a), bytes(d))
                for o, a, d in self._db.execute("SELECT owner, address, digest FROM chunks")
            }
            expected.update(str(k) for (k,) in self._db.execute("SELECT key FROM doomed"))
            expected.update(self._in_flight)
        orphans = {k: n for k, n in listed.items() if k not in expected}
        report.orphan_records = len(orphans)
        report.orphan_bytes = sum(orphans.values())
        if repair:
            if orphans:
                self.bucket.delete(sorted(orphans))
            self.purge()
            report.repaired = True
        return report

    def garbage_bytes(self) -> int:
        with self._lock:
            return self._query_int("SELECT COALESCE(SUM(length), 0) FROM doomed")

    def compact(self, min_garbage_ratio: float = 0.5) -> int:
        """No segments to rewrite: delete what removal could not delete at the time."""
        try:
            return self.purge()
        except BucketError as exc:
            log.warning("%s; trying again at the next compaction", exc)
            return 0
