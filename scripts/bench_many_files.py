#!/usr/bin/env python3
"""Many small files: lanvault backup, a re-run with nothing changed, and a restore, beside restic.

Writes --files files of 1-16 KiB (random sizes and bytes, seeded) in folders of 200, starts 4
local node processes (the owner and 3 storage nodes) and times, at degree 2:
  * the first `lanvault backup` of the folder;
  * the same backup again with nothing changed (a scan: nothing is read or sent);
  * `lanvault restore` of the folder into a new one (checked identical);
and in the same run restic (if installed; `apt-get install restic`) on the same folder: a
backup to two local repositories one after the other (what degree 2 asks of lanvault), a
no-change re-run, and a restore. The targets: no slower than restic writing two repositories,
and a no-change re-run no slower than restic's. Each timed step starts after `sync`, so that no
step pays for the writeback of the one before.

Usage: scripts/bench_many_files.py [--files 20000] [--json]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, Net, log

DEGREE = 2


def write_tree(root: Path, count: int, seed: int = 1) -> int:
    rng = random.Random(seed)
    total = 0
    for n in range(count):
        folder = root / f"d{n // 200:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(1024, 16 * 1024)
        (folder / f"f{n:06d}.txt").write_bytes(rng.randbytes(size))
        total += size
    return total


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def timed(fn: object, *args: object) -> float:
    # Dirty pages left by the step before (the tree just written, the other tool's stores)
    # are flushed first: neither side pays for the other's writeback.
    os.sync()
    start = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - start


def restic_times(src: Path, work: Path) -> dict[str, float]:
    env = {**os.environ, "RESTIC_PASSWORD": "bench"}

    def restic(*args: str) -> None:
        subprocess.run(["restic", "-q", *args], check=True, env=env, capture_output=True)

    repos = [work / "repo-a", work / "repo-b"]
    for repo in repos:
        restic("init", "--repo", str(repo))
    out: dict[str, float] = {}
    out["restic_backup_s"] = sum(
        timed(restic, "backup", "--repo", str(repo), str(src)) for repo in repos
    )
    out["restic_rerun_s"] = timed(restic, "backup", "--repo", str(repos[0]), str(src))
    target = work / "restic-out"
    out["restic_restore_s"] = timed(
        restic, "restore", "latest", "--repo", str(repos[0]), "--target", str(target)
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, float] = {"files": args.files}
    with tempfile.TemporaryDirectory(prefix="lanvault-bench-files-", dir=ROOT) as tmp:
        root = Path(tmp)
        src = root / "src"
        log(f"writing {args.files} files …")
        results["mb"] = write_tree(src, args.files) / 1e6
        net = Net(root / "net", 4)
        try:
            log("starting 4 nodes …")
            net.start_all()
            log("first backup …")
            results["backup_s"] = timed(net.cli, 1, "backup", str(src), "--degree", str(DEGREE))
            log("backup again, nothing changed …")
            os.sync()
            start = time.perf_counter()
            rerun = net.json(1, "backup", str(src), "--degree", str(DEGREE))
            results["rerun_s"] = time.perf_counter() - start
            results["rerun_bytes_read"] = rerun["bytes_read"]
            log("restore …")
            out = root / "out"
            results["restore_s"] = timed(net.cli, 1, "restore", str(src), "--to", str(out))
            results["restore_identical"] = float(same_tree(src, out))
        finally:
            net.stop_all(15)
        if shutil.which("restic"):
            log("restic, same files …")
            results.update(restic_times(src, root))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r = results
    print(f"{args.files} files of 1-16 KiB ({r['mb']:.0f} MB), 4 local nodes, degree {DEGREE}:")
    rows = [("backup", "backup_s", "restic_backup_s", "restic, 2 repositories")]
    rows += [("no-change re-run", "rerun_s", "restic_rerun_s", "restic")]
    rows += [("restore", "restore_s", "restic_restore_s", "restic")]
    for name, mine, theirs, who in rows:
        line = f"  {name:17s} {r[mine]:7.1f} s ({args.files / r[mine]:7.0f} files/s)"
        if theirs in r:
            line += f"   {who}: {r[theirs]:.1f} s -> {r[mine] / r[theirs]:.1f}x its time"
        print(line)
    print(
        f"  re-run read {r['rerun_bytes_read']:.0f} bytes;"
        f" restore identical: {bool(r['restore_identical'])}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
