"""Helpers shared by the benchmark scripts: local node processes and the physical ceilings
(loopback TCP, the chunk pipeline, durable disk writes) measured in the same run."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from chunkstore.chunking import CHUNK_SIZE
from chunkstore.keys import KeyRing, new_master_key
from chunkstore.pipeline import open_chunks, prepare_chunks
from node.owner import READ_BATCH

ROOT = Path(__file__).resolve().parents[1]
GONE_AFTER = 5.0


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


def pipeline_ceiling(mib: int, opening: bool = False) -> float:
    """MB/s of the chunk pipeline on 2 threads, in the daemon's batches: sealing (address,
    compress, encrypt) or, with ``opening``, what every restore does (decrypt, verify)."""
    keys = KeyRing.from_master(new_master_key())
    chunks = [os.urandom(CHUNK_SIZE) for _ in range(mib * 1024 * 1024 // CHUNK_SIZE)]
    sealed = [(p.address, p.envelope) for p in prepare_chunks(keys, chunks)] if opening else []

    async def run() -> float:
        limiter = trio.CapacityLimiter(2)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(0, len(chunks), READ_BATCH):
                job: Callable[[], object]
                if opening:
                    job = functools.partial(open_chunks, keys, sealed[i : i + READ_BATCH])
                else:
                    job = functools.partial(prepare_chunks, keys, chunks[i : i + READ_BATCH])
                nursery.start_soon(functools.partial(trio.to_thread.run_sync, job, limiter=limiter))
        return len(chunks) * CHUNK_SIZE / (time.perf_counter() - start) / 1e6

    return statistics.median(trio.run(run) for _ in range(3))


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes ``pids`` (all their threads) have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


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
    def __init__(
        self, root: Path, count: int, gone_after: float = GONE_AFTER, repair_interval: float = 30
    ) -> None:
        self.gone_after = gone_after
        self.repair_interval = repair_interval
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
                        f"{self.gone_after}s",
                        "--heartbeat",
                        "0.5",
                        "--repair-interval",
                        str(self.repair_interval),
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

    def status(self, node_id: int) -> Any:
        return self.cli(node_id, "status")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
