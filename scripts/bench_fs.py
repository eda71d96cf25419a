#!/usr/bin/env python3
"""Mount benchmark: the mounted backup folder beside SOURCE itself, and how fast it is safe.

Starts an owner node and 3 storage nodes (real processes, TLS on loopback) and mounts a folder
of the owner, then in one run:
  * sequential write (1 MiB writes, then close) of --size-mib through the mount and on SOURCE
    directly, --rounds times each from the same state (medians; page cache dropped before each
    write), and a read of it (that file's cached pages evicted first, as fio does);
  * seconds from close() of that file to every chunk at degree 2 on the peers, beside the
    ceiling min(chunk pipeline, loopback / 2, durable disk / 3) measured in the same run;
  * after rewriting 1 MiB in the middle: bytes read by the mount and the node, bytes sent to
    the peers, and seconds to safety;
  * creating --files files of 4 KiB through the mount and directly (files/s), and the seconds
    until all of them are safe;
  * reading the big file back from versions/ once only the peers have it (MB/s, median of
    --rounds reads);
  * peak RSS of the mount and of every node.

Usage: scripts/bench_fs.py [--size-mib 1024] [--files 10000] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    ROOT,
    Mounted,
    Net,
    disk_ceiling,
    log,
    loopback_ceiling,
    peak_rss_mb,
    pipeline_ceiling,
)

from lanvault.client import call
from lanvault.runtime import tune_allocator

DEGREE = 2
MIB = 1024 * 1024


def drop_caches() -> bool:
    """Make the next read come from the disk (needs root); False if not possible."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def evict(*paths: Path) -> bool:
    """Make the next read of ``paths`` come from the disk, as fio's ``invalidate`` does.

    Only these files' cached pages go (written back first, then POSIX_FADV_DONTNEED; for a
    file in the mount that drops the mount's page cache of it too): dropping every cache would
    also make the catalog's pages come from the disk at the next change, which is not what a
    running system sees (it measured 0.1 to 4.9 MiB read at the 1 MiB change across runs).
    """
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def write_file(path: Path, size_mib: int, block: bytes) -> tuple[float, str]:
    """Write ``size_mib`` MiB in 1 MiB writes, close; seconds and the content's SHA-256."""
    digest = hashlib.sha256()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i in range(size_mib):
        piece = block[i % 7 :] + block[: i % 7]  # every MiB different, no dedup
        os.write(fd, piece)
        digest.update(piece)
    os.close(fd)
    return time.perf_counter() - start, digest.hexdigest()


def read_file(path: Path) -> tuple[float, str]:
    digest = hashlib.sha256()
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while data := handle.read(MIB):
            digest.update(data)
    return time.perf_counter() - start, digest.hexdigest()


def io_counters(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, value = line.split(":")
        out[key] = int(value)
    return out


def wait_safe(net: Net, path: Path, not_before: float = 0.0, timeout: float = 900) -> float:
    """Seconds until the newest version of ``path`` is complete (every chunk at degree)."""
    start = time.perf_counter()
    request = {"op": "versions", "path": str(path)}
    while True:
        # Straight to the control socket: a CLI process per poll would cost more than what
        # is measured.
        versions = []
        for event in call(net.dirs[1] / "control.sock", request, timeout=30):
            if event.get("event") == "result" and event.get("ok"):
                versions = event["data"]["versions"]
        if versions and versions[-1]["complete"] and versions[-1]["time"] >= not_before:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"{path} not safe after {timeout} s")
        time.sleep(0.02)


def received(net: Net) -> int:
    return sum(int(net.status(n)["bytes_received"]) for n in net.dirs if n != 1)


def main() -> int:
    tune_allocator()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="write rounds (medians)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r: dict[str, Any] = {"size_mib": args.size_mib, "files": args.files}
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="lanvault-bench-fs-", dir=ROOT) as tmp:
        root = Path(tmp)
        log("measuring ceilings …")
        r["loopback_mb_s"] = loopback_ceiling(512 * MIB)
        r["pipeline_mb_s"] = pipeline_ceiling(256)
        r["disk_mb_s"] = disk_ceiling(root, 512)
        r["safety_ceiling_mb_s"] = min(
            r["pipeline_mb_s"], r["loopback_mb_s"] / DEGREE, r["disk_mb_s"] / (DEGREE + 1)
        )
        direct = root / "direct"
        direct.mkdir()
        net = Net(root / "net", 4)
        mount: Mounted | None = None
        try:
            log("starting 4 nodes (owner + 3 storage nodes) and the mount …")
            net.start_all()
            source, mnt = root / "src", root / "mnt"
            mount = Mounted(net.dirs[1], source, mnt, root / "mount.log")
            big = mnt / "big.bin"

            # Each write starts from the same state (dirty pages written back, caches
            # dropped), and each version written through the mount is safe before the next
            # round: a write never competes with the previous one's writeback or backup.
            direct_rates, mount_rates, safe_times = [], [], []
            for round_no in range(args.rounds):
                log(
                    f"sequential write of {args.size_mib} MiB, directly and through the mount"
                    f" (round {round_no + 1} of {args.rounds}) …"
                )
                block = os.urandom(MIB)  # new content each round: nothing is already held
                drop_caches()
                seconds, _ = write_file(direct / "big.bin", args.size_mib, block)
                direct_rates.append(size / seconds / 1e6)
                drop_caches()
                seconds, content = write_file(big, args.size_mib, block)
                closed = time.time()
                mount_rates.append(size / seconds / 1e6)
                safe_times.append(wait_safe(net, source.resolve() / "big.bin", not_before=closed))
            r["write_direct_mb_s"] = statistics.median(direct_rates)
            r["write_mount_mb_s"] = statistics.median(mount_rates)
            r["write_ratio"] = statistics.median(
                m / d for m, d in zip(mount_rates, direct_rates, strict=True)
            )
            r["safe_after_close_s"] = statistics.median(safe_times)
            r["safe_mb_s"] = size / r["safe_after_close_s"] / 1e6

            log("sequential read …")
            r["reads_cold"] = evict(direct / "big.bin")
            seconds, _ = read_file(direct / "big.bin")
            r["read_direct_mb_s"] = size / seconds / 1e6
            evict(big, source / "big.bin")
            seconds, got = read_file(big)
            r["read_mount_mb_s"] = size / seconds / 1e6
            assert got == content, "the mount returned other bytes"

            log("rewriting 1 MiB in the middle …")
            daemon_pid = net.procs[1].pid
            before_mount, before_node = io_counters(mount.proc.pid), io_counters(daemon_pid)
            before_sent = received(net)
            patch = os.urandom(MIB)
            with open(big, "r+b") as handle:
                handle.seek(size // 2 + 12_345)
                handle.write(patch)
            changed = time.time()
            r["change_safe_s"] = wait_safe(net, source.resolve() / "big.bin", not_before=changed)
            after_mount, after_node = io_counters(mount.proc.pid), io_counters(daemon_pid)
            # The mount's reads include the 1 MiB of written data it received from FUSE.
            r["change_read_mount_mib"] = (after_mount["rchar"] - before_mount["rchar"]) / MIB
            r["change_read_node_mib"] = (after_node["rchar"] - before_node["rchar"]) / MIB
            r["change_disk_reads_mib"] = (
                after_mount["read_bytes"]
                - before_mount["read_bytes"]
                + after_node["read_bytes"]
                - before_node["read_bytes"]
            ) / MIB
            r["change_sent_mib"] = (received(net) - before_sent) / MIB
            _, content = read_file(big)

            log(f"creating {args.files} files of 4 KiB, directly and through the mount …")
            small = os.urandom(4096)
            for folder, key in ((direct / "many", "direct"), (mnt / "many", "mount")):
                folder.mkdir()
                start = time.perf_counter()
                for i in range(args.files):
                    (folder / f"f{i:05}").write_bytes(small[i % 97 :] + small[: i % 97])
                r[f"create_{key}_files_s"] = args.files / (time.perf_counter() - start)
            created = time.perf_counter()
            last_small = source.resolve() / "many" / f"f{args.files - 1:05}"
            wait_safe(net, last_small)
            while net.status(1)["pending_backlog"]:
                time.sleep(0.2)
                if time.perf_counter() - created > 900:
                    raise SystemExit("small files not safe after 900 s")
            r["create_safe_s"] = time.perf_counter() - created

            log("listing versions/ …")
            start = time.perf_counter()
            names = os.listdir(mnt / "versions")
            r["list_snapshots_s"] = time.perf_counter() - start
            r["snapshots"] = len(names) - 1
            start = time.perf_counter()
            listed = len(os.listdir(mnt / "versions" / "latest" / "many"))
            r["list_files_s"] = time.perf_counter() - start
            assert listed == args.files

            log("reading the big file from versions/ with only the peers holding it …")
            snapshot = sorted(n for n in os.listdir(mnt / "versions") if n != "latest")[-1]
            os.unlink(big)
            old = mnt / "versions" / snapshot / "big.bin"
            version_rates = []
            for _round in range(args.rounds):
                drop_caches()  # the kernel keeps a version's pages; the mount only 32 MB
                seconds, got = read_file(old)
                version_rates.append(size / seconds / 1e6)
                assert got == content, "versions/ returned other bytes"
            r["versions_read_mb_s"] = statistics.median(version_rates)

            r["rss_mount_mb"] = peak_rss_mb(mount.proc.pid)
            for node_id, proc in net.procs.items():
                r[f"rss_node{node_id}_mb"] = peak_rss_mb(proc.pid)
        finally:
            if mount is not None:
                mount.stop()
            net.stop_all(15)

    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    cold = "cold cache" if r["reads_cold"] else "warm cache"
    print(f"\nmount benchmark: {args.size_mib} MiB file, degree {DEGREE}, owner + 3 storage nodes")
    print(
        f"  ceilings: durable disk {r['disk_mb_s']:.0f} MB/s, chunk pipeline {r['pipeline_mb_s']:.0f}"
        f" MB/s, loopback {r['loopback_mb_s']:.0f} MB/s -> to safety {r['safety_ceiling_mb_s']:.0f} MB/s"
    )
    print(
        f"  write    mount {r['write_mount_mb_s']:6.0f} MB/s   direct {r['write_direct_mb_s']:6.0f} MB/s"
        f" -> {r['write_ratio']:.2f}x (target >= 0.6x; medians of {args.rounds} rounds)"
    )
    print(
        f"  read     mount {r['read_mount_mb_s']:6.0f} MB/s   direct {r['read_direct_mb_s']:6.0f} MB/s"
        f" ({cold}) -> {r['read_mount_mb_s'] / r['read_direct_mb_s']:.2f}x"
    )
    print(
        f"  safe     {r['safe_after_close_s']:.1f} s from close() to degree {DEGREE}"
        f" ({r['safe_mb_s']:.0f} MB/s; ceiling {r['safety_ceiling_mb_s']:.0f} MB/s"
        f" -> {r['safe_mb_s'] / r['safety_ceiling_mb_s']:.2f}x)"
    )
    print(
        f"  1 MiB rewritten: safe in {r['change_safe_s']:.2f} s (target < 1 s); read by the mount"
        f" {r['change_read_mount_mib']:.1f} MiB (incl. the 1 MiB written), by the node"
        f" {r['change_read_node_mib']:.1f} MiB, from the disk {r['change_disk_reads_mib']:.1f} MiB"
        f" (target <= 4 MiB); sent {r['change_sent_mib']:.1f} MiB"
    )
    print(
        f"  {args.files} files of 4 KiB: mount {r['create_mount_files_s']:.0f} files/s, direct"
        f" {r['create_direct_files_s']:.0f} files/s; all safe {r['create_safe_s']:.1f} s later"
    )
    print(
        f"  versions/ read from the peers: {r['versions_read_mb_s']:.0f} MB/s (target >= 100 MB/s; median of {args.rounds} reads);"
        f" listing {r['snapshots']} snapshots {r['list_snapshots_s'] * 1e3:.0f} ms, a folder of"
        f" {args.files} files in one {r['list_files_s'] * 1e3:.0f} ms"
    )
    rss = {k: v for k, v in r.items() if k.startswith("rss_")}
    print("  peak RSS: " + ", ".join(f"{k[4:-3]} {v:.0f} MB" for k, v in rss.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
