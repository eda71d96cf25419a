"""``lanvault simulate``: a discrete-event simulator of a lanvault network over years, to choose a
degree (or a k-of-n code) with numbers.

Computers fail for good (annual failure rate, exponential; replaced by an empty one after
``replace_days``), laptops go away for a while (a rate per year, an exponential duration),
several computers can fail at once (a site event: fire, theft, one batch of disks), and copies
rot unseen until the holder's next scrub. The data is ``sample_chunks`` chunks standing for
``data_bytes``, placed by lanvault's own placement (``node.placement.choose_targets``, weighted
rendezvous hashing over computers), and kept by lanvault's own repair policy
(``node.repair.repair_decision``, and ``node.share_repair.share_decision`` for a code's
shares: copies on holders down but not yet gone count, nothing is re-made before
``--gone-after``; the lowest live holder re-makes the missing copies at
``repair_rate`` bytes per second, the ``NodeConfig`` defaults). A chunk is lost when fewer
than ``k`` good copies are left on computers that still exist (``k = 1`` for plain copies).

Each trial is seeded from ``seed`` and its number: a run repeats exactly. The result is the
share of trials that lost anything within ``years`` (with its Wilson 95 % interval) and the
bytes lost per year (mean and a normal 95 % interval). ``exponential_repair`` replaces the
policy's timing by an exponential delay of the same mean: the case ``lossmodel`` solves in
closed form, which the tests compare.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from dataclasses import dataclass, field

from node.node import NodeConfig
from node.placement import Candidate, choose_targets
from node.repair import Repair, repair_decision
from node.share_repair import ShareDecision, share_decision

from .lossmodel import loss_probability, wilson

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
            if self.scheme.k > 1:  # a code: shares, one per holder (node.share_repair's policy)
                rebuild = share_decision(
                    self.scheme.k,
                    self.scheme.n,
                    live | remembered,
                    len((down - gone) - remembered),
                )
                if rebuild is not ShareDecision.REBUILD or not live:
                    continue
            elif (
                repair_decision(self.scheme.n, live, remembered, down - gone) is not Repair.REPAIR
                or not live
            ):
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
