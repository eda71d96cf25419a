"""Helpers shared by the benchmark scripts: local node processes and the physical ceilings
(loopback TCP, the chunk pipeline, durable disk writes) measured in the same run."""

from __future__ import annotations

import contextlib
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
from lanvault.localnet import LocalNet
from lanvault.localnet import free_port as free_port  # below the ephemeral range
from node.localtree import READ_BATCH

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' helpers, as scripts/reliability_report.py does


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


def write_random(path: Path, mib: int) -> None:
    """A file of ``mib`` MiB of random (incompressible) data."""
    log(f"writing {mib} MiB of random data …")
    with open(path, "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(1024 * 1024))


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


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "bench-cert.pem", folder / "bench-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def _tls_pair(folder: Path) -> tuple[Any, Any, Any, Any]:
    """A connected TLS 1.3 client/server over memory BIOs: (client, its out BIO, server, its
    in BIO), the suite the nodes negotiate (AES-256-GCM)."""
    import ssl

    cert_file, key_file = _self_signed(folder)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="bench")
    for _ in range(10):
        for end, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                end.do_handshake()
            peer_in.write(out.read())
    return client, c_out, server, s_in


def cpu_floor(folder: Path, degree: int, mib: int = 64) -> dict[str, float]:
    """CPU milliseconds per MB of each step a backup or restore cannot skip, measured here on
    one thread with as little Python as possible, and their sums per MB of user data.

    backup = read + address + seal + degree x (TLS both ends + loopback TCP both ends + the
    holder's checksum + its page-cache write); restore = the holder's read and checksum + TLS +
    TCP + open (decrypt, verify) + write. Dividing the cores by these gives the most any
    implementation could reach on this machine.
    """
    import hashlib
    import hmac
    import ssl
    import threading

    from chunkstore.envelope import chunk_address, open_chunk, seal_chunk

    keys = KeyRing.from_master(new_master_key())
    count = mib * 1024 * 1024 // CHUNK_SIZE
    plains = [os.urandom(CHUNK_SIZE) for _ in range(count)]
    mb = count * CHUNK_SIZE / 1e6

    def per_mb(job: Callable[[], object]) -> float:
        runs = []
        for _ in range(3):
            start = time.process_time()
            job()
            runs.append((time.process_time() - start) / mb * 1000)
        return statistics.median(runs)

    addresses = [chunk_address(keys, p) for p in plains]
    envelopes = [seal_chunk(keys, a, p) for a, p in zip(addresses, plains, strict=True)]
    steps: dict[str, float] = {}
    steps["address"] = per_mb(lambda: [hmac.digest(keys.address_key, p, "sha256") for p in plains])
    steps["seal"] = per_mb(
        lambda: [seal_chunk(keys, a, p) for a, p in zip(addresses, plains, strict=True)]
    )
    steps["open"] = per_mb(
        lambda: [open_chunk(keys, a, e) for a, e in zip(addresses, envelopes, strict=True)]
    )
    steps["checksum"] = per_mb(lambda: [hashlib.sha256(e).digest() for e in envelopes])

    client, c_out, server, s_in = _tls_pair(folder)
    into = bytearray(256 * 1024)

    def tls() -> None:
        for start in range(0, count, 60):
            client.write(b"".join(envelopes[start : start + 60]))
            s_in.write(c_out.read())
            while True:
                try:
                    if not server.read(len(into), into):
                        break
                except ssl.SSLWantReadError:
                    break

    steps["tls"] = per_mb(tls)

    def loopback() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
        block = b"".join(envelopes[:60])
        total = len(block) * (count // 60)

        def send() -> None:
            for _ in range(count // 60):
                sender.sendall(block)
            sender.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=send)
        thread.start()
        buffer = bytearray(256 * 1024)
        got = 0
        while got < total:
            n = receiver.recv_into(buffer)
            if not n:
                break
            got += n
        thread.join()
        for sock in (sender, receiver, listener):
            sock.close()

    steps["tcp"] = per_mb(loopback)
    path = folder / "cpu-floor.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        steps["write"] = per_mb(
            lambda: [
                os.pwritev(fd, envelopes[i : i + 60], i * CHUNK_SIZE) for i in range(0, count, 60)
            ]
        )
        steps["read"] = per_mb(
            lambda: [os.pread(fd, CHUNK_SIZE, i * CHUNK_SIZE) for i in range(count)]
        )
    finally:
        os.close(fd)
        path.unlink()
    per_copy = steps["tls"] + steps["tcp"] + steps["checksum"] + steps["write"]
    steps["backup"] = steps["read"] + steps["address"] + steps["seal"] + degree * per_copy
    steps["restore"] = (
        steps["read"] + steps["checksum"] + steps["tls"] + steps["tcp"] + steps["open"]
    ) + steps["write"]
    return steps


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


class Net(LocalNet):
    """The benchmarks' network (``lanvault.localnet``): ``count`` nodes on 127.0.0.1, made at
    once, with room for any benchmark and without multicast discovery."""

    def __init__(
        self, root: Path, count: int, gone_after: float = GONE_AFTER, repair_interval: float = 30
    ) -> None:
        ids = list(range(1, count + 1))
        node_args = ["--quota", "20GB", "--gone-after", f"{gone_after}s", "--heartbeat", "0.5"]
        node_args += ["--repair-interval", str(repair_interval), "--no-discovery"]
        super().__init__(
            root, ids, env, lambda _id: node_args, hosts=[f"computer-{i}" for i in ids]
        )
        self.create()

    @property
    def dirs(self) -> dict[int, Path]:
        return {node_id: node.state for node_id, node in self.nodes.items()}

    @property
    def procs(self) -> dict[int, subprocess.Popen[bytes]]:
        """The running nodes' processes."""
        return {
            node_id: node.proc
            for node_id, node in self.nodes.items()
            if node.proc is not None and node.proc.poll() is None
        }

    def status(self, node_id: int) -> Any:
        return self.json(node_id, "status")


class Mounted:
    def __init__(
        self, state: Path, source: Path, mountpoint: Path, log_path: Path, *extra: str
    ) -> None:
        """``lanvault mount`` of ``source`` at ``mountpoint``, with ``extra`` options."""
        source.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.counts = log_path.with_name(f"{mountpoint.name}-requests.json")
        self.log_path = log_path
        with open(log_path, "ab") as handle:
            self.log_start = handle.tell()  # what this mount logs comes after
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lanvault.cli",
                    "mount",
                    "--dir",
                    str(state),
                    str(source),
                    str(mountpoint),
                    "--request-counts",
                    str(self.counts),
                    *extra,
                ],
                cwd=ROOT,
                env=env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while f"mounted at {mountpoint}".encode() not in log_path.read_bytes()[self.log_start :]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the mount did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def requests(self) -> dict[str, int]:
        """The FUSE requests this mount served, by kind (written when it stopped)."""
        counts: dict[str, int] = json.loads(self.counts.read_text())["counts"]
        return counts

    def request_seconds(self) -> dict[str, float]:
        """The seconds this mount spent in each kind of request (waits included)."""
        seconds: dict[str, float] = json.loads(self.counts.read_text())["seconds"]
        return seconds
