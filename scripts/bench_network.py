#!/usr/bin/env python3
"""Network benchmark: backup, restore and repair on local node processes, beside the ceilings.

Starts an owner node and 4 storage nodes (real processes, TLS on loopback), then in one run:
  * backup of --size-mib of random data at degree 2, and its restore (MB/s);
  * the ceilings measured in the same run: a plain trio TCP sender/receiver of 64,000-byte
    frames (loopback), the chunk pipeline on 2 threads, and durable disk writes (4 MiB appends +
    fdatasync); the backup ceiling is min(pipeline, loopback / degree, disk / (degree + 1));
  * repair: the storage node holding the most data is killed (-9); the seconds from it being
    declared gone until every chunk is back at degree 2;
  * peak RSS of every node process.

Usage: scripts/bench_network.py [--size-mib 1024] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from chunkstore.chunking import CHUNK_SIZE
from chunkstore.keys import KeyRing, new_master_key
from chunkstore.pipeline import prepare_chunks
from lanvault.runtime import tune_allocator

ROOT = Path(__file__).resolve().parents[1]
GONE_AFTER = 5.0
DEGREE = 2


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def env() -> dict[str, str]:
    return {**os.environ, "LANVAULT_PASSPHRASE": "bench", "LANVAULT_TEST_WEAKEN_KDF": "1"}


def lanvault(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "lanvault.cli", *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"lanvault {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- ceilings ------------------------------------------------------------------------------


async def _loopback(total: int) -> float:
    frame = os.urandom(CHUNK_SIZE)
    done = trio.Event()
    received = 0

    async def receiver(stream: trio.SocketStream) -> None:
        nonlocal received
        while received < total:
            data = await stream.receive_some(1 << 20)
            if not data:
                break
            received += len(data)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, receiver, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = time.perf_counter()
        sent = 0
        while sent < total:
            await stream.send_all(len(frame).to_bytes(4, "big") + frame)
            sent += len(frame) + 4
        await done.wait()
        elapsed = time.perf_counter() - start
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return total / elapsed / 1e6


def loopback_ceiling(total: int) -> float:
    return statistics.median(trio.run(_loopback, total) for _ in range(3))


def pipeline_ceiling(mib: int) -> float:
    keys = KeyRing.from_master(new_master_key())
    chunks = [os.urandom(CHUNK_SIZE) for _ in range(mib * 1024 * 1024 // CHUNK_SIZE)]

    async def run() -> float:
        limiter = trio.CapacityLimiter(2)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(0, len(chunks), 16):
                nursery.start_soon(
                    lambda b=chunks[i : i + 16]: trio.to_thread.run_sync(
                        prepare_chunks, keys, b, limiter=limiter
                    )
                )
        return len(chunks) * CHUNK_SIZE / (time.perf_counter() - start) / 1e6

    return statistics.median(trio.run(run) for _ in range(3))


def disk_ceiling(folder: Path, mib: int) -> float:
    block = os.urandom(4 << 20)
    rates = []
    for r in range(3):
        path = folder / f"disk{r}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        start = time.perf_counter()
        for _ in range(mib // 4):
            os.write(fd, block)
            os.fdatasync(fd)
        rates.append(mib * 1024 * 1024 / (time.perf_counter() - start) / 1e6)
        os.close(fd)
        path.unlink()
    return statistics.median(rates)


# -- the network ---------------------------------------------------------------------------


class Net:
    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        self.dirs: dict[int, Path] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        join = ""
        first = ""
        for node_id in range(1, count + 1):
            state = root / f"n{node_id}"
            address = f"127.0.0.1:{free_port()}"
            args = ["init", "--dir", str(state), "--id", str(node_id), "--listen", address]
            args += ["--host-id", f"computer-{node_id}", "--json"]
            if join:
                args += ["--join", join, "--peer", first]
            out = json.loads(lanvault(*args))
            join, first = join or out["join_code"], first or address
            self.dirs[node_id] = state

    def start(self) -> None:
        for node_id, state in self.dirs.items():
            with open(self.root / f"n{node_id}.log", "ab") as handle:
                self.procs[node_id] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "lanvault.cli",
                        "node",
                        "--dir",
                        str(state),
                        "--quota",
                        "20GB",
                        "--gone-after",
                        f"{GONE_AFTER}s",
                        "--heartbeat",
                        "0.5",
                        "--repair-interval",
                        "1",
                        "--no-discovery",
                    ],
                    cwd=ROOT,
                    env=env(),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                )
        for state in self.dirs.values():
            while not (state / "control.sock").exists():
                time.sleep(0.05)
        while True:
            status = json.loads(lanvault("status", "--json", "--dir", str(self.dirs[1])))
            if sum(n["up"] for n in status["nodes"]) == len(self.dirs):
                return
            time.sleep(0.3)

    def cli(self, node_id: int, *args: str) -> Any:
        return json.loads(lanvault(*args, "--json", "--dir", str(self.dirs[node_id])))

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


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
        results["disk_mb_s"] = disk_ceiling(root, 512)
        results["backup_ceiling_mb_s"] = min(
            results["pipeline_mb_s"],
            results["loopback_mb_s"] / DEGREE,
            results["disk_mb_s"] / (DEGREE + 1),
        )
        results["restore_ceiling_mb_s"] = min(results["loopback_mb_s"], results["disk_mb_s"])

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
            log("backup …")
            start = time.perf_counter()
            net.cli(1, "backup", str(src), "--degree", str(DEGREE))
            results["backup_mb_s"] = size / (time.perf_counter() - start) / 1e6
            log("restore …")
            start = time.perf_counter()
            net.cli(1, "restore", str(src), "--to", str(root / "out"))
            results["restore_mb_s"] = size / (time.perf_counter() - start) / 1e6
            same = (
                subprocess.run(
                    ["cmp", str(src / "data.bin"), str(root / "out" / "data.bin")]
                ).returncode
                == 0
            )
            results["restore_identical"] = float(same)
            (root / "out" / "data.bin").unlink()

            used = {n: net.cli(n, "state")["used_bytes"] for n in (2, 3, 4, 5)}
            victim = max(used, key=lambda n: used[n])
            results["repaired_mb"] = used[victim] / 1e6
            log(f"killing node {victim} ({used[victim] / 1e6:.0f} MB) …")
            for node_id, proc in net.procs.items():
                results[f"rss_node{node_id}_mb"] = peak_rss_mb(proc.pid)
            net.procs[victim].send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            while True:
                time.sleep(1)
                status = net.cli(1, "status")
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
            net.stop()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r = results
    print(
        f"\nnetwork benchmark: {args.size_mib} MiB, degree {DEGREE}, owner + 4 storage nodes on loopback (TLS)"
    )
    print(
        f"  ceilings: loopback {r['loopback_mb_s']:.0f} MB/s, chunk pipeline (2 threads) {r['pipeline_mb_s']:.0f} MB/s,"
        f" durable disk {r['disk_mb_s']:.0f} MB/s"
    )
    print(
        f"  backup   {r['backup_mb_s']:7.1f} MB/s   ceiling {r['backup_ceiling_mb_s']:.0f} MB/s"
        f" -> {r['backup_mb_s'] / r['backup_ceiling_mb_s']:.2f}x (target >= 0.5x)"
    )
    print(
        f"  restore  {r['restore_mb_s']:7.1f} MB/s   ceiling {r['restore_ceiling_mb_s']:.0f} MB/s"
        f" -> {r['restore_mb_s'] / r['restore_ceiling_mb_s']:.2f}x (target >= 0.5x); identical: {bool(r['restore_identical'])}"
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
