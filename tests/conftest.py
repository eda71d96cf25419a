"""Shared fixtures. Every test runs with the weakened, test-only key derivation."""

from __future__ import annotations

import os

os.environ.setdefault("LANVAULT_TEST_WEAKEN_KDF", "1")

import pytest

from chunkstore.keys import KeyRing, new_master_key


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing.from_master(new_master_key())
