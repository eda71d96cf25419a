"""The durability simulator: checked against the closed-form Markov model where one exists,
reproducible from its seed, and running lanvault's own repair policy (nothing is re-made for a
computer away for less than --gone-after)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from lanvault.lossmodel import loss_probability, wilson
from lanvault.simulate import YEAR_H, Network, Scheme, Trial, simulate
from lanvault.simulate_cli import observed_network

FAILURE = 1e-3  # per hour: high, so that losses are common enough to count in a test
REPAIR_HOURS = 50.0
YEARS = 0.2
# Independent failures, exponential repair starting at once, spares always there.
MARKOV_CASE = Network(
    desktops=10,
    laptops=0,
    afr=FAILURE * YEAR_H,
    rot_per_copy_year=0,
    replace_days=0.1,
    gone_after_s=0.0,
    repair_interval_s=1e-3,
    data_bytes=1e9,
)


@pytest.mark.parametrize(("n", "k", "seed"), [(2, 1, 5), (3, 1, 9), (4, 2, 5), (3, 2, 9)])
def test_the_simulator_agrees_with_the_closed_form(n: int, k: int, seed: int) -> None:
    exact = loss_probability(n, k, FAILURE, 1 / REPAIR_HOURS, YEARS * YEAR_H)
    run = simulate(
        MARKOV_CASE,
        Scheme(n, k),
        years=YEARS,
        trials=4000,
        sample_chunks=1,
        seed=seed,
        exponential_repair=REPAIR_HOURS,
    )
    low, high = wilson(run.lost_trials, run.trials, z=2.576)  # 99 %
    assert low <= exact <= high, (n, k, exact, run.p_loss)


def test_the_check_can_fail_without_repairs() -> None:
    """The same network with repairs that never finish is far from the closed form."""
    exact = loss_probability(3, 1, FAILURE, 1 / REPAIR_HOURS, YEARS * YEAR_H)
    run = simulate(
        MARKOV_CASE, Scheme(3), years=YEARS, trials=2000, sample_chunks=1, exponential_repair=1e9
    )
    assert wilson(run.lost_trials, run.trials, z=2.576)[0] > 5 * exact
    no_repair = (1 - math.exp(-FAILURE * YEARS * YEAR_H)) ** 3  # three copies, none re-made
    assert run.p_loss == pytest.approx(no_repair, abs=0.03)


def test_the_closed_form_matches_hand_computed_cases() -> None:
    hours = 1000.0
    # No redundancy to repair from: the first of n failures loses the chunk.
    assert loss_probability(3, 3, 1e-3, 1.0, hours) == pytest.approx(1 - math.exp(-3e-3 * hours))
    # One copy: repair cannot help.
    assert loss_probability(1, 1, 1e-3, 10.0, hours) == pytest.approx(1 - math.exp(-1.0))
    # Faster repair, more copies: less loss.
    slow, fast = (loss_probability(2, 1, 1e-3, r, hours) for r in (0.01, 0.1))
    assert fast < slow
    assert loss_probability(3, 1, 1e-3, 0.01, hours) < slow


def test_a_run_repeats_exactly_from_its_seed() -> None:
    net = Network(desktops=4, laptops=2, afr=2.0, site_events_per_year=1.0, site_size=2)
    first, again, other = (
        simulate(net, Scheme(2), years=1, trials=20, sample_chunks=100, seed=s) for s in (3, 3, 4)
    )
    assert (first.bytes_lost, first.copies_made) == (again.bytes_lost, again.copies_made)
    assert (first.bytes_lost, first.copies_made) != (other.bytes_lost, other.copies_made)


def test_nothing_is_remade_for_a_laptop_away_less_than_the_grace_period() -> None:
    """lanvault's repair policy: down is not gone."""
    quick = Network(
        desktops=3,
        laptops=1,
        afr=0.0,
        rot_per_copy_year=0,
        laptop_away_per_year=50,
        laptop_away_hours=0.05,
        gone_after_s=10 * 3600.0,  # far longer than any of its absences
    )
    assert simulate(quick, Scheme(2), years=1, trials=5, sample_chunks=200).copies_made == 0
    away = Network(
        desktops=3,
        laptops=1,
        afr=0.0,
        rot_per_copy_year=0,
        laptop_away_per_year=50,
        laptop_away_hours=48,
        gone_after_s=600.0,
    )
    made = simulate(away, Scheme(2), years=1, trials=5, sample_chunks=200).copies_made
    assert made > 0


def test_more_copies_lose_less_when_computers_fail_together() -> None:
    """A site event takes two of six computers at once, twice a year on average: degree 2
    loses the chunks whose both copies were there; degree 3 does not."""
    net = Network(desktops=6, laptops=0, afr=0.0, site_events_per_year=2.0, site_size=2)
    two = simulate(net, Scheme(2), years=1, trials=100, sample_chunks=300)
    three = simulate(net, Scheme(3), years=1, trials=100, sample_chunks=300)
    assert two.p_loss > 0.5 and three.p_loss == 0.0
    assert sum(two.bytes_lost) > 0 and sum(three.bytes_lost) == 0


def test_copies_waiting_for_a_computer_go_to_its_replacement() -> None:
    """Three computers, three copies: after a disk is lost nothing can be re-made until its
    replacement joins (two days later); then it gets its copies at once, as the repair pass
    every 30 s finds it."""
    net = Network(desktops=3, laptops=0, afr=0.0, rot_per_copy_year=0, replace_days=2)
    trial = Trial(net, Scheme(3), 50, random.Random(7))
    trial.fail_at(1.0, 1)
    trial.run(0.01)  # 87.6 hours
    assert not trial.lost
    assert trial.copies_made == 50
    for holders in trial.holders:
        assert len(holders - {1}) == 3 and max(trial.computers) in holders


def test_the_closed_forms_docs_durability_states_are_the_models() -> None:
    text = " ".join((Path(__file__).parents[1] / "docs" / "durability.md").read_text().split())
    stated = "closed form " + ", ".join(
        f"{loss_probability(n, k, FAILURE, 1 / REPAIR_HOURS, YEARS * YEAR_H):.4f}"
        for n, k in ((2, 1), (3, 1), (3, 2), (4, 2))
    )
    assert stated in text, stated


def test_the_network_observed_by_status_gives_its_laptops_and_their_absences() -> None:
    day = 24 * 3600.0
    me = {"id": 1, "computer": "desk-1", "self": True}

    def peer(
        node_id: int, computer: str, observed: float, uptime: float, times: int
    ) -> dict[str, object]:
        away = observed * (1 - uptime)
        return {
            "id": node_id,
            "computer": computer,
            "observed_s": observed,
            "uptime": uptime,
            "times_away": times,
            "away_s": away,
        }

    # Watched for ten days: one laptop up 60 % of the time, away 4 times (once every 2.5 days).
    nodes = [
        me,
        peer(2, "desk-2", 10 * day, 0.999, 1),
        peer(3, "desk-3", 10 * day, 1.0, 0),
        peer(4, "laptop", 10 * day, 0.6, 4),
    ]
    seen = observed_network(nodes, laptops=2, away_per_year=20, away_hours=48)
    assert (seen.desktops, seen.laptops) == (3, 1)
    assert seen.away_per_year == pytest.approx(4 / (10 / 365))
    assert seen.away_hours == pytest.approx(0.4 * 10 * 24 / 4)  # 24 h each time
    assert "observed: 1 of 4 computers" in seen.note
    # Two nodes on one computer: it is up while either is.
    nodes.append(peer(5, "laptop", 10 * day, 0.95, 1))
    assert observed_network(nodes, 2, 20, 48).laptops == 0
    # Watched for an hour: the options' figures, and the note says so.
    young = [me, peer(2, "desk-2", 3600, 1.0, 0), peer(3, "laptop", 3600, 0.5, 1)]
    seen = observed_network(young, laptops=1, away_per_year=20, away_hours=48)
    assert (seen.desktops, seen.laptops, seen.away_per_year, seen.away_hours) == (2, 1, 20, 48)
    assert "not observed for a day" in seen.note
