#!/usr/bin/env python3
"""Benchmark of the chunk pipeline and the durable chunk store, beside their physical ceilings.

Prints, for random data and for compressible text, in one run (medians of --repeat passes):
  * the raw primitives on the same buffers, one core: hashlib.sha256, HMAC-SHA256 (the keyed
    hash lanvault uses for addresses), keyed BLAKE2b (the alternative), PyNaCl XChaCha20-Poly1305;
  * the whole chunk pipeline (split, address, compress, encrypt) on 1 and 2 worker threads
    (trio.to_thread.run_sync under a CapacityLimiter, as the node runs it);
  * durable put: ChunkStore.put_many (group commit) beside a naive write+fsync+rename+dirsync per
    chunk file, on the same disk.

Usage: scripts/bench_chunkstore.py [--random-mib 1024] [--text-mib 512] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nacl.bindings
import trio

from chunkstore.chunking import CHUNK_SIZE
from chunkstore.keys import KeyRing, new_master_key
from chunkstore.pipeline import PreparedChunk, prepare_chunks
from chunkstore.store import ChunkStore, PutItem
from lanvault.runtime import tune_allocator
from node.localtree import READ_BATCH

# Chunks per thread hop, as the daemon's backup hands them over. A hop costs this VM 100-190 us
# of the event loop's CPU (waking a thread on the other core), about two chunks' hashing.
BATCH = READ_BATCH


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_random(mib: int) -> list[bytes]:
    total = mib * 1024 * 1024
    return [os.urandom(min(CHUNK_SIZE, total - i)) for i in range(0, total, CHUNK_SIZE)]


def make_text(mib: int) -> list[bytes]:
    rng = random.Random(7)
    words = [
        "".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 10)))
        for _ in range(5000)
    ]
    lines = []
    size = 0
    while size < 8 * 1024 * 1024:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + ".\n"
        lines.append(line)
        size += len(line)
    block = "".join(lines).encode()
    total = mib * 1024 * 1024
    data = (block * (total // len(block) + 1))[:total]
    return [data[i : i + CHUNK_SIZE] for i in range(0, total, CHUNK_SIZE)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def each(fn: Callable[[bytes], object], chunks: list[bytes]) -> None:
    for chunk in chunks:  # outputs are dropped at once, as a sender would
        fn(chunk)


def median_rate(nbytes: int, repeat: int, fn: Callable[[], object]) -> float:
    return statistics.median(nbytes / timed(fn) / 1e6 for _ in range(repeat))


def pipeline(
    keys: KeyRing, chunks: list[bytes], threads: int, keep: bool = False
) -> list[PreparedChunk]:
    """Run the chunk pipeline on worker threads; keep the results only if asked."""
    out: list[PreparedChunk] = []

    async def main() -> None:
        limiter = trio.CapacityLimiter(threads)
        results: dict[int, list[PreparedChunk]] = {}

        async def work(index: int) -> None:
            batch = chunks[index : index + BATCH]
            prepared = await trio.to_thread.run_sync(prepare_chunks, keys, batch, limiter=limiter)
            if keep:
                results[index] = prepared

        async with trio.open_nursery() as nursery:
            for index in range(0, len(chunks), BATCH):
                nursery.start_soon(work, index)
        for index in sorted(results):
            out.extend(results[index])

    trio.run(main)
    return out


def bench_data(name: str, chunks: list[bytes], keys: KeyRing, repeat: int) -> dict[str, float]:
    nbytes = sum(len(c) for c in chunks)
    key, nonce = keys.address_key, os.urandom(24)
    res: dict[str, float] = {}
    log(f"[{name}] primitives …")
    res["sha256"] = median_rate(
        nbytes, repeat, lambda: each(lambda c: hashlib.sha256(c).digest(), chunks)
    )
    res["hmac_sha256"] = median_rate(
        nbytes, repeat, lambda: each(lambda c: hmac.digest(key, c, "sha256"), chunks)
    )
    res["blake2b_keyed"] = median_rate(
        nbytes,
        repeat,
        lambda: each(lambda c: hashlib.blake2b(c, key=key, digest_size=32).digest(), chunks),
    )
    res["xchacha20poly1305"] = median_rate(
        nbytes,
        repeat,
        lambda: each(
            lambda c: nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(c, b"", nonce, key),
            chunks,
        ),
    )
    for threads in (1, 2):
        log(f"[{name}] pipeline, {threads} thread(s) …")
        res[f"pipeline_{threads}t"] = median_rate(
            nbytes,
            repeat,
            lambda t=threads: pipeline(keys, chunks, t),  # type: ignore[misc]
        )
    sample = pipeline(keys, chunks[: min(len(chunks), 2000)], 2, keep=True)
    res["stored_ratio"] = sum(len(p.envelope) for p in sample) / sum(p.size for p in sample)
    return res


def naive_put(root: Path, envelopes: list[PreparedChunk]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for p in envelopes:
            name = p.address.hex()
            tmp = root / (name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, p.envelope)
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, root / name)
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def store_put(root: Path, envelopes: list[PreparedChunk], batch: int, writers: int = 1) -> None:
    """Put every envelope in batches; ``writers`` threads at once, as a busy node does."""
    with ChunkStore.open(root, capacity=1 << 40) as store:

        def write(part: list[PreparedChunk]) -> None:
            for i in range(0, len(part), batch):
                store.put_many([PutItem(1, p.address, p.envelope, 2) for p in part[i : i + batch]])

        threads = [
            threading.Thread(target=write, args=(envelopes[k::writers],)) for k in range(writers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def raw_disk_write(path: Path, envelopes: list[PreparedChunk]) -> None:
    """The physical ceiling: the same bytes appended in 4 MiB writes, one fdatasync each."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(0, len(envelopes), 64):
            os.write(fd, b"".join(p.envelope for p in envelopes[i : i + 64]))
            os.fdatasync(fd)
    finally:
        os.close(fd)


def bench_put(keys: KeyRing, chunks: list[bytes], repeat: int, workdir: Path) -> dict[str, float]:
    """Each round runs every variant once, in turn, so a slow phase of a shared machine's disk
    hits all of them alike instead of whichever ran during it; medians over the rounds."""
    prepared = pipeline(keys, chunks, 2, keep=True)
    naive_count = min(len(prepared), 1500)
    variants: dict[str, tuple[int, Callable[[Path], object]]] = {
        "raw_chunks_s": (len(prepared), lambda t: raw_disk_write(t, prepared)),
        "naive_chunks_s": (naive_count, lambda t: naive_put(t, prepared[:naive_count])),
    }
    for batch, writers in ((1, 1), (64, 1), (64, 2)):
        count = len(prepared) if batch > 1 else naive_count
        variants[f"store_b{batch}_w{writers}_chunks_s"] = (
            count,
            lambda t, c=count, b=batch, w=writers: store_put(t, prepared[:c], b, w),  # type: ignore[misc]
        )
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeat):
        for name, (count, run) in variants.items():
            target = workdir / f"{name}-{r}"
            rates[name].append(count / timed(lambda t=target, f=run: f(t)))  # type: ignore[misc]
            if target.is_file():
                target.unlink()
    res = {name: statistics.median(values) for name, values in rates.items()}
    res["store_vs_naive"] = statistics.median(
        s / n for s, n in zip(rates["store_b64_w2_chunks_s"], rates["naive_chunks_s"], strict=True)
    )
    nbytes = sum(len(p.envelope) for p in prepared)
    res["store_b64_mb_s"] = res["store_b64_w2_chunks_s"] * (nbytes / len(prepared)) / 1e6
    res["naive_mb_s"] = res["naive_chunks_s"] * (nbytes / len(prepared)) / 1e6
    res["raw_mb_s"] = res["raw_chunks_s"] * (nbytes / len(prepared)) / 1e6
    return res


def main() -> int:
    tune_allocator()  # as the daemon does (see lanvault/runtime.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--random-mib", type=int, default=1024)
    parser.add_argument("--text-mib", type=int, default=512)
    parser.add_argument("--put-mib", type=int, default=256, help="data written in the put test")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the put test writes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    keys = KeyRing.from_master(new_master_key())
    results: dict[str, dict[str, float]] = {}
    log(f"generating {args.random_mib} MiB random and {args.text_mib} MiB text …")
    random_chunks = make_random(args.random_mib)
    results["random"] = bench_data("random", random_chunks, keys, args.repeat)
    del random_chunks
    results["text"] = bench_data("text", make_text(args.text_mib), keys, args.repeat)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="lanvault-bench-") as tmp:
        results["put"] = bench_put(keys, make_random(args.put_mib), args.repeat, Path(tmp))

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name in ("random", "text"):
        r = results[name]
        slowest = min(r["sha256"], r["hmac_sha256"], r["xchacha20poly1305"])
        print(
            f"\n{name} data ({args.random_mib if name == 'random' else args.text_mib} MiB), MB/s, medians of {args.repeat}:"
        )
        print(f"  raw hashlib.sha256 (1 core)        {r['sha256']:8.0f}")
        print(f"  raw HMAC-SHA256 (chosen, 1 core)   {r['hmac_sha256']:8.0f}")
        print(f"  raw keyed BLAKE2b (1 core)         {r['blake2b_keyed']:8.0f}")
        print(f"  raw XChaCha20-Poly1305 (1 core)    {r['xchacha20poly1305']:8.0f}")
        print(f"  pipeline, 1 thread                 {r['pipeline_1t']:8.0f}")
        print(
            f"  pipeline, 2 threads                {r['pipeline_2t']:8.0f}"
            f"   = {r['pipeline_2t'] / slowest:.2f}x the slowest primitive"
            + (" (target >= 0.8x)" if name == "random" else " (zstd compresses: no target)")
        )
        print(f"  stored / plain size                {r['stored_ratio']:8.3f}")
    p = results["put"]
    print(f"\ndurable put ({args.put_mib} MiB of 64,000-byte chunks), medians of {args.repeat}:")
    print(
        f"  raw disk: 4 MiB appends+fdatasync  {p['raw_chunks_s']:8.0f} chunks/s {p['raw_mb_s']:7.1f} MB/s"
        f"   (ceiling: {p['raw_chunks_s'] / p['naive_chunks_s']:.1f}x naive)"
    )
    print(
        f"  naive write+fsync+rename per file  {p['naive_chunks_s']:8.0f} chunks/s {p['naive_mb_s']:7.1f} MB/s"
    )
    print(f"  ChunkStore.put, one at a time      {p['store_b1_w1_chunks_s']:8.0f} chunks/s")
    print(f"  put_many, batches of 64, 1 writer  {p['store_b64_w1_chunks_s']:8.0f} chunks/s")
    print(
        f"  put_many, batches of 64, 2 writers {p['store_b64_w2_chunks_s']:8.0f} chunks/s {p['store_b64_mb_s']:7.1f} MB/s"
        f"   = {p['store_vs_naive']:.1f}x naive (median of the rounds' ratios; target >= 5x),"
        f" {p['store_b64_w2_chunks_s'] / p['raw_chunks_s']:.2f}x the raw disk"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
