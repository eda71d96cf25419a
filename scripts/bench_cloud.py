#!/usr/bin/env python3
"""Cloud tier: how fast chunks go into and come out of an S3 bucket, beside the same service's
raw speed (the same number of parallel PUTs and GETs of 64,000-byte objects through boto3).

Runs against a real S3-compatible HTTP service: moto's server on loopback by default, or
``--endpoint URL --bucket NAME`` (credentials from the AWS_* variables) for a real one.
Prints MB/s and chunks/s for durable puts and verified gets, and the ratio to the ceiling.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import free_port, log

from chunkstore.cloud import (
    PARALLEL_REQUESTS,
    BucketAddress,
    CloudChunkStore,
    S3Bucket,
)
from chunkstore.envelope import chunk_address, seal_chunk
from chunkstore.keys import KeyRing, new_master_key
from chunkstore.store import PutItem

BATCH = 60  # chunks per put_many: the holder's group commit takes batches of this order


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    import socket

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("bench_cloud: the S3 test server did not start") from None
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="data to put and get (default 64)")
    parser.add_argument("--endpoint", help="an S3 service to measure instead of moto's server")
    parser.add_argument("--bucket", help="an existing bucket there")
    args = parser.parse_args()
    server = None
    if args.endpoint:
        endpoint, name = args.endpoint, args.bucket
        if not name:
            raise SystemExit("bench_cloud: --endpoint needs --bucket")
    else:
        for var, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
            os.environ.setdefault(var, value)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        server, endpoint = start_server()
        name = f"lanvault-bench-{uuid.uuid4().hex[:8]}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    try:
        keys = KeyRing.from_master(new_master_key())
        count = args.mib * 1024 * 1024 // 64_000
        log(f"sealing {count} chunks")
        chunks = []
        for _ in range(count):
            plain = os.urandom(64_000)
            address = chunk_address(keys, plain)
            chunks.append((address, seal_chunk(keys, address, plain)))
        total_mb = sum(len(e) for _a, e in chunks) / 1e6
        bucket = S3Bucket(BucketAddress.parse(f"s3://{name}/bench"), endpoint)

        raw_keys = [f"raw/{i}" for i in range(count)]
        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            started = time.perf_counter()
            list(pool.map(bucket.put, raw_keys, [e for _a, e in chunks]))
            raw_put = time.perf_counter() - started
            started = time.perf_counter()
            got = list(pool.map(bucket.get, raw_keys))
            raw_get = time.perf_counter() - started
        assert [hashlib.sha256(g).digest() for g in got[:3]] == [
            hashlib.sha256(e).digest() for _a, e in chunks[:3]
        ]
        bucket.delete(raw_keys)

        with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmp:
            store = CloudChunkStore.open_cloud(Path(tmp), bucket, "bench/", capacity=1 << 40)
            with store:
                started = time.perf_counter()
                for first in range(0, count, BATCH):
                    store.put_many([PutItem(1, a, e, 2) for a, e in chunks[first : first + BATCH]])
                store_put = time.perf_counter() - started
                addresses = [a for a, _e in chunks]
                started = time.perf_counter()
                for first in range(0, count, BATCH):
                    found = store.get_many(1, addresses[first : first + BATCH])
                    assert all(isinstance(f, bytes) for f in found)
                store_get = time.perf_counter() - started
                started = time.perf_counter()
                store.delete_many(1, addresses)
                delete = time.perf_counter() - started

        print(
            f"cloud tier, {count} chunks ({total_mb:.0f} MB), {PARALLEL_REQUESTS} requests at once"
        )
        print(f"  endpoint: {endpoint if args.endpoint else 'moto server on loopback'}")
        for label, ours, raw in (
            ("put (durable)", store_put, raw_put),
            ("get (verified)", store_get, raw_get),
        ):
            print(
                f"  {label:15} {total_mb / ours:7.1f} MB/s {count / ours:7.0f} chunks/s"
                f"   raw S3 {total_mb / raw:7.1f} MB/s   = {raw / ours:.2f}x"
            )
        print(
            f"  delete         {count / delete:7.0f} chunks/s (DeleteObjects, 1000 keys a request)"
        )
    finally:
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
