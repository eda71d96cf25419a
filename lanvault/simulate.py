"""``lanvault simulate``: a discrete-event simulator of a lanvault network over years, to choose a
degree (or a k-of-n code) with numbers.

Computers fail for good (annual failure rate, exponential; replaced by an empty one after
``replace_days``), laptops go away for a while (a rate per year, an exponential duration),
several computers can fail at once (a site event: fire, theft, one batch of disks), and copies
rot unseen until the holder's next scrub. The data is ``sample_chunks`` chunks standing for
``data_bytes``, placed by lanvault's own placement (``node.placement.choose_targets``, weighted
rendezvous hashing over computers), and kept by lanvault's own repair policy
(``node.repair.repair_decision``: copies on holders down but not yet gone count, nothing is
re-made before ``--gone-after``; the lowest live holder re-makes the missing copies at
``repair_rate`` bytes per second, the ``NodeConfig`` defaults). A chunk is lost when fewer
than ``k`` good copies are left on computers that still exist (``k = 1`` for plain copies).

Each trial is seeded from ``seed`` and its number: a run repeats exactly. The result is the
share of trials that lost anything within ``years`` (with its Wilson 95 % interval) and the
bytes lost per year (mean and a normal 95 % interval). ``exponential_repair`` replaces the
policy's timing by an exponential delay of the same mean: the case ``lossmodel`` solves in
closed form, which the tests compare.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from chunkstore.sizes import format_size
from node.node import NodeConfig
from node.placement import Candidate, choose_targets
from node.repair import Repair, repair_decision

from .commands import request, request_bytes
from .lossmodel import loss_probability, wilson
from .state import StateDir, UsageError

HOUR = 3600.0
YEAR_H = 24 * 365.0
DEFAULTS = NodeConfig(node_id=0, host_id="")


@dataclass(frozen=True, slots=True)
class Network:
    """Who is in the network and how they fail (rates per year, durations in hours)."""

    desktops: int = 4
    laptops: int = 2
    afr: float = 0.05  # a computer's disk lost, per year
    laptop_away_per_year: float = 20.0
    laptop_away_hours: float = 48.0  # mean, exponential
    site_events_per_year: float = 0.0  # several computers lost at once ...
    site_size: int = 0  # ... this many
    rot_per_copy_year: float = 1e-4  # a stored copy silently damaged
    replace_days: float = 7.0  # a lost computer's empty replacement joins after this
    data_bytes: float = 1e12
    gone_after_s: float = DEFAULTS.gone_after
    repair_rate: float = DEFAULTS.repair_rate  # bytes/s a holder spends re-making copies
    scrub_interval_s: float = DEFAULTS.scrub_interval
    repair_interval_s: float = DEFAULTS.repair_interval


@dataclass(frozen=True, slots=True)
class Scheme:
    """n copies (k = 1), or an erasure code: any k of n shares rebuild the chunk."""

    n: int
    k: int = 1

    def __str__(self) -> str:
        return f"degree {self.n}" if self.k == 1 else f"{self.k}-of-{self.n}"

    @property
    def stored(self) -> float:
        """Bytes stored per byte of data."""
        return self.n / self.k


@dataclass
class Outcome:
    scheme: Scheme
    trials: int
    years: float
    lost_trials: int = 0
    bytes_lost: list[float] = field(default_factory=list)  # per trial
    copies_made: int = 0

    @property
    def p_loss(self) -> float:
        return self.lost_trials / self.trials

    @property
    def p_interval(self) -> tuple[float, float]:
        return wilson(self.lost_trials, self.trials)

    @property
    def bytes_per_year(self) -> tuple[float, float, float]:
        """Mean bytes lost per year and its 95 % interval."""
        per_year = [b / self.years for b in self.bytes_lost]
        mean = statistics.fmean(per_year)
        half = (
            1.96 * statistics.stdev(per_year) / math.sqrt(len(per_year))
            if len(per_year) > 1
            else 0.0
        )
        return mean, max(0.0, mean - half), mean + half


@dataclass
class _Computer:
    host: str
    laptop: bool
    dead: bool = False
    down_since: float | None = None  # hours; None while up


class Trial:
    """One run of ``years`` of one network with one scheme (times in hours)."""

    def __init__(
        self,
        net: Network,
        scheme: Scheme,
        chunks: int,
        rng: random.Random,
        exponential_repair: float | None = None,
    ) -> None:
        self.net, self.scheme, self.rng = net, scheme, rng
        self.exponential_repair = exponential_repair  # mean hours, or the policy's timing
        self.chunk_bytes = net.data_bytes / chunks
        self.computers: dict[int, _Computer] = {}
        self.events: list[tuple[float, int, str, tuple[int, ...]]] = []
        self.sequence = 0
        self.holders: list[set[int]] = []
        self.rotten: set[tuple[int, int]] = set()  # (chunk, holder) damaged, not yet found
        self.lost: set[int] = set()
        self.copies_made = 0
        self.busy_until: dict[int, float] = {}  # a repairer's queue
        self.in_flight: dict[int, set[int]] = {}  # chunk -> the holders its copies go to
        self.rot_scale = max(1000, chunks)  # see _on_rot
        for n in range(net.desktops + net.laptops):
            self._join(0.0, laptop=n >= net.desktops)
        keys = [rng.getrandbits(64).to_bytes(8, "big") for _ in range(chunks)]
        self.keys = keys
        for key in keys:
            chosen = choose_targets(key, self._candidates(), 0, scheme.n)
            self.holders.append({c.node_id for c in chosen})

    # -- events --------------------------------------------------------------------------

    def _at(self, when: float, kind: str, *data: int) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, kind, data))

    def _exp(self, per_year: float) -> float:
        return self.rng.expovariate(per_year / YEAR_H) if per_year > 0 else math.inf

    def _join(self, now: float, laptop: bool) -> None:
        node = max(self.computers, default=0) + 1
        self.computers[node] = _Computer(f"computer-{node}", laptop)
        self._at(now + self._exp(self.net.afr), "fail", node)
        if laptop:
            self._at(now + self._exp(self.net.laptop_away_per_year), "away", node)
        if self.net.rot_per_copy_year > 0:
            self._at(now + self._exp(self.net.rot_per_copy_year * self.rot_scale), "rot", node)

    def _candidates(self) -> list[Candidate]:
        return [
            Candidate(n, c.host, 1 << 40)
            for n, c in self.computers.items()
            if not c.dead and c.down_since is None
        ]

    def fail_at(self, hours: float, node: int) -> None:
        """Lose computer ``node``'s disk at ``hours`` (besides the random failures)."""
        self._at(hours, "fail", node)

    def run(self, years: float) -> float:
        """Bytes lost in ``years``."""
        end = years * YEAR_H
        net = self.net
        if net.site_events_per_year > 0 and net.site_size > 0:
            self._at(self._exp(net.site_events_per_year), "site")
        while self.events and self.events[0][0] <= end:
            now, _seq, kind, data = heapq.heappop(self.events)
            getattr(self, f"_on_{kind}")(now, *data)
        return len(self.lost) * self.chunk_bytes

    def _on_fail(self, now: float, node: int) -> None:
        computer = self.computers[node]
        if computer.dead:
            return
        computer.dead = True
        computer.down_since = computer.down_since if computer.down_since is not None else now
        for targets in self.in_flight.values():  # copies on their way to it: made elsewhere
            targets.discard(node)
        for chunk, holders in enumerate(self.holders):
            if node in holders:
                self._check_loss(chunk)
        self._repair_pass_after_gone(computer.down_since)
        self._at(now + self.net.replace_days * 24, "replace", node)

    def _on_replace(self, now: float, node: int) -> None:
        self._join(now, laptop=self.computers[node].laptop)
        self._at(now, "pass")  # a pass every 30 s finds the newcomer at once

    def _on_site(self, now: float) -> None:
        alive = [n for n, c in self.computers.items() if not c.dead]
        for node in self.rng.sample(alive, min(self.net.site_size, len(alive))):
            self._on_fail(now, node)
        self._at(now + self._exp(self.net.site_events_per_year), "site")

    def _on_away(self, now: float, node: int) -> None:
        computer = self.computers[node]
        if computer.dead:
            return
        computer.down_since = now
        self._repair_pass_after_gone(now)
        self._at(now + self.rng.expovariate(1 / self.net.laptop_away_hours), "back", node)

    def _on_back(self, now: float, node: int) -> None:
        computer = self.computers[node]
        if computer.dead:
            return
        computer.down_since = None
        for holders in self.holders:  # copies made meanwhile: the extra one is trimmed
            if node in holders and len(holders) > self.scheme.n:
                holders.discard(node)
        self._at(now, "pass")  # what waited for a computer to copy to can go to it now
        self._at(now + self._exp(self.net.laptop_away_per_year), "away", node)

    def _on_rot(self, now: float, node: int) -> None:
        computer = self.computers[node]
        if computer.dead:
            return
        held = [i for i, h in enumerate(self.holders) if node in h]
        # One event stream per holder, ``rot_scale`` times the per-copy rate, hitting one of
        # its copies with probability held / rot_scale: the per-copy rate, with few events.
        if held and self.rng.random() < len(held) / self.rot_scale:
            chunk = self.rng.choice(held)
            self.rotten.add((chunk, node))
            self._check_loss(chunk)
            scrub = self.net.scrub_interval_s / HOUR
            self._at(now + scrub * (1 - self.rng.random()), "scrubbed", chunk, node)
        self._at(now + self._exp(self.net.rot_per_copy_year * self.rot_scale), "rot", node)

    def _on_scrubbed(self, now: float, chunk: int, node: int) -> None:
        if (chunk, node) in self.rotten:  # found: the copy is dropped and re-made
            self.rotten.discard((chunk, node))
            self.holders[chunk].discard(node)
            self._repair(now, [chunk])

    def _repair_pass_after_gone(self, down_since: float) -> None:
        gone_at = down_since + self.net.gone_after_s / HOUR
        interval = self.net.repair_interval_s / HOUR
        self._at(math.ceil(gone_at / interval) * interval + 1e-9, "pass")

    def _on_pass(self, now: float) -> None:
        self._repair(now, range(len(self.holders)))

    # -- the policy ----------------------------------------------------------------------

    def _gone(self, node: int, now: float) -> bool:
        computer = self.computers[node]
        return computer.down_since is not None and (
            now - computer.down_since > self.net.gone_after_s / HOUR
        )

    def _repair(self, now: float, chunks: range | list[int]) -> None:
        down = {n for n, c in self.computers.items() if c.down_since is not None}
        gone = {n for n in down if self._gone(n, now)}
        dead = {n for n, c in self.computers.items() if c.dead}
        candidates = self._candidates()
        for chunk in chunks:
            if chunk in self.lost:
                continue
            holders = self.holders[chunk]
            live = holders - down
            remembered = (holders & down) - gone
            decision = repair_decision(self.scheme.n, live, remembered, down - gone)
            if decision is not Repair.REPAIR or not live:
                continue
            good = [h for h in live if (chunk, h) not in self.rotten]
            if len(good) < self.scheme.k:
                continue  # nothing to re-make it from (yet: away holders may return)
            repairer = min(live)
            coming = self.in_flight.setdefault(chunk, set())
            missing = self.scheme.n - len(live | remembered) - len(coming)
            if missing <= 0:
                continue
            exclude = holders | dead | coming
            for target in choose_targets(self.keys[chunk], candidates, 0, missing, exclude):
                if self.exponential_repair is not None:
                    done = now + self.rng.expovariate(1 / self.exponential_repair)
                else:
                    start = max(now, self.busy_until.get(repairer, 0.0))
                    done = start + self.chunk_bytes / self.net.repair_rate / HOUR
                    self.busy_until[repairer] = done
                coming.add(target.node_id)
                self._at(done, "copied", chunk, target.node_id)

    def _on_copied(self, now: float, chunk: int, target: int) -> None:
        coming = self.in_flight.get(chunk, set())
        if target not in coming:
            return  # its holder failed meanwhile: the copy went elsewhere
        coming.discard(target)
        # A copy in the making survives its repairer's failure while the chunk is not lost:
        # another holder re-makes it at once (a repair pass every 30 s), a delay modelled
        # as none.
        if chunk not in self.lost:
            self.holders[chunk].add(target)
            self.copies_made += 1

    def _check_loss(self, chunk: int) -> None:
        good = [
            h
            for h in self.holders[chunk]
            if not self.computers[h].dead and (chunk, h) not in self.rotten
        ]
        if len(good) < self.scheme.k:
            self.lost.add(chunk)


def simulate(
    net: Network,
    scheme: Scheme,
    *,
    years: float = 1.0,
    trials: int = 200,
    sample_chunks: int = 500,
    seed: int = 1,
    exponential_repair: float | None = None,
) -> Outcome:
    """``trials`` runs of ``years``; trial ``t`` is seeded from (``seed``, ``t``)."""
    outcome = Outcome(scheme, trials, years)
    for t in range(trials):
        rng = random.Random(f"{seed}:{t}")
        trial = Trial(net, scheme, sample_chunks, rng, exponential_repair)
        lost = trial.run(years)
        outcome.bytes_lost.append(lost)
        outcome.lost_trials += lost > 0
        outcome.copies_made += trial.copies_made
    return outcome


def closed_form(net: Network, scheme: Scheme, years: float) -> float:
    """One chunk's loss probability in ``years`` under independent disk failures only, with
    repair as exponential of the policy's mean (the grace period, then the holder's share
    re-made at the repair rate): the Markov model of ``lossmodel``."""
    computers = net.desktops + net.laptops
    share = net.data_bytes * scheme.stored / max(computers, 1)
    repair_hours = (net.gone_after_s + share / net.repair_rate / max(computers - 1, 1)) / HOUR
    failure = net.afr / YEAR_H
    return loss_probability(scheme.n, scheme.k, failure, 1 / repair_hours, years * YEAR_H)


def report_lines(net: Network, outcomes: list[Outcome], years: float) -> list[str]:
    """The table ``lanvault simulate`` prints."""
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


OBSERVED_ENOUGH_S = 24 * HOUR  # a peer watched for less says little about its absences
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
        help="an erasure code to compare: any K of N shares rebuild a chunk (a model only:"
        " backups use copies)",
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
