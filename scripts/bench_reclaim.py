#!/usr/bin/env python3
"""Reclaim benchmark: a holder giving back space, beside the backup measured in the same run.

Starts an owner node and 4 storage nodes (real processes, TLS on loopback). Each of --runs
rounds backs up --size-mib of new random data at degree 2 (the ceiling: moving a chunk
elsewhere is the same work as sending it in a backup), then the fullest holder reclaims half
of what it holds and lends its whole quota again. Prints the medians of the rounds: bytes
freed per second and the copies made first. Then one holder reclaims all of its space; the
owner's chunks must all be at their degree afterwards and a restore of everything identical.

Usage: scripts/bench_reclaim.py [--size-mib 128] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import ROOT, Net, env, log, write_random

from lanvault.runtime import tune_allocator

DEGREE = 2
QUOTA = "20GB"  # what Net's nodes lend


def reclaim(net: Net, node_id: int, target: str) -> dict[str, Any]:
    """``lanvault reclaim``'s report (exit status 1 says chunks were kept: reported too)."""
    command = [sys.executable, "-m", "lanvault.cli", "reclaim", target, "--json"]
    out = subprocess.run(
        [*command, "--dir", str(net.dirs[node_id])],
        capture_output=True,
        text=True,
        env=env(),
        cwd=ROOT,
    )
    if out.returncode not in (0, 1) or not out.stdout.strip():
        raise SystemExit(f"lanvault reclaim: {out.stderr.strip()}")
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def fullest(net: Net) -> tuple[int, int]:
    used = {n: int(net.json(n, "state")["used_bytes"]) for n in (2, 3, 4, 5)}
    holder = max(used, key=lambda n: used[n])
    return holder, used[holder]


def main() -> int:
    tune_allocator()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    backups: list[float] = []
    freed: list[float] = []
    copies: list[float] = []
    kept = 0
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lanvault-bench-reclaim-", dir=ROOT) as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        size = args.size_mib * 1024 * 1024
        net = Net(root / "net", 5)
        try:
            log("starting 5 nodes (owner + 4 storage nodes) …")
            net.start_all()
            for run in range(args.runs):
                data = src / f"data{run}.bin"
                write_random(data, args.size_mib)
                log(f"round {run + 1}: backup (the ceiling) …")
                start = time.perf_counter()
                net.json(1, "backup", str(data), "--degree", str(DEGREE))
                backups.append(size / (time.perf_counter() - start) / 1e6)
                holder, used = fullest(net)
                log(f"round {run + 1}: node {holder} reclaims half of its {used / 1e6:.0f} MB …")
                start = time.perf_counter()
                report = reclaim(net, holder, str(used // 2))
                freed.append(report["freed_bytes"] / (time.perf_counter() - start) / 1e6)
                copies.append(float(report["copied"]))
                kept += int(report["kept"])
                reclaim(net, holder, QUOTA)  # lends its whole quota again
            holder, used = fullest(net)
            log(f"node {holder} reclaims all of its {used / 1e6:.0f} MB …")
            start = time.perf_counter()
            report = reclaim(net, holder, "0")
            results["reclaim_all_mb"] = used / 1e6
            results["reclaim_all_freed_mb_s"] = (
                report["freed_bytes"] / (time.perf_counter() - start) / 1e6
            )
            kept += int(report["kept"])
            status = net.json(1, "status")
            results["own_chunks_below_degree"] = float(status["own_chunks_below_degree"])
            log("restore …")
            net.json(1, "restore", str(src), "--to", str(root / "out"))
            same = all(
                subprocess.run(["cmp", str(f), str(root / "out" / f.name)]).returncode == 0
                for f in sorted(src.iterdir())
            )
            results["restore_identical"] = float(same)
        finally:
            net.stop_all(15)
    results["backup_mb_s"] = statistics.median(backups)
    results["reclaim_half_freed_mb_s"] = statistics.median(freed)
    results["reclaim_half_copies"] = statistics.median(copies)
    results["kept"] = float(kept)

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        r = results
        print(
            f"\nreclaim benchmark: {args.size_mib} MiB x {args.runs} rounds at degree {DEGREE},"
            " owner + 4 storage nodes (medians)"
        )
        print(f"  backup (the ceiling)       {r['backup_mb_s']:8.1f} MB/s")
        print(
            f"  reclaim half, freed        {r['reclaim_half_freed_mb_s']:8.1f} MB/s"
            f" ({r['reclaim_half_freed_mb_s'] / r['backup_mb_s']:.2f}x the backup),"
            f" {r['reclaim_half_copies']:.0f} copies made first"
        )
        print(
            f"  reclaim all ({r['reclaim_all_mb']:.0f} MB), freed {r['reclaim_all_freed_mb_s']:8.1f} MB/s"
        )
        print(f"  chunks kept over the quota: {r['kept']:.0f}")
        print(f"  owner's chunks below degree after: {r['own_chunks_below_degree']:.0f}")
        print(f"  restore identical: {bool(r['restore_identical'])}")
    ok = results["own_chunks_below_degree"] == 0 and results["restore_identical"] == 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
