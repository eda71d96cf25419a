"""``lanvault simulate`` on the command line: its options, what it takes from a running node
(``--from-network``), and the table it prints; the simulator itself is ``simulate.py``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from chunkstore.sizes import format_size

from .commands import request, request_bytes
from .state import StateDir, UsageError

if TYPE_CHECKING:
    from .simulate import Network, Outcome

# The simulator (and with it the node's repair code and trio) is imported by the functions
# that run it: every other command starts that much sooner (about 0.15 s).


def report_lines(net: Network, outcomes: list[Outcome], years: float) -> list[str]:
    """The table ``lanvault simulate`` prints."""
    from .simulate import closed_form

    lines = [
        f"{'scheme':<12} {'stored':>6}  {'P(loss within ' + format(years, 'g') + ' y)':>20}"
        f"  {'95 % interval':>17}  {'bytes lost/yr':>13}  {'closed form':>11}"
    ]
    for o in outcomes:
        low, high = o.p_interval
        mean, _lo, _hi = o.bytes_per_year
        exact = closed_form(net, o.scheme, years)
        lines.append(
            f"{o.scheme!s:<12} {o.scheme.stored:>5.2f}x  {o.p_loss:>20.4f}"
            f"  [{low:.4f}, {high:.4f}]  {format_size(int(mean)):>13}  {exact:>11.2e}"
        )
    return lines


OBSERVED_ENOUGH_S = 24 * 3600.0  # a peer watched for less says little about its absences
OFTEN_AWAY = 0.9  # a computer up less than this share of the time is counted a laptop


@dataclass(frozen=True, slots=True)
class Observed:
    """The network as ``status`` saw it: computers, how many are often away, their absences."""

    desktops: int
    laptops: int
    away_per_year: float
    away_hours: float
    note: str


def _number(node: dict[str, object], key: str) -> float:
    """A figure of ``status``'s node entry (0 where absent or null)."""
    value = node.get(key)
    return float(value) if isinstance(value, int | float) else 0.0


def observed_network(
    nodes: list[dict[str, object]], laptops: int, away_per_year: float, away_hours: float
) -> Observed:
    """From ``status``'s nodes: the computers, and, where this node watched its peers for a
    day or more, which are often away (up less than 90 % of the time) and how often and how
    long they were away; else the options' figures (``laptops``, ``away_*``)."""
    from .simulate import HOUR, YEAR_H

    computers: dict[str, list[dict[str, object]]] = {}
    for n in nodes:
        computers.setdefault(str(n.get("computer") or f"node-{n['id']}"), []).append(n)
    watched = {
        name: peers
        for name, peers in computers.items()
        if not any(p.get("self") for p in peers)
        and all(_number(p, "observed_s") >= OBSERVED_ENOUGH_S for p in peers)
    }
    if not watched or len(watched) < len(computers) - 1:
        laptops = min(laptops, len(computers))
        return Observed(
            len(computers) - laptops,
            laptops,
            away_per_year,
            away_hours,
            "presence not observed for a day yet: laptops and absences from the options",
        )
    often_away, times, away_s, observed_s = 0, 0, 0.0, 0.0
    for peers in watched.values():
        # A computer is up while any of its nodes is: its best node's figures stand for it.
        best = max(peers, key=lambda p: _number(p, "uptime"))
        if _number(best, "uptime") < OFTEN_AWAY:
            often_away += 1
            times += int(_number(best, "times_away"))
            away_s += _number(best, "away_s")
            observed_s += _number(best, "observed_s")
    if often_away and times:
        away_per_year = times / (observed_s / HOUR / YEAR_H)
        away_hours = away_s / times / HOUR
    return Observed(
        len(computers) - often_away,
        often_away,
        away_per_year,
        away_hours,
        f"observed: {often_away} of {len(computers)} computers up less than"
        f" {OFTEN_AWAY:.0%} of the time"
        + (
            f", away {away_per_year:.1f} times a year for {away_hours:.1f} h on average"
            if often_away and times
            else ""
        ),
    )


def cmd_simulate(args: argparse.Namespace, state: StateDir) -> int:
    from .simulate import HOUR, Network, Scheme, closed_form, simulate

    desktops, laptops, data = args.desktops, args.laptops, float(args.data)
    away, away_for = args.away, args.away_for
    if args.from_network:
        status = request(state, {"op": "status"})
        seen = observed_network(status["nodes"], laptops, away, away_for / HOUR)
        desktops, laptops, away, away_for = (
            seen.desktops,
            seen.laptops,
            seen.away_per_year,
            seen.away_hours * HOUR,
        )
        print(seen.note, file=sys.stderr)
        owned = json.loads(request_bytes(state, {"op": "state"}))
        data = float(sum(f["size"] for f in owned["files"])) or data
    schemes = [Scheme(d) for d in args.degree or []] + [Scheme(n, k) for k, n in args.code or []]
    if not schemes:
        schemes = [Scheme(1), Scheme(2), Scheme(3)]
    degrees_ok = all(1 <= s.n <= 9 for s in schemes if s.k == 1)
    if not degrees_ok or any(not 1 <= s.n <= 16 for s in schemes) or desktops + laptops < 2:
        raise UsageError(
            "degrees are 1..9, codes K-of-N with N <= 16, and a network has 2+ computers"
        )
    too_many = [s for s in schemes if s.n > desktops + laptops]
    if too_many:
        raise UsageError(
            f"{too_many[0]} needs {too_many[0].n} computers and the network has {desktops + laptops}"
        )
    net = Network(
        desktops=desktops,
        laptops=laptops,
        afr=args.afr,
        laptop_away_per_year=away,
        laptop_away_hours=away_for / HOUR,
        site_events_per_year=args.site_events,
        site_size=args.site_size,
        data_bytes=data,
        gone_after_s=args.gone_after,
    )
    outcomes = []
    for scheme in schemes:
        print(f"simulating {scheme} …", file=sys.stderr, flush=True)
        outcomes.append(simulate(net, scheme, years=args.years, trials=args.trials, seed=args.seed))
    if args.json:
        print(
            json.dumps(
                {
                    "network": asdict(net),
                    "years": args.years,
                    "trials": args.trials,
                    "seed": args.seed,
                    "schemes": [
                        {
                            "scheme": str(o.scheme),
                            "k": o.scheme.k,
                            "n": o.scheme.n,
                            "stored": o.scheme.stored,
                            "p_loss": o.p_loss,
                            "p_interval": o.p_interval,
                            "bytes_lost_per_year": o.bytes_per_year,
                            "copies_made": o.copies_made,
                            "closed_form": closed_form(net, o.scheme, args.years),
                        }
                        for o in outcomes
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(
        f"{desktops + laptops} computers ({desktops} always on, {laptops} laptops),"
        f" {format_size(int(data))} of data, {args.trials} runs of {args.years:g} year(s), seed"
        f" {args.seed}; a disk lost {args.afr:g}/year per computer (an empty one replaces it a"
        f" week later), laptops away {away:g} times a year for {away_for / HOUR:g} h"
        f" on average, {args.site_events:g} events a year taking {args.site_size} computers at"
        f" once, copies re-made after {args.gone_after / 60:g} min away at"
        f" {format_size(int(net.repair_rate))}/s per holder, silent damage"
        f" {net.rot_per_copy_year:g}/copy/year found by the daily scrub"
    )
    for line in report_lines(net, outcomes, args.years):
        print(line)
    print(
        "'closed form': one chunk, independent disk failures only (docs/durability.md); a"
        f" probability of 0 means none of {args.trials} runs lost anything (the interval says"
        " how sure that is)"
    )
    return 0


def _code(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("-of-")
    if not sep or not k.isdigit() or not n.isdigit() or not 1 <= int(k) < int(n) <= 16:
        raise argparse.ArgumentTypeError(f"a code like 2-of-4 (1 <= K < N <= 16), not {text!r}")
    # 1-of-N is simulated (it is N copies' arithmetic), though backups keep it as a degree.
    return int(k), int(n)


def simulate_arguments(
    p: argparse.ArgumentParser, _size: Callable[[str], int], _duration: Callable[[str], float]
) -> None:
    """``lanvault simulate``'s options (the parser's size and duration types given)."""
    p.add_argument(
        "--degree",
        type=int,
        action="append",
        metavar="R",
        help="a degree to compare (1..9; repeat it; default 1, 2 and 3 unless --code is given)",
    )
    p.add_argument(
        "--code",
        type=_code,
        action="append",
        metavar="K-of-N",
        help="an erasure code to compare: any K of N shares rebuild a chunk (lanvault backup"
        " --code)",
    )
    p.add_argument(
        "--from-network",
        action="store_true",
        help="take the computers, the data size and, once the node has watched its peers for a"
        " day, which computers are often away and for how long, from the running node (--dir)",
    )
    p.add_argument("--desktops", type=int, default=4, help="computers always on (default 4)")
    p.add_argument("--laptops", type=int, default=2, help="computers often away (default 2)")
    p.add_argument("--data", type=_size, default=10**12, help="data backed up (default 1TB)")
    p.add_argument(
        "--afr", type=float, default=0.05, help="a computer's disk lost per year (default 0.05)"
    )
    p.add_argument(
        "--away", type=float, default=20.0, help="times a laptop goes away per year (default 20)"
    )
    p.add_argument(
        "--away-for",
        type=_duration,
        default=48 * 3600.0,
        help="how long a laptop stays away on average (default 48h)",
    )
    p.add_argument(
        "--site-events",
        type=float,
        default=0.0,
        help="events per year that take several computers at once (fire, theft; default 0)",
    )
    p.add_argument("--site-size", type=int, default=2, help="computers one such event takes")
    p.add_argument(
        "--gone-after",
        type=_duration,
        default=600.0,
        help="the grace period before copies are re-made (the node's --gone-after; default 10m)",
    )
    p.add_argument("--years", type=float, default=1.0, help="years per trial (default 1)")
    p.add_argument("--trials", type=int, default=200, help="simulated runs (default 200)")
    p.add_argument("--seed", type=int, default=1, help="the run's seed (the same seed repeats it)")
