#!/usr/bin/env python3
"""Erasure codes beside copies: a 2-of-4 code against degrees 2 and 3, on one machine.

An owner node and 4 storage nodes (real processes, TLS on loopback). For each way of keeping
the data, a backup of --mib MiB of random data (new data each time: nothing is shared), then
its restore (checked identical), and for the code a second restore with two storage nodes
killed. Reported beside each other: backup and restore MB/s, the bytes the owner sent, the
bytes the holders store (their stores' growth), and what the simulator
(``lanvault simulate``) gives each for a typical office (4 desktops, 2 laptops) with two
computers lost together once in ten years: the probability of losing anything in a year.

The ceiling measured in the same run: a plain TCP sender on loopback (what the owner's link
could carry if it were the limit).

    scripts/bench_codes.py [--mib 1024] [--trials 400] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import ROOT, Net, log, loopback_ceiling, write_random

from lanvault.simulate import Network, Scheme, simulate

WAYS = [
    ("degree 2", ["--degree", "2"]),
    ("degree 3", ["--degree", "3"]),
    ("2-of-4", ["--code", "2-of-4"]),
]
SCHEMES = {"degree 2": Scheme(2), "degree 3": Scheme(3), "2-of-4": Scheme(4, 2)}
OFFICE = Network(desktops=4, laptops=2, site_events_per_year=0.1, site_size=2)
HOLDERS = (2, 3, 4, 5)


def stored(net: Net) -> int:
    return sum(int(net.json(n, "state")["used_bytes"]) for n in HOLDERS if n in net.procs)


def same(a: Path, b: Path) -> bool:
    with open(a, "rb") as x, open(b, "rb") as y:
        while True:
            one, two = x.read(1 << 20), y.read(1 << 20)
            if one != two:
                return False
            if not one:
                return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--trials", type=int, default=400, help="simulated years per way")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    results: dict[str, Any] = {"mib": args.mib, "ways": {}}
    with tempfile.TemporaryDirectory(prefix="lanvault-bench-codes-", dir=ROOT) as tmp:
        root = Path(tmp)
        log("measuring the loopback ceiling …")
        results["loopback_mb_s"] = loopback_ceiling(512 * 1024 * 1024)
        net = Net(root / "net", 5)
        try:
            log("starting 5 nodes (owner + 4 storage nodes) …")
            net.start_all()
            for name, option in WAYS:
                src = root / f"src-{name.replace(' ', '-')}"
                src.mkdir()
                write_random(src / "data.bin", args.mib)
                before = stored(net)
                log(f"{name}: backup …")
                start = time.perf_counter()
                said = net.json(1, "backup", str(src), *option)
                backup_s = time.perf_counter() - start
                grown = stored(net) - before
                log(f"{name}: restore …")
                out = root / f"out-{name.replace(' ', '-')}"
                start = time.perf_counter()
                net.json(1, "restore", str(src), "--to", str(out))
                restore_s = time.perf_counter() - start
                way: dict[str, Any] = {
                    "backup_mb_s": size / backup_s / 1e6,
                    "restore_mb_s": size / restore_s / 1e6,
                    "sent_ratio": said["bytes_sent"] / size,
                    "stored_ratio": grown / size,
                    "identical": same(src / "data.bin", out / "data.bin"),
                }
                (out / "data.bin").unlink()
                results["ways"][name] = way
            log("2-of-4: restore with two storage nodes killed …")
            for victim in (2, 3):
                net.kill(victim)
            out = root / "out-two-lost"
            start = time.perf_counter()
            net.json(1, "restore", str(root / "src-2-of-4"), "--to", str(out))
            results["ways"]["2-of-4"]["restore_two_lost_mb_s"] = (
                size / (time.perf_counter() - start) / 1e6
            )
            results["ways"]["2-of-4"]["identical_two_lost"] = same(
                root / "src-2-of-4" / "data.bin", out / "data.bin"
            )
        finally:
            net.stop_all(15)
    log(f"simulating {args.trials} years of an office for each …")
    for name, scheme in SCHEMES.items():
        outcome = simulate(OFFICE, scheme, years=1.0, trials=args.trials, seed=1)
        low, high = outcome.p_interval
        results["ways"][name] |= {"p_loss_year": outcome.p_loss, "p_low": low, "p_high": high}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"\n{args.mib} MiB of random data, owner + 4 storage nodes on loopback (TLS);"
        f" loopback ceiling {results['loopback_mb_s']:.0f} MB/s"
    )
    print(
        f"  {'':10} {'backup MB/s':>12} {'restore MB/s':>13} {'sent/data':>10} {'stored/data':>12}"
        f"  {'survives losing':>17}  P(loss in a year), office, 2 lost together 1/10 y"
    )
    survives = {"degree 2": "1", "degree 3": "any 2", "2-of-4": "any 2"}
    for name, way in results["ways"].items():
        print(
            f"  {name:10} {way['backup_mb_s']:12.1f} {way['restore_mb_s']:13.1f}"
            f" {way['sent_ratio']:10.2f} {way['stored_ratio']:12.2f}  {survives[name]:>17}"
            f"  {way['p_loss_year']:.4f} [{way['p_low']:.4f}, {way['p_high']:.4f}]"
        )
    two = results["ways"]["2-of-4"]
    print(
        f"  2-of-4 restore with two storage nodes killed: {two['restore_two_lost_mb_s']:.1f} MB/s"
        f" (identical: {two['identical_two_lost']})"
    )
    return 0 if all(w["identical"] for w in results["ways"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
