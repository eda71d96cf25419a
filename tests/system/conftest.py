from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import ProcessCluster


@pytest.fixture
def cluster4(tmp_path: Path) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(tmp_path / "net", 4, gone_after="6s")
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()
        cluster.assert_no_tracebacks()
