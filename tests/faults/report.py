"""docs/reliability.md, written from the scenario list and the figures the suite measured.

``scripts/reliability_report.py`` merges a run's results (build/reliability.json) into
docs/reliability-results.json (kept in the repository: the last figures of each scenario
test) and writes the document from it; tests/test_docs.py checks that the document is what
this module writes from those files, so neither is edited by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .registry import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "reliability.md"
KEPT_RESULTS = ROOT / "docs" / "reliability-results.json"

HEADER = """# Reliability: faults and scale

The fault and scale suite lives in `tests/faults/`. `scripts/test` runs each scenario at a
small size; `scripts/test --full` runs them at the sizes below and the long ones (marked
*full only*). Every run draws a seed (printed, and recorded with the figures);
`LANVAULT_SEED=N scripts/test [--full] TEST` repeats it, and a seed that once failed is listed
in the scenario's marker (`@pytest.mark.scenario(KEY, seeds=(N,))`) so that it runs every
time after.

Each scenario writes what it measured to `build/reliability.json`;
`scripts/reliability_report.py` keeps the newest figures of each test in
`docs/reliability-results.json` and writes this file from them (do not edit it by hand).
"""


def merge(kept: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The newest record of each test; a full run's record is not replaced by a fast one."""
    merged = dict(kept)
    for test, record in new.items():
        old = merged.get(test)
        if old is not None and old.get("full") and not record.get("full") and old["passed"]:
            continue
        merged[test] = record
    return merged


def _figures(record: dict[str, Any]) -> str:
    parts = []
    for name, figure in sorted(record["figures"].items()):
        unit = f" {figure['unit']}" if figure["unit"] else ""
        parts.append(f"{name}: {figure['value']:g}{unit}")
    return "; ".join(parts) or "(no figures)"


def render(results: dict[str, Any]) -> str:
    lines = [HEADER]
    for scenario in SCENARIOS:
        lines.append(f"## {scenario.number}. {scenario.title}\n")
        lines.append(f"Key `{scenario.key}`. **Criterion:** {scenario.criterion}.\n")
        records = sorted(
            (r for r in results.values() if r["scenario"] == scenario.key),
            key=lambda r: str(r["test"]),
        )
        if not records:
            lines.append("Not yet in the suite.\n")
            continue
        for record in records:
            size = "full size" if record["full"] else "fast subset"
            outcome = "passed" if record["passed"] else "**FAILED**"
            lines.append(
                f"- `{record['test']}`: {outcome} on {record['date']} ({size}, seed"
                f" {record['seed']}, {record['seconds']:g} s). {_figures(record)}."
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.exists() else {}
