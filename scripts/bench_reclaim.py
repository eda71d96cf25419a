#!/usr/bin/env python3
"""Reclaim benchmark: a holder giving back space, beside the backup measured in the same run.

Starts an owner node and 4 storage nodes (real processes, TLS on loopback), backs up
--size-mib of random data at degree 2 (the ceiling: moving a chunk elsewhere is the same work
as sending it in a backup), then the fullest holder reclaims half its space and then all of
it. Reports the bytes freed per second and the copies it had to make first, checks that the
owner's chunks are all at their degree afterwards and that a restore is identical.

Usage: scripts/bench_reclaim.py [--size-mib 256] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import ROOT, Net, env, log

from lanvault.runtime import tune_allocator

DEGREE = 2


def reclaim(net: Net, node_id: int, target: int) -> dict[str, Any]:
    """``lanvault reclaim``'s report (exit status 1 says chunks were kept: reported too)."""
    command = [sys.executable, "-m", "lanvault.cli", "reclaim", str(target), "--json"]
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


def main() -> int:
    tune_allocator()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lanvault-bench-reclaim-", dir=ROOT) as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        size = args.size_mib * 1024 * 1024
        log(f"writing {args.size_mib} MiB of random data …")
        with open(src / "data.bin", "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(1024 * 1024))
        net = Net(root / "net", 5)
        try:
            log("starting 5 nodes (owner + 4 storage nodes) …")
            net.start()
            log("backup (the ceiling) …")
            start = time.perf_counter()
            net.cli(1, "backup", str(src), "--degree", str(DEGREE))
            results["backup_mb_s"] = size / (time.perf_counter() - start) / 1e6
            used = {n: net.cli(n, "state")["used_bytes"] for n in (2, 3, 4, 5)}
            holder = max(used, key=lambda n: used[n])
            results["holder_mb"] = used[holder] / 1e6
            for label, target in (("half", used[holder] // 2), ("all", 0)):
                log(f"node {holder} reclaims {label} of its space …")
                start = time.perf_counter()
                report = reclaim(net, holder, target)
                seconds = time.perf_counter() - start
                results[f"reclaim_{label}_seconds"] = seconds
                results[f"reclaim_{label}_freed_mb_s"] = report["freed_bytes"] / seconds / 1e6
                results[f"reclaim_{label}_copies"] = float(report["copied"])
                results[f"reclaim_{label}_kept"] = float(report["kept"])
            status = net.cli(1, "status")
            results["own_chunks_below_degree"] = float(status["own_chunks_below_degree"])
            log("restore …")
            net.cli(1, "restore", str(src), "--to", str(root / "out"))
            same = subprocess.run(
                ["cmp", str(src / "data.bin"), str(root / "out" / "data.bin")]
            ).returncode
            results["restore_identical"] = float(same == 0)
        finally:
            net.stop()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r = results
    print(f"\nreclaim benchmark: {args.size_mib} MiB at degree {DEGREE}, owner + 4 storage nodes")
    print(f"  backup (ceiling)          {r['backup_mb_s']:8.1f} MB/s")
    print(f"  holder's data             {r['holder_mb']:8.1f} MB")
    for label in ("half", "all"):
        share = r[f"reclaim_{label}_freed_mb_s"] / r["backup_mb_s"]
        print(
            f"  reclaim {label:<4} freed        {r[f'reclaim_{label}_freed_mb_s']:8.1f} MB/s"
            f" ({share:.2f}x the backup) in {r[f'reclaim_{label}_seconds']:.1f} s,"
            f" {r[f'reclaim_{label}_copies']:.0f} copies made, {r[f'reclaim_{label}_kept']:.0f} kept"
        )
    print(f"  owner's chunks below degree after: {r['own_chunks_below_degree']:.0f}")
    print(f"  restore identical: {bool(r['restore_identical'])}")
    ok = r["own_chunks_below_degree"] == 0 and r["restore_identical"] == 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
