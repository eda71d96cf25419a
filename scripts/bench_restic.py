#!/usr/bin/env python3
"""lanvault beside restic on this machine, interleaved in one run.

lanvault: 4 local nodes, degree 2. restic: the same data backed up to two local repositories
one after the other (its way of keeping two copies). For two data sets, 1 GiB of random data in
~30 files and 20,000 files of 1-16 KiB: the first backup, a re-run with nothing changed, and a
restore (each checked identical). Then reading a 1 GiB file from ``versions/`` of a mount when
only the peers hold it, against ``restic mount`` reading the same file from its snapshot (both
after the page cache is dropped). Prints each time beside restic's and the ratio.

Targets (issue 17): backups no slower than restic writing two repositories; restores and
versions/ reads at least half restic's speed (on this 2-core machine lanvault runs five
processes, restic one).

Needs restic (``apt-get install restic``) and root for dropping the page cache.

    scripts/bench_restic.py [--mib 1024] [--files 20000] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench_fs import drop_caches, read_file, wait_safe
from bench_many_files import restic_times, same_tree, timed, write_tree
from benchlib import ROOT, Mounted, Net, log

from node.restore_files import GROUP_FILES
from node.restore_target import flush_files

DEGREE = 2
MIB = 1 << 20


def write_big_files(root: Path, mib: int, seed: int = 7) -> int:
    """``mib`` MiB of random bytes in ~30 files of random sizes; returns the bytes written."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    left, n = mib * MIB, 0
    while left > 0:
        size = min(left, rng.randint(mib * MIB // 45, mib * MIB // 20) or left)
        with open(root / f"file{n:02d}.bin", "wb") as handle:
            for start in range(0, size, 8 * MIB):
                handle.write(os.urandom(min(8 * MIB, size - start)))
        left -= size
        n += 1
    return mib * MIB


def durable_floor(src: Path, work: Path) -> tuple[float, float]:
    """Seconds to write ``src``'s files anew (no network, no decryption) the way a restore
    must to keep its promise, and the way restic does: (durable, not synced).

    Durable is the restore's own discipline (``node/restore_files.py``): each file into a new
    temporary file, a group of them (``GROUP_FILES``) flushed together (one ``syncfs`` and an
    ``fdatasync`` each), then renamed, and the folders synced at the end. restic's restore syncs nothing: what it
    wrote may be lost to a power cut after it said it was done."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    contents = [p.read_bytes() for p in files]
    result = []
    for durable in (True, False):
        out = work / f"floor-{'durable' if durable else 'unsynced'}"
        os.sync()
        start = time.perf_counter()
        folders: dict[Path, int] = {}
        for first in range(0, len(files), GROUP_FILES):
            opened = []
            last = first + GROUP_FILES
            batch = zip(files[first:last], contents[first:last], strict=True)
            for path, data in batch:
                target = out / path.relative_to(src)
                if target.parent not in folders:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    folders[target.parent] = os.open(target.parent, os.O_RDONLY)
                temp = target.with_name(f".{target.name}.part")
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, data)
                opened.append((fd, temp, target))
            if durable:  # the restore's own flush: one syncfs, then an fdatasync each
                for error in flush_files([fd for fd, _temp, _target in opened]):
                    if error is not None:
                        raise error
            for fd, temp, target in opened:
                os.rename(temp, target)
                os.close(fd)
        for fd in folders.values():
            if durable:
                os.fsync(fd)
            os.close(fd)
        result.append(time.perf_counter() - start)
        shutil.rmtree(out)
    return result[0], result[1]


def lanvault_times(net: Net, src: Path, work: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    out["backup_s"] = timed(net.cli, 1, "backup", str(src), "--degree", str(DEGREE))
    out["rerun_s"] = timed(net.cli, 1, "backup", str(src), "--degree", str(DEGREE))
    target = work / f"lanvault-out-{src.name}"
    out["restore_s"] = timed(net.cli, 1, "restore", str(src), "--to", str(target))
    if not same_tree(src, target):
        raise SystemExit(f"bench_restic: lanvault's restore of {src.name} differs")
    shutil.rmtree(target)
    return out


def versions_read(net: Net, work: Path, mib: int) -> tuple[float, str, Path]:
    """Write a file of ``mib`` MiB through a mount, wait until it is safe, remove it, and time
    reading it back from versions/ (only the peers hold it then): (MB/s, its SHA-256, the
    real file's copy kept for restic)."""
    source, mnt = work / "msrc", work / "mnt"
    mount = Mounted(net.dirs[1], source, mnt, work / "mount.log")
    try:
        digest = hashlib.sha256()
        with open(mnt / "big.bin", "wb") as handle:
            for _ in range(mib):
                piece = os.urandom(MIB)
                handle.write(piece)
                digest.update(piece)
        kept = work / "restic-src" / "big.bin"  # the same bytes, for restic to back up
        kept.parent.mkdir()
        shutil.copyfile(source / "big.bin", kept)
        wait_safe(net, source.resolve() / "big.bin")
        snapshot = sorted(n for n in os.listdir(mnt / "versions") if n != "latest")[-1]
        os.unlink(mnt / "big.bin")
        drop_caches()
        seconds, got = read_file(mnt / "versions" / snapshot / "big.bin")
        if got != digest.hexdigest():
            raise SystemExit("bench_restic: versions/ returned other bytes")
        return mib * MIB / seconds / 1e6, got, kept
    finally:
        mount.stop()


def restic_mount_read(kept: Path, work: Path, digest: str) -> float:
    """Back ``kept`` up to a new restic repository, mount it, time reading the file back."""
    env = {**os.environ, "RESTIC_PASSWORD": "bench"}
    repo, mnt = work / "repo-v", work / "restic-mnt"
    for args in (["init"], ["backup", str(kept)]):
        subprocess.run(["restic", "-q", "--repo", str(repo), *args], check=True, env=env)
    mnt.mkdir()
    proc = subprocess.Popen(
        ["restic", "--repo", str(repo), "mount", str(mnt)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        inside = mnt / "snapshots" / "latest" / str(kept).lstrip("/")
        deadline = time.monotonic() + 60
        while not inside.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench_restic: restic mount did not show the snapshot")
            time.sleep(0.2)
        drop_caches()
        seconds, got = read_file(inside)
        if got != digest:
            raise SystemExit("bench_restic: restic mount returned other bytes")
        return kept.stat().st_size / seconds / 1e6
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="the big data set (default 1024)")
    parser.add_argument("--files", type=int, default=20_000, help="small files (default 20000)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not shutil.which("restic"):
        raise SystemExit("bench_restic: needs restic (apt-get install restic)")
    r: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lanvault-bench-restic-", dir=ROOT) as tmp:
        work = Path(tmp)
        big, small = work / "big", work / "small"
        log(f"writing {args.mib} MiB in ~30 files and {args.files} small files …")
        write_big_files(big, args.mib)
        write_tree(small, args.files)
        net = Net(work / "net", 4)
        try:
            net.start_all()
            for name, src in (("big", big), ("small", small)):
                log(f"lanvault, {name} …")
                r.update({f"{name}_{k}": v for k, v in lanvault_times(net, src, work).items()})
                log(f"restic, {name} …")
                theirs = restic_times(src, work / f"restic-{name}")
                r.update({f"{name}_{k}": v for k, v in theirs.items()})
            log("the durable floor: writing the small files as a restore must …")
            r["small_floor_durable_s"], r["small_floor_unsynced_s"] = durable_floor(small, work)
            log("versions/ from the peers, and restic mount …")
            r["versions_mb_s"], digest, kept = versions_read(net, work, args.mib)
            r["restic_mount_mb_s"] = restic_mount_read(kept, work, digest)
        finally:
            net.stop_all(15)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"lanvault (4 local nodes, degree {DEGREE}) beside restic (two repositories):")
    for name, what in (("big", f"{args.mib} MiB in ~30 files"), ("small", f"{args.files} files")):
        print(f"  {what}:")
        for step, reference, who in (
            ("backup", "restic_backup", "restic, 2 repositories"),
            ("rerun", "restic_rerun", "restic"),
            ("restore", "restic_restore", "restic"),
        ):
            mine_s, their_s = r[f"{name}_{step}_s"], r[f"{name}_{reference}_s"]
            print(
                f"    {step:8s} {mine_s:7.1f} s   {who}: {their_s:6.1f} s"
                f"  -> {their_s / mine_s:.2f}x restic's speed"
            )
    print(
        f"  writing the {args.files} files, no network: {r['small_floor_durable_s']:.1f} s"
        f" durably as a restore must (the floor for lanvault's restore:"
        f" {r['small_floor_durable_s'] / r['small_restore_s']:.2f}x of it reached),"
        f" {r['small_floor_unsynced_s']:.1f} s unsynced as restic writes"
    )
    print(
        f"  a {args.mib} MiB file from versions/ (only the peers hold it):"
        f" {r['versions_mb_s']:.0f} MB/s; restic mount: {r['restic_mount_mb_s']:.0f} MB/s"
        f" -> {r['versions_mb_s'] / r['restic_mount_mb_s']:.2f}x"
    )
    print("  targets: backups >= 1.0x restic's speed; restores and versions/ reads >= 0.5x")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())
