"""`scripts/run --check` works from this checkout: it creates, starts, uses and stops a network."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.fuse
def test_scripts_run_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(ROOT / "scripts" / "run"),
            "--check",
            "--home",
            str(tmp_path / "demo"),
            "--vault",
            str(tmp_path / "vault"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    # Space lent is what the node was last told (as `lanvault reclaim` leaves it), not reset.
    config_path = tmp_path / "demo" / "node2" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["quota"] == 5 * 1000**3
    config["quota"] = 123_000_000
    config_path.write_text(json.dumps(config))
    # Running it again reuses the same network.
    again = subprocess.run(
        [
            str(ROOT / "scripts" / "run"),
            "--check",
            "--home",
            str(tmp_path / "demo"),
            "--vault",
            str(tmp_path / "vault"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "creating node" not in again.stdout
    assert json.loads(config_path.read_text())["quota"] == 123_000_000
    assert not list((tmp_path / "demo").glob("node*/control.sock"))
    assert not os.path.ismount(tmp_path / "vault")
