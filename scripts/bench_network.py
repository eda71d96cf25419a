#!/usr/bin/env python3
"""Network benchmark: backup, restore and repair on local node processes, beside the ceilings.

Starts an owner node and 4 storage nodes (real processes, TLS on loopback), then in one run:
  * backup of --size-mib of random data at degree 2, and its restore (MB/s);
  * the ceilings measured in the same run: a plain trio TCP sender/receiver of 64,000-byte
    frames (loopback), the chunk pipeline on 2 threads, and durable disk writes (4 MiB appends +
    fdatasync); the backup ceiling is min(pipeline, loopback / degree, disk / (degree + 1));
  * repair: the storage node holding the most data is killed (-9); the seconds from it being
    declared gone until every chunk is back at degree 2;
  * peak RSS of every node process;
  * the CPU floor: each step a backup or restore cannot skip (hashing, sealing, TLS, TCP,
    checksums, page-cache copies) timed on its own, summed per MB; the cores divided by it are
    what no implementation can pass on this machine (the ceilings above ignore the CPU).

Usage: scripts/bench_network.py [--size-mib 1024] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import (
    GONE_AFTER,
    ROOT,
    Net,
    cpu_floor,
    cpu_seconds,
    disk_ceiling,
    log,
    loopback_ceiling,
    peak_rss_mb,
    pipeline_ceiling,
    write_random,
)

from lanvault.runtime import tune_allocator

DEGREE = 2


def main() -> int:
    tune_allocator()  # as the daemon does (see lanvault/runtime.py)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lanvault-bench-net-", dir=ROOT) as tmp:
        root = Path(tmp)
        log("measuring ceilings …")
        results["loopback_mb_s"] = loopback_ceiling(512 * 1024 * 1024)
        results["pipeline_mb_s"] = pipeline_ceiling(256)
        results["opening_mb_s"] = pipeline_ceiling(256, opening=True)
        results["disk_mb_s"] = disk_ceiling(root, 512)
        results["backup_ceiling_mb_s"] = min(
            results["pipeline_mb_s"],
            results["loopback_mb_s"] / DEGREE,
            results["disk_mb_s"] / (DEGREE + 1),
        )
        results["restore_ceiling_mb_s"] = min(results["loopback_mb_s"], results["disk_mb_s"])
        floor = cpu_floor(root, DEGREE)
        results.update({f"floor_{step}_ms_per_mb": ms for step, ms in floor.items()})

        src = root / "src"
        src.mkdir()
        size = args.size_mib * 1024 * 1024
        write_random(src / "data.bin", args.size_mib)
        net = Net(root / "net", 5)
        try:
            log("starting 5 nodes (owner + 4 storage nodes) …")
            net.start_all()
            pids = [proc.pid for proc in net.procs.values()]

            def cpu_now() -> float:  # every node, and the CLI processes run meanwhile
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                return cpu_seconds(pids) + children.ru_utime + children.ru_stime

            log("backup …")
            start, cpu = time.perf_counter(), cpu_now()
            net.json(1, "backup", str(src), "--degree", str(DEGREE))
            results["backup_mb_s"] = size / (time.perf_counter() - start) / 1e6
            results["backup_cpu_ms_per_mb"] = (cpu_now() - cpu) / (size / 1e6) * 1000
            log("restore …")
            start, cpu = time.perf_counter(), cpu_now()
            net.json(1, "restore", str(src), "--to", str(root / "out"))
            results["restore_mb_s"] = size / (time.perf_counter() - start) / 1e6
            results["restore_cpu_ms_per_mb"] = (cpu_now() - cpu) / (size / 1e6) * 1000
            same = (
                subprocess.run(
                    ["cmp", str(src / "data.bin"), str(root / "out" / "data.bin")]
                ).returncode
                == 0
            )
            results["restore_identical"] = float(same)
            (root / "out" / "data.bin").unlink()

            used = {n: net.json(n, "state")["used_bytes"] for n in (2, 3, 4, 5)}
            victim = max(used, key=lambda n: used[n])
            results["repaired_mb"] = used[victim] / 1e6
            log(f"killing node {victim} ({used[victim] / 1e6:.0f} MB) …")
            for node_id, proc in net.procs.items():
                results[f"rss_node{node_id}_mb"] = peak_rss_mb(proc.pid)
            net.procs[victim].send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            while True:
                time.sleep(1)
                status = net.json(1, "status")
                if (
                    time.perf_counter() - killed > GONE_AFTER
                    and status["own_chunks_below_degree"] == 0
                ):
                    break
                if time.perf_counter() - killed > 600:
                    raise SystemExit("repair did not finish in 10 minutes")
            results["repair_seconds_after_gone"] = time.perf_counter() - killed - GONE_AFTER
            for node_id, proc in net.procs.items():
                if node_id != victim:
                    results[f"rss_node{node_id}_mb"] = peak_rss_mb(proc.pid)
        finally:
            net.stop_all(15)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r = results
    print(
        f"\nnetwork benchmark: {args.size_mib} MiB, degree {DEGREE}, owner + 4 storage nodes on loopback (TLS)"
    )
    print(
        f"  ceilings: loopback {r['loopback_mb_s']:.0f} MB/s, chunk pipeline (2 threads) {r['pipeline_mb_s']:.0f} MB/s,"
        f" durable disk {r['disk_mb_s']:.0f} MB/s; opening chunks (2 threads, what a restore must"
        f" do besides moving them) {r['opening_mb_s']:.0f} MB/s"
    )
    print(
        f"  backup   {r['backup_mb_s']:7.1f} MB/s   ceiling {r['backup_ceiling_mb_s']:.0f} MB/s"
        f" -> {r['backup_mb_s'] / r['backup_ceiling_mb_s']:.2f}x (target >= 0.5x)"
    )
    print(
        f"  restore  {r['restore_mb_s']:7.1f} MB/s   ceiling {r['restore_ceiling_mb_s']:.0f} MB/s"
        f" -> {r['restore_mb_s'] / r['restore_ceiling_mb_s']:.2f}x (target >= 0.5x); identical: {bool(r['restore_identical'])}"
    )
    cores = os.cpu_count() or 1
    for name in ("backup", "restore"):
        ms = r[f"{name}_cpu_ms_per_mb"]
        floor_ms = r[f"floor_{name}_ms_per_mb"]
        target = 0.5 * r[f"{name}_ceiling_mb_s"]
        print(
            f"  {name:8s} CPU of all processes: {ms:.1f} ms per MB;"
            f" at that cost {cores} cores allow {cores * 1000 / ms:.0f} MB/s."
            f" The steps it cannot skip cost {floor_ms:.1f} ms per MB here: no implementation"
            f" passes {cores * 1000 / floor_ms:.0f} MB/s on {cores} cores (target {target:.0f})"
        )
    steps = ("read", "address", "seal", "tls", "tcp", "checksum", "write", "open")
    print(
        "  those steps, ms of CPU per MB (one thread, TLS and TCP both ends): "
        + ", ".join(f"{step} {r[f'floor_{step}_ms_per_mb']:.2f}" for step in steps)
    )
    print(
        f"  repair   {r['repaired_mb']:.0f} MB held by the killed node back at degree {r['repair_seconds_after_gone']:.1f} s"
        f" after it was declared gone ({r['repaired_mb'] / max(r['repair_seconds_after_gone'], 0.1):.0f} MB/s;"
        f" target: 256 MiB within 30 s)"
    )
    rss = [v for k, v in r.items() if k.startswith("rss_")]
    print(
        f"  peak RSS per node: max {max(rss):.0f} MB, median {statistics.median(rss):.0f} MB (target <= 150 MB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
