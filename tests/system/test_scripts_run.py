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


@pytest.mark.slow
@pytest.mark.fuse
def test_the_demo_goes_on_when_a_node_stops(tmp_path: Path) -> None:
    """The first thing a newcomer tries: stop a node, restore, start it again. The demo says
    what happened and goes on; Ctrl-C still stops everything."""
    import queue
    import signal
    import sys
    import threading
    import time

    home, vault = tmp_path / "demo", tmp_path / "vault"
    where = ["--home", str(home), "--vault", str(vault)]
    demo = subprocess.Popen(
        [str(ROOT / "scripts" / "run"), *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert demo.stdout is not None
    out = demo.stdout

    def pump() -> None:
        with out:
            for line in out:
                lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    said: list[str] = []

    def wait_for(text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in said):
            try:
                said.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"the demo never said {text!r}: {''.join(said)}") from None

    def control(*args: str) -> subprocess.CompletedProcess[str]:  # from another terminal
        run = [str(ROOT / "scripts" / "run"), *where, *args]
        return subprocess.run(run, capture_output=True, text=True, timeout=120)

    def lanvault(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LANVAULT_PASSPHRASE": (home / "passphrase").read_text().strip()}
        return subprocess.run(
            [sys.executable, "-m", "lanvault.cli", *args, "--dir", str(home / "node1")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        wait_for("Press Ctrl-C")
        payload = os.urandom(200_000)
        (vault / "kept.bin").write_bytes(payload)
        real = str((home / "vault-data" / "kept.bin").resolve())
        deadline = time.monotonic() + 120
        while True:  # safe: at degree 2 on the lenders
            files = json.loads(lanvault("state", "--json").stdout)["files"]
            entry = next((f for f in files if f["path"] == real), None)
            if entry and entry["complete"] and all(c["degree"] >= 2 for c in entry["chunks"]):
                break
            assert time.monotonic() < deadline, entry
            time.sleep(0.3)
        stopped = control("--stop-node", "3")
        assert stopped.returncode == 0 and "node 3 stopped" in stopped.stdout, stopped
        wait_for("node 3 stopped")  # the demo says so, and goes on
        assert demo.poll() is None
        restored = lanvault("restore", real, "--to", str(tmp_path / "back.bin"))
        assert restored.returncode == 0, restored.stderr
        assert (tmp_path / "back.bin").read_bytes() == payload
        started = control("--start-node", "3")
        assert started.returncode == 0 and "running again" in started.stdout, started
        wait_for("node 3 is running again")
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(120)
        reader.join(30)
        assert code == 0, "".join(said)
    assert not list(home.glob("node*/control.sock"))
    assert not os.path.ismount(vault)
