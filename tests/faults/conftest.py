"""The fault and scale suite's harness: a seed per run, figures written to a results file.

Each scenario test is marked ``@pytest.mark.scenario(KEY)`` and takes the ``run`` fixture:
``run.seed`` (``LANVAULT_SEED`` reproduces a run; a failure prints the line to rerun it),
``run.rng`` seeded from it, ``run.full`` (``--full``: the issue's sizes, else a fast subset),
``run.figure(name, value, unit)`` to record what it measured. At the end of each scenario its
outcome, seed and figures are merged into the results file (``LANVAULT_RESULTS``, by default
build/reliability.json), from which ``scripts/reliability_report.py`` writes
docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.conftest import cluster4  # noqa: F401  (the scenarios use it too)

from .registry import BY_KEY

ROOT = Path(__file__).resolve().parents[2]


def results_path() -> Path:
    return Path(os.environ.get("LANVAULT_RESULTS", ROOT / "build" / "reliability.json"))


class ScenarioRun:
    def __init__(self, key: str, seed: int, full: bool) -> None:
        self.key = key
        self.seed = seed
        self.full = full
        self.rng = random.Random(seed)
        self.figures: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()

    def size(self, fast: int, full: int) -> int:
        """The fast subset's size, or the issue's with --full."""
        return full if self.full else fast

    def figure(self, name: str, value: float, unit: str = "") -> None:
        self.figures[name] = {"value": round(value, 3), "unit": unit}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    run = getattr(item, "_lanvault_run", None)
    if run is not None:
        setattr(item, f"_lanvault_{report.when}", report)
        if report.failed:
            report.sections.append(
                (
                    "scenario seed",
                    f"reproduce with: LANVAULT_SEED={run.seed} scripts/test"
                    f"{' --full' if run.full else ''} '{item.nodeid}'",
                )
            )
    return report


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A scenario runs with a fresh seed, and again with each seed that once failed
    (``@pytest.mark.scenario(KEY, seeds=(...))``): a failing seed becomes a regression test."""
    marker = metafunc.definition.get_closest_marker("scenario")
    if marker is None or "run" not in metafunc.fixturenames:
        return
    seeds = tuple(marker.kwargs.get("seeds", ()))
    if seeds:
        metafunc.parametrize(
            "run", [None, *seeds], indirect=True, ids=["new", *(f"seed{s}" for s in seeds)]
        )


@pytest.fixture
def run(request: pytest.FixtureRequest) -> Iterator[ScenarioRun]:
    marker = request.node.get_closest_marker("scenario")
    assert marker is not None, "a scenario test is marked @pytest.mark.scenario(KEY)"
    key = marker.args[0]
    assert key in BY_KEY, f"{key} is not in tests/faults/registry.py"
    regression = getattr(request, "param", None)
    if regression is not None:
        seed = int(regression)
    elif os.environ.get("LANVAULT_SEED"):
        seed = int(os.environ["LANVAULT_SEED"])
    else:
        seed = random.SystemRandom().randrange(2**32)
    run = ScenarioRun(key, seed, bool(request.config.getoption("--full")))
    request.node._lanvault_run = run
    print(f"scenario {key}: seed {seed}{' (full)' if run.full else ''}")
    yield run
    call = getattr(request.node, "_lanvault_call", None)
    record = {
        "scenario": key,
        "test": request.node.nodeid,
        "seed": seed,
        "full": run.full,
        "passed": bool(call is not None and call.passed),
        "seconds": round(time.monotonic() - run.started, 1),
        "date": time.strftime("%Y-%m-%d"),
        "figures": run.figures,
    }
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results[request.node.nodeid] = record
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1, sort_keys=True))
    temporary.replace(path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """At full size a scenario may take an hour (the soak): the per-test limit follows."""
    if config.getoption("--full"):
        for item in items:
            if item.get_closest_marker("scenario"):
                item.add_marker(pytest.mark.timeout(7200))
