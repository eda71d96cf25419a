#!/usr/bin/env python3
"""The plot of docs/durability.md: what each degree (and code) buys in a typical office and a
home, from ``lanvault simulate``'s own simulator and its closed form, in one seeded run.

For each network (an office of 6 computers, 2 of them laptops; a home of 3, one a laptop),
without and with one event every ten years that takes two computers at once, it simulates
--trials years of every scheme (seed --seed: the same numbers every time) and draws:
  * the share of simulated years that lost anything, with its Wilson 95 % interval (a scheme
    that lost nothing is drawn at the interval's top, as an arrow: "at most this");
  * the closed form for one chunk (independent disk failures only, ``lanvault/lossmodel.py``).
It prints the same numbers as a table, and writes the PNG (default docs/durability.png).

Usage: scripts/plot_durability.py [--trials 400] [--seed 1] [--out docs/durability.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: a file
import matplotlib.pyplot as plt

from lanvault.simulate import Network, Outcome, Scheme, closed_form, simulate

ROOT = Path(__file__).resolve().parent.parent
FLOOR = 1e-13  # the plot's bottom: closed forms below it are drawn there

NETWORKS: list[tuple[str, Network, list[Scheme]]] = [
    (
        "office: 4 desktops, 2 laptops",
        Network(desktops=4, laptops=2),
        [Scheme(1), Scheme(2), Scheme(3), Scheme(4, 2), Scheme(5, 3)],
    ),
    (
        "office, two computers lost together\nonce in ten years",
        Network(desktops=4, laptops=2, site_events_per_year=0.1, site_size=2),
        [Scheme(1), Scheme(2), Scheme(3), Scheme(4, 2), Scheme(5, 3)],
    ),
    (
        "home: 2 desktops, 1 laptop",
        Network(desktops=2, laptops=1),
        [Scheme(1), Scheme(2), Scheme(3, 2)],
    ),
    (
        "home, two computers lost together\nonce in ten years",
        Network(desktops=2, laptops=1, site_events_per_year=0.1, site_size=2),
        [Scheme(1), Scheme(2), Scheme(3, 2)],
    ),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=400, help="simulated years per scheme")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "durability.png")
    args = parser.parse_args()

    results: list[tuple[str, Network, list[Outcome]]] = []
    for title, net, schemes in NETWORKS:
        outcomes = []
        for scheme in schemes:
            print(f"{title.splitlines()[0]}: {scheme} …", file=sys.stderr, flush=True)
            outcomes.append(simulate(net, scheme, trials=args.trials, seed=args.seed))
        results.append((title, net, outcomes))

    figure, axes = plt.subplots(1, len(results), figsize=(15, 4.8), sharey=True)
    print(
        f"{'network':<40} {'scheme':<9} {'stored':>6} {'P(loss, 1 y)':>12} {'95 % interval':>17}"
        f" {'closed form':>11}"
    )
    for axis, (title, net, outcomes) in zip(axes, results, strict=True):
        # The codes are the simulator's model: backups store copies (issue 19, part 2).
        names = [str(o.scheme) + ("\n(model)" if o.scheme.k > 1 else "") for o in outcomes]
        xs = list(range(len(outcomes)))
        for x, outcome in zip(xs, outcomes, strict=True):
            low, high = outcome.p_interval
            exact = closed_form(net, outcome.scheme, 1.0)
            print(
                f"{title.splitlines()[0]:<40} {outcome.scheme!s:<9} {outcome.scheme.stored:>5.2f}x"
                f" {outcome.p_loss:>12.4f} [{low:.4f}, {high:.4f}] {exact:>11.2e}"
            )
            if outcome.lost_trials:
                axis.errorbar(
                    [x],
                    [outcome.p_loss],
                    yerr=[[outcome.p_loss - low], [high - outcome.p_loss]],
                    fmt="o",
                    color="tab:red",
                    capsize=4,
                    label="simulated: share of years with a loss (95 %)" if x == 0 else None,
                )
            else:
                axis.plot(
                    [x],
                    [high],
                    marker="v",
                    color="tab:green",
                    linestyle="none",
                    label="simulated: no loss, at most (95 %)" if x == 1 else None,
                )
            axis.plot(
                [x],
                [max(exact, FLOOR)],
                marker="_",
                markersize=18,
                color="tab:blue",
                linestyle="none",
                label="closed form, one chunk, independent failures" if x == 0 else None,
            )
        axis.set_xticks(
            xs,
            [f"{n}\n{o.scheme.stored:.2g}x stored" for n, o in zip(names, outcomes, strict=True)],
            fontsize=8,
        )
        axis.set_yscale("log")
        axis.set_ylim(FLOOR / 3, 1.5)
        axis.set_title(title, fontsize=9)
        axis.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("probability of losing data within a year")
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(
        f"What a degree buys (lanvault simulate, {args.trials} simulated years each, seed"
        f" {args.seed}; disks lost 5 %/year, laptops away 20x/year for 48 h)",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0.07, 1, 0.95))
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
