#!/usr/bin/env python3
"""Daily work in the mount: many small files, beside the floor any Python FUSE file system
meets here (a minimal pyfuse3 passthrough, ``scripts/minimal_fuse.py``) and the disk itself.

Starts an owner node and 3 storage nodes (real processes) and, for each workload, in one run:
  * (a) creating --files files of 4 KiB (open, write, close each);
  * (b) ``cp -a`` of a real tree: packages of this project's own site-packages, about
    --tree-files files;
  * (c) ``git clone --no-hardlinks`` of a local repository of that tree;
each directly on the disk, through the minimal passthrough and through lanvault's mount (a
fresh mount of each for each workload). It prints files per second, lanvault's ratio to the
passthrough (the target is 0.9) and to the disk, and the FUSE requests per file each mount
served (what the next step, fewer requests per file, is measured by), the milliseconds per file
spent in lanvault's handlers, and the seconds until lanvault had every file recorded and at
degree 2 on its peers.

Usage: scripts/bench_smallfiles.py [--files 5000] [--tree-files 4000] [--burst-wait 15s] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib import ROOT, Mounted, Net, log


def make_tree(where: Path, files: int) -> int:
    """Whole packages of site-packages, in name order, until ``files`` files; returns them."""
    site = Path(sysconfig.get_paths()["purelib"])
    where.mkdir(parents=True)
    count = 0
    for package in sorted(site.iterdir()):
        if count >= files:
            break
        if package.name.startswith((".", "_")) or not package.is_dir():
            continue
        shutil.copytree(package, where / package.name, symlinks=True)
        count += sum(len(names) for _d, _s, names in os.walk(where / package.name))
    return count


def make_repo(tree: Path, repo: Path) -> int:
    """A git repository holding ``tree``, one commit; returns the files a checkout has."""
    shutil.copytree(tree, repo, symlinks=True)
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for step in (["init", "-q"], ["add", "-A", "-f"], ["commit", "-q", "-m", "tree"]):
        subprocess.run([*git, *step], capture_output=True, check=True)
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files"], capture_output=True, text=True, check=True
    )
    return len(listed.stdout.splitlines())


class MinimalMount:
    def __init__(self, source: Path, mountpoint: Path, counts: Path) -> None:
        source.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint, self.counts = mountpoint, counts
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "minimal_fuse.py"), str(source),
             str(mountpoint), str(counts)],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the minimal passthrough did not mount")
            time.sleep(0.05)

    def stop(self) -> dict[str, int]:
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        self.proc.wait(60)
        counts: dict[str, int] = json.loads(self.counts.read_text())
        return counts


def timed(job: Callable[[], None]) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    job()
    return time.perf_counter() - start


def until_safe(net: Net, mount: Mounted) -> float:
    """Seconds until everything written is recorded (an unmount records what still waits for
    its burst to pause, and the mount's process ends after) and every version is at its degree
    on the peers. Not by opening versions/: its wait would count among the mount's requests."""
    start = time.perf_counter()
    mount.stop()
    while net.status(1)["pending_backlog"]:
        if time.perf_counter() - start > 900:
            raise SystemExit("the files were not safe after 900 s")
        time.sleep(0.1)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--tree-files", type=int, default=4000)
    parser.add_argument(
        "--burst-wait",
        default="",
        help="the mount's --burst-wait (default: the configured one, 15s): how long a closed"
        " file waits at most for the burst to pause before its version is cut",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("fusermount3") is None or shutil.which("git") is None:
        raise SystemExit("needs fusermount3 (fuse3) and git")
    body = os.urandom(4096)
    results: dict[str, Any] = {"workloads": {}}
    with tempfile.TemporaryDirectory(prefix="bench_smallfiles-") as tmp:
        root = Path(tmp)
        log("preparing the tree and the repository …")
        tree_files = make_tree(root / "tree", args.tree_files)
        repo_files = make_repo(root / "tree", root / "repo")

        def create(target: Path) -> None:
            target.mkdir()
            for i in range(args.files):
                with open(target / f"f{i:05}", "wb") as handle:
                    handle.write(body)

        def copy(target: Path) -> None:
            subprocess.run(["cp", "-a", str(root / "tree"), str(target)], check=True)

        def clone(target: Path) -> None:
            subprocess.run(
                ["git", "clone", "-q", "--no-hardlinks", str(root / "repo"), str(target)],
                check=True,
            )

        workloads = [
            ("create 4 KiB files", create, args.files),
            ("cp -a site-packages", copy, tree_files),
            ("git clone", clone, repo_files),
        ]
        log("starting 4 nodes …")
        net = Net(root / "net", 4)
        try:
            net.start_all()
            for number, (name, job, files) in enumerate(workloads):
                log(f"{name}: {files} files, directly, minimal passthrough, lanvault …")
                row: dict[str, Any] = {"files": files}
                row["direct_s"] = timed(functools.partial(job, root / f"direct{number}"))
                minimal = MinimalMount(
                    root / f"msrc{number}", root / f"mmnt{number}", root / f"counts{number}.json"
                )
                row["minimal_s"] = timed(functools.partial(job, minimal.mountpoint / "w"))
                row["minimal_requests"] = minimal.stop()
                mount = Mounted(
                    net.nodes[1].state,
                    root / f"lsrc{number}",
                    root / f"lmnt{number}",
                    root / "mount.log",
                    *(["--burst-wait", args.burst_wait] if args.burst_wait else []),
                )
                row["lanvault_s"] = timed(functools.partial(job, mount.mountpoint / "w"))
                row["lanvault_safe_s"] = row["lanvault_s"] + until_safe(net, mount)
                row["lanvault_requests"] = mount.requests()
                row["lanvault_request_s"] = mount.request_seconds()
                results["workloads"][name] = row
        finally:
            net.stop_all(15)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("files per second (and lanvault's ratio to the minimal passthrough, the target 0.9,")
    print("and to the disk); FUSE requests per file, lanvault / minimal:")
    for name, row in results["workloads"].items():
        n = row["files"]
        rate = {k: n / row[f"{k}_s"] for k in ("direct", "minimal", "lanvault")}
        per_file = {k: sum(row[f"{k}_requests"].values()) / n for k in ("minimal", "lanvault")}
        print(
            f"  {name:<20} {n:>6} files: disk {rate['direct']:>7.0f}, minimal"
            f" {rate['minimal']:>6.0f}, lanvault {rate['lanvault']:>6.0f}"
            f" ({rate['lanvault'] / rate['minimal']:.2f}x minimal,"
            f" {rate['lanvault'] / rate['direct']:.3f}x disk);"
            f" requests/file {per_file['lanvault']:.1f} / {per_file['minimal']:.1f}"
        )
        print(
            f"      lanvault: all {n} files recorded and at degree 2 on the peers"
            f" {row['lanvault_safe_s']:.1f} s after the workload began"
            f" (the workload itself {row['lanvault_s']:.1f} s)"
        )
        top = sorted(row["lanvault_requests"].items(), key=lambda kv: -kv[1])[:6]
        print("      lanvault's: " + ", ".join(f"{k} {v / n:.2f}" for k, v in top))
        spent = sorted(row["lanvault_request_s"].items(), key=lambda kv: -kv[1])[:6]
        print(
            "      ms per file in lanvault's handlers: "
            + ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in spent)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
