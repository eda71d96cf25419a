"""Command line entry point (filled in as capabilities land)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    del argv
    print("lanvault: no commands yet", file=sys.stderr)
    return 2
