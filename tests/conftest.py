"""Shared fixtures. Every test runs with the weakened, test-only key derivation."""

from __future__ import annotations

import os

os.environ.setdefault("LANVAULT_TEST_WEAKEN_KDF", "1")

import pytest
from hypothesis import HealthCheck, settings

from chunkstore.keys import KeyRing, new_master_key

# A shared 2-core machine runs the suite: per-example timing says nothing about correctness.
settings.register_profile(
    "lanvault", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("lanvault")


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing.from_master(new_master_key())


@pytest.fixture
def slow_autojump_clock() -> object:
    """A MockClock that jumps only after 50 ms of real idleness.

    The nodes do disk I/O on worker threads; an autojump threshold of 0 would jump the clock
    while a thread works and fire timeouts that real time would never fire.
    """
    import trio.testing

    return trio.testing.MockClock(autojump_threshold=0.05)
