#!/usr/bin/env python3
"""Write docs/reliability.md from the fault and scale suite's last figures.

scripts/test tests/faults          # or scripts/test --full
scripts/reliability_report.py      # merges build/reliability.json, writes the document
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults.report import DOCUMENT, KEPT_RESULTS, ROOT, load, merge, render


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Write docs/reliability.md from the suite's last figures."
    )
    parser.add_argument("--results", type=Path, default=ROOT / "build" / "reliability.json")
    args = parser.parse_args()
    merged = merge(load(KEPT_RESULTS), load(args.results))
    KEPT_RESULTS.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    DOCUMENT.write_text(render(merged))
    print(f"{DOCUMENT.relative_to(ROOT)}: {len(merged)} scenario tests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
