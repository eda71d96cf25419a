"""`pip install` of this project into a new virtualenv gives a `lanvault` command that works
from anywhere: the package and its data (the dashboard's page) come from the install, not from
this checkout. (Dependencies come from the project's own environment through a path file, so
that the test downloads nothing.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .procs import ROOT, free_port

pytestmark = pytest.mark.slow


def copy_checkout(to: Path) -> None:
    """The files git would give a fresh clone (tracked, and new ones not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (to / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / os.fsdecode(name))


def test_pip_install_gives_a_lanvault_command_that_runs_a_node(tmp_path: Path) -> None:
    checkout, venv, elsewhere = tmp_path / "checkout", tmp_path / "venv", tmp_path / "elsewhere"
    copy_checkout(checkout)
    elsewhere.mkdir()
    # A virtualenv of its own, without pip: this environment's pip installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site] = list((venv / "lib").glob("python3*/site-packages"))
    ours = [p for p in sys.path if p.endswith("site-packages")]  # the project's environment
    (site / "lanvault-test-deps.pth").write_text("\n".join(ours) + "\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install"]
    installed = subprocess.run(
        [*pip, "-q", "--no-deps", "--no-build-isolation", str(checkout)],
        env=clean,
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    shutil.rmtree(checkout)  # whatever runs now runs from the install
    lanvault = venv / "bin" / "lanvault"
    version = subprocess.run(
        [lanvault, "--version"], capture_output=True, text=True, env=clean, cwd=elsewhere
    )
    assert version.returncode == 0 and version.stdout.startswith("lanvault "), version
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import lanvault; print(lanvault.__file__)"],
        capture_output=True,
        text=True,
        env=clean,
        cwd=elsewhere,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(site)), where

    env = clean | {
        "LANVAULT_PASSPHRASE": "correct horse battery staple",
        "LANVAULT_TEST_WEAKEN_KDF": "1",
    }
    state = tmp_path / "state"
    port, web = free_port(), free_port()
    subprocess.run(
        [lanvault, "init", "--dir", state, "--id", "1", "--listen", f"127.0.0.1:{port}"],
        check=True,
        env=env,
        cwd=elsewhere,
        capture_output=True,
    )
    node = subprocess.Popen(
        [lanvault, "node", "--dir", state, "--no-discovery", "--web", f"127.0.0.1:{web}"],
        env=env,
        cwd=elsewhere,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run(
                [lanvault, "status", "--json", "--dir", state],
                capture_output=True,
                text=True,
                env=env,
            )
            if status.returncode == 0:
                break
            assert node.poll() is None and time.monotonic() < deadline, status.stderr
            time.sleep(0.2)
        assert json.loads(status.stdout)["node_id"] == 1
        url = subprocess.run(
            [lanvault, "dashboard", "--dir", state],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.strip()
        origin, token = url.split("/?token=")
        request = urllib.request.Request(origin + "/dashboard.js")
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as answer:  # the package's own data
            assert b"/api/overview" in answer.read()
    finally:
        node.terminate()
        node.wait(30)
