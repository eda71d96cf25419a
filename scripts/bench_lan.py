#!/usr/bin/env python3
"""Backup and restore on a LAN you can measure on one machine: each computer a network
namespace on a bridge, each link shaped with ``tc tbf`` both ways (the owner on Wi-Fi, the
holders on wired gigabit, by default). For each degree: the backup and the restore of fresh
random data (MB/s and as a fraction of the owner's link), the bytes every computer sent and
received (interface counters), the CPU seconds of every node; beside the link's rate measured
in the same run by a plain TCP sender between two namespaces (the ceiling).

Needs root (namespaces, tc). Each computer runs one node; node 1 is the owner.

    scripts/bench_lan.py                        # 512 MiB at degrees 1, 2, 3; 200mbit / 1gbit;
                                                # relay replication on, then off
    scripts/bench_lan.py --mib 128 --runs 3 --owner-rate 100mbit --holders 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import ROOT, cpu_seconds, log, write_random

from tests.faults.helpers import same_tree
from tests.system.netns import Lan, netns_available, sweep_stale
from tests.system.procs import ProcessCluster

CEILING_MB = 64  # megabytes the plain TCP sender sends to measure the link


def rate_bits(text: str) -> float:
    """``200mbit``, ``1gbit``, ``500kbit`` -> bits per second (tc's units)."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}
    for unit, scale in units.items():
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * scale
    raise argparse.ArgumentTypeError(f"a rate like 200mbit or 1gbit, not {text!r}")


def counters(lan: Lan, index: int) -> tuple[int, int]:
    """(bytes sent, bytes received) on a computer's interface so far."""
    statistics_dir = "/sys/class/net/eth0/statistics"
    out = subprocess.run(
        [*lan.prefix(index), "cat", f"{statistics_dir}/tx_bytes", f"{statistics_dir}/rx_bytes"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


SINK = """
import socket, sys, time
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2]))); server.listen(1); print("ready", flush=True)
conn, _ = server.accept(); total = 0; start = None
while chunk := conn.recv(1 << 20):
    start = start or time.monotonic(); total += len(chunk)
print(total, time.monotonic() - start, flush=True)
"""

SOURCE = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
block = bytes(1 << 20)
for _ in range(int(sys.argv[3])):
    conn.sendall(block)
conn.close()
"""


def link_ceiling(lan: Lan, sender: int, receiver: int, mb: int = CEILING_MB) -> float:
    """MB/s a plain TCP stream gets from one computer to another (what the links allow)."""
    port = "5799"
    sink = subprocess.Popen(
        [*lan.prefix(receiver), sys.executable, "-c", SINK, lan.ip(receiver), port],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        sink.stdout.readline()  # ready
        subprocess.run(
            [*lan.prefix(sender), sys.executable, "-c", SOURCE, lan.ip(receiver), port, str(mb)],
            check=True,
        )
        total, seconds = sink.stdout.readline().split()
        return int(total) / 1e6 / float(seconds)
    finally:
        sink.wait(30)


@dataclass
class Round:
    degree: int
    backup_mbs: float
    restore_mbs: float
    sent: dict[int, int] = field(default_factory=dict)  # computer -> bytes during the backup
    received: dict[int, int] = field(default_factory=dict)
    restore_sent: dict[int, int] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)  # node -> CPU seconds, both
    file_bytes_sent: int = 0  # envelopes of the files' chunks the owner sent (no catalog copy)


def one_round(
    cluster: ProcessCluster, lan: Lan, work: Path, degree: int, mib: int, computers: int
) -> Round:
    src = work / f"src-d{degree}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for part in range(-(-mib // 64)):  # fresh data: nothing deduplicated from a round
        write_random(src / f"part{part}.bin", min(64, mib - 64 * part))
    size = sum(p.stat().st_size for p in src.iterdir())
    pids = {n: node.proc.pid for n, node in cluster.nodes.items() if node.proc is not None}
    cpu_before = {n: cpu_seconds([pid]) for n, pid in pids.items()}
    before = {c: counters(lan, c) for c in range(computers)}
    started = time.monotonic()
    backup = cluster.cli(1, "backup", src, "--degree", str(degree), "--json", timeout=7200)
    said = json.loads(backup.stdout)
    backup_s = time.monotonic() - started
    after = {c: counters(lan, c) for c in range(computers)}
    out = work / f"out-d{degree}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    cluster.cli(1, "restore", src, "--to", out, timeout=7200)
    restore_s = time.monotonic() - started
    if not same_tree(src, out):
        raise SystemExit(f"bench_lan: the restore at degree {degree} differs from the source")
    restored = {c: counters(lan, c) for c in range(computers)}
    result = Round(degree, size / 1e6 / backup_s, size / 1e6 / restore_s)
    result.file_bytes_sent = int(said["bytes_sent"])  # the files' chunks only, as sent
    for c in range(computers):
        result.sent[c] = after[c][0] - before[c][0]
        result.received[c] = after[c][1] - before[c][1]
        result.restore_sent[c] = restored[c][0] - after[c][0]
    result.cpu = {n: cpu_seconds([pid]) - cpu_before[n] for n, pid in pids.items()}
    shutil.rmtree(out)
    shutil.rmtree(src)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="data per degree (default 512)")
    parser.add_argument("--holders", type=int, default=4, help="holder computers (default 4)")
    parser.add_argument(
        "--owner-rate", type=str, default="200mbit", help="the owner's link (default 200mbit)"
    )
    parser.add_argument(
        "--holder-rate", type=str, default="1gbit", help="each holder's link (default 1gbit)"
    )
    parser.add_argument(
        "--degrees", default="1,2,3", help="degrees to measure, comma-separated (default 1,2,3)"
    )
    parser.add_argument("--runs", type=int, default=1, help="rounds per degree; medians shown")
    parser.add_argument(
        "--relay",
        choices=("on", "off", "both"),
        default="both",
        help="relay replication on the owner (the default), off (it sends every copy), or"
        " both, one after the other in the same run (default both)",
    )
    args = parser.parse_args()
    for rate in (args.owner_rate, args.holder_rate):
        rate_bits(rate)
    why = netns_available()
    if why:
        raise SystemExit(f"bench_lan: {why}")
    degrees = [int(d) for d in args.degrees.split(",")]
    if max(degrees) > args.holders:
        raise SystemExit(f"bench_lan: degree {max(degrees)} needs {max(degrees)} holders")
    computers = 1 + args.holders
    sweep_stale()
    lan = Lan(tag=f"b{os.getpid() % 100}", subnet=os.getpid() % 200 + 20)
    work = Path(tempfile.mkdtemp(prefix="bench_lan-"))
    cluster: ProcessCluster | None = None
    try:
        lan.create(computers)
        lan.shape(0, args.owner_rate)
        for c in range(1, computers):
            lan.shape(c, args.holder_rate)
        owner_link = rate_bits(args.owner_rate) / 8 / 1e6
        ceiling = link_ceiling(lan, 0, 1)
        back = link_ceiling(lan, 1, 0)
        log(
            f"links: owner {args.owner_rate} ({owner_link:.1f} MB/s), holders"
            f" {args.holder_rate}; a plain TCP stream gets {ceiling:.1f} MB/s owner -> holder,"
            f" {back:.1f} MB/s holder -> owner (the ceiling)"
        )
        cluster = ProcessCluster.on_lan(work / "net", lan, list(range(computers)), "1h")
        for node_id in cluster.nodes:  # the last --quota and --repair-interval win
            cluster.start(node_id, "--quota", "100GB", "--repair-interval", "600")
        cluster.wait_mesh(120)
        print(
            f"{'relay':>5} {'degree':>6} {'backup MB/s':>12} {'x link':>7} {'owner sent/data':>16}"
            f" {'restore MB/s':>13} {'x link':>7}  CPU s per node (owner first)"
        )
        modes = ["on", "off"] if args.relay == "both" else [args.relay]
        current = ""
        for mode, degree in [(m, d) for m in modes for d in degrees]:
            if mode != current:  # the owner decides: it sends down chains, or every copy
                cluster.stop(1)
                cluster.start(1, "--relay" if mode == "on" else "--no-relay")
                cluster.wait_mesh(120)
                current = mode
            rounds: list[Round] = []
            for _ in range(args.runs):
                one = one_round(cluster, lan, work, degree, args.mib, computers)
                log(
                    f"  round {len(rounds) + 1}: backup {one.backup_mbs:.1f} MB/s, restore"
                    f" {one.restore_mbs:.1f} MB/s, CPU s "
                    + " ".join(f"{one.cpu[n]:.1f}" for n in sorted(one.cpu))
                )
                rounds.append(one)
            backup = statistics.median(r.backup_mbs for r in rounds)
            restore = statistics.median(r.restore_mbs for r in rounds)
            data = args.mib * 2**20  # what was backed up each round
            owner_sent = statistics.median(r.sent[0] for r in rounds) / data
            files_sent = statistics.median(r.file_bytes_sent for r in rounds) / data
            cpu = {n: statistics.median(r.cpu[n] for r in rounds) for n in rounds[0].cpu}
            print(
                f"{mode:>5} {degree:>6} {backup:>12.1f} {backup / ceiling:>7.2f} {owner_sent:>16.2f}"
                f" {restore:>13.1f} {restore / back:>7.2f}  "
                + " ".join(f"{cpu[n]:.1f}" for n in sorted(cpu)),
                flush=True,
            )
            last = rounds[-1]
            log(
                f"  of which the files' chunks (sealed, TLS and TCP aside): {files_sent:.3f}x"
                " the data; the rest is headers, queries and the catalog copy"
            )
            log(
                "  bytes during the backup, sent/received (MB): "
                + ", ".join(
                    f"computer {c} {last.sent[c] / 1e6:.0f}/{last.received[c] / 1e6:.0f}"
                    for c in range(computers)
                )
            )
            log(
                "  bytes sent during the restore (MB): "
                + ", ".join(
                    f"computer {c} {last.restore_sent[c] / 1e6:.0f}" for c in range(computers)
                )
            )
        print(
            f"ceiling: {ceiling:.1f} MB/s owner -> holder, {back:.1f} MB/s holder -> owner"
            f" (plain TCP, this run); 'x link' is against it"
        )
    finally:
        if cluster is not None:
            cluster.stop_all()
        lan.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
