"""Scenario 11's clock: a process started with this folder on PYTHONPATH and
LANVAULT_TEST_CLOCK_FILE set reads its wall clock (``time.time``, ``time.time_ns``) as the real
one plus the seconds written in that file, read again at every call, so the test steps the clock
of a running node as NTP or a person would. The monotonic clock is left alone, as a stepped
wall clock leaves it (libfaketime does the same from outside, but its ``clock_nanosleep`` fails
with EINVAL on a negative offset, which stops Python's ``time.sleep``)."""

from __future__ import annotations

import os
import time

_FILE = os.environ.get("LANVAULT_TEST_CLOCK_FILE")

if _FILE:
    _PATH: str = _FILE
    _real_time, _real_time_ns = time.time, time.time_ns

    def _offset() -> float:
        try:
            with open(_PATH) as handle:
                return float(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
