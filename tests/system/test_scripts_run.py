"""`scripts/run --check` works from this checkout: it creates, starts, uses and stops a network."""

from __future__ import annotations

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
    assert not list((tmp_path / "demo").glob("node*/control.sock"))
    assert not os.path.ismount(tmp_path / "vault")
