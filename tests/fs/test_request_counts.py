"""`lanvault mount --request-counts FILE`: the FUSE requests the mount served, and the seconds
spent in them, by kind, written when it stops (what scripts/bench_smallfiles.py reports per file)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Mount

pytestmark = [pytest.mark.fuse]


def test_the_requests_served_are_counted_by_kind(
    mount_with: Callable[..., Mount], tmp_path: Path
) -> None:
    counts = tmp_path / "requests.json"
    mount = mount_with("--request-counts", str(counts))
    mount.wait_ready()
    for i in range(5):
        (mount.mountpoint / f"f{i}").write_bytes(b"x" * 100)
    mount.stop()
    found = json.loads(counts.read_text())
    served, seconds = found["counts"], found["seconds"]
    assert served["create"] == 5 and served["write"] == 5
    assert "changes_allowed" not in served and "settle" not in served  # handlers only
    assert set(seconds) == set(served) and all(s >= 0 for s in seconds.values())
    assert seconds["create"] > 0
