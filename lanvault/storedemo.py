"""Local demonstration of the storage core: back a folder up into a chunk store and verify it.

Every file is split into 64,000-byte chunks, addressed with the owner's keyed hash, compressed
when that helps, encrypted, and put durably into a chunk store; then every file is rebuilt from
the store alone and compared byte for byte.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from chunkstore.chunking import iter_chunks
from chunkstore.envelope import open_chunk
from chunkstore.fileid import content_digest, file_id
from chunkstore.keys import KeyRing, new_master_key
from chunkstore.pipeline import prepare_chunk
from chunkstore.sizes import format_size
from chunkstore.store import ChunkStore, PutItem


def run(source: Path, store_dir: Path) -> int:
    keys = KeyRing.from_master(new_master_key())
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and not p.is_symlink()]
    start = time.monotonic()
    total = 0
    manifest: list[tuple[Path, list[bytes], bytes]] = []
    with ChunkStore.open(store_dir, capacity=1 << 40) as store:
        for path in files:
            addresses = []
            with open(path, "rb") as handle:
                for _no, data in iter_chunks(handle):
                    prepared = prepare_chunk(keys, data)
                    store.put_many([PutItem(1, prepared.address, prepared.envelope, 2)])
                    addresses.append(prepared.address)
                    total += len(data)
            stat = path.stat()
            fid = file_id(
                1,
                str(path.relative_to(source)),
                stat.st_size,
                stat.st_mtime_ns,
                content_digest(addresses),
            )
            manifest.append((path, addresses, fid))
        stored = store.used_bytes
        elapsed = time.monotonic() - start
        print(
            f"stored {len(files)} files, {format_size(total)} as {format_size(stored)}"
            f" of encrypted chunks in {elapsed:.2f} s"
        )
        bad = 0
        for path, addresses, fid in manifest:
            rebuilt = b"".join(open_chunk(keys, a, store.get(1, a)) for a in addresses)
            if rebuilt != path.read_bytes():
                bad += 1
                print(f"MISMATCH {path}", file=sys.stderr)
            else:
                print(f"  ok {fid.hex()[:16]}  {path.relative_to(source)}")
        report = store.check()
        print(f"check: {report.verified} chunks verified, {len(report.bad)} bad")
    return 1 if bad or not report.clean else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default=".", type=Path)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"lanvault: {args.folder} is not a folder", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="lanvault-store-") as tmp:
        return run(args.folder.resolve(), Path(tmp))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
