"""Real lanvault processes on real TCP sockets (TLS), driven through the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed out by this process, so two nodes of one cluster never get the same one.
_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range.

    A port from bind(("...", 0)) is ephemeral: between closing the probe and the node binding
    it, an outgoing connection of another node may take it as its local port (CI once failed
    with EADDRINUSE this way). Ports below the range are never given to outgoing connections.
    """
    floor = _ephemeral_floor()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(10000, min(floor, 32768))
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


def env() -> dict[str, str]:
    return {
        **os.environ,
        "LANVAULT_PASSPHRASE": "correct horse battery staple",
        "LANVAULT_TEST_WEAKEN_KDF": "1",
        "PYTHONUNBUFFERED": "1",
    }


def start_lanvault(*args: str | Path) -> subprocess.Popen[str]:
    """A `lanvault` command running in the background (to interrupt, or to act meanwhile)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lanvault.cli", *map(str, args)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lanvault(
    *args: str | Path,
    check: bool = True,
    timeout: float = 120,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "lanvault.cli", *map(str, args)],
        cwd=ROOT,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"lanvault {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


@dataclass
class ProcNode:
    node_id: int
    state: Path
    port: int
    host: str
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(default_factory=Path)
    ip: str = "127.0.0.1"
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NAME]

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


class ProcessCluster:
    def __init__(
        self,
        root: Path,
        count: int,
        hosts: list[str] | None = None,
        gone_after: str = "10m",
        ips: list[str] | None = None,
        prefixes: list[list[str]] | None = None,
        seed_peer: bool = True,
        first_id: int = 1,
        repair_interval: str = "2",  # the tests' (the default is 30 s): faults heal quickly
    ) -> None:
        self.root = root
        self.gone_after = gone_after
        self.repair_interval = repair_interval
        self.nodes: dict[int, ProcNode] = {}
        for index in range(count):
            node_id = first_id + index
            host = hosts[index] if hosts else f"computer-{node_id}"
            node = ProcNode(
                node_id, root / f"n{node_id}", free_port(), host, log=root / f"n{node_id}.log"
            )
            if ips:
                node.ip = ips[index]
            if prefixes:
                node.prefix = prefixes[index]
            self.nodes[node_id] = node
        # The first node makes the network; the others enrol through it while it runs.
        first = self.nodes[first_id]
        for node_id, node in self.nodes.items():
            args: list[str | Path] = ["init", "--dir", node.state, "--id", str(node_id)]
            args += ["--listen", node.address, "--host-id", node.host, "--json"]
            if node_id != first_id:
                code = self.json(first_id, "invite")["join_code"]
                args += ["--join", code]
                if seed_peer:
                    args += ["--peer", first.address]
            out = json.loads(self._run(node, args).stdout)
            if node_id == first_id:
                self.join_code = out["join_code"]
                if count > 1:
                    self.start(first_id)
        self.stop(first_id)

    def _run(self, node: ProcNode, args: list[str | Path]) -> subprocess.CompletedProcess[str]:
        """A lanvault command on ``node``'s computer (its network namespace, if any)."""
        result = subprocess.run(
            [*node.prefix, sys.executable, "-m", "lanvault.cli", *map(str, args)],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(f"lanvault {args[0]} failed: {result.stderr.strip()}")
        return result

    def stop(self, node_id: int) -> None:
        proc = self.nodes[node_id].proc
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.nodes[node_id].proc = None

    def start(self, node_id: int, *extra: str) -> None:
        node = self.nodes[node_id]
        command = [
            *node.prefix,
            sys.executable,
            "-m",
            "lanvault.cli",
            "node",
            "--dir",
            str(node.state),
        ]
        command += ["--quota", "2GB", "--gone-after", self.gone_after, "--heartbeat", "0.5"]
        command += ["--repair-interval", self.repair_interval, *extra]
        with open(node.log, "ab") as handle:  # the child keeps its own copy of the descriptor
            node.proc = subprocess.Popen(
                command, cwd=ROOT, env=env(), stdout=handle, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while not (node.state / "control.sock").exists():
            if node.proc.poll() is not None:
                raise AssertionError(f"node {node_id} exited: {node.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"node {node_id} did not start")
            time.sleep(0.05)

    def start_all(self) -> None:
        for node_id in self.nodes:
            self.start(node_id)
        self.wait_mesh()

    def kill(self, node_id: int) -> None:
        proc = self.nodes[node_id].proc
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        (self.nodes[node_id].state / "control.sock").unlink(missing_ok=True)

    def stop_all(self) -> None:
        for node in self.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.proc:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(10)

    def cli(
        self, node_id: int, *args: str | Path, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return lanvault(*args, "--dir", self.nodes[node_id].state, check=check, timeout=timeout)

    def json(self, node_id: int, *args: str | Path) -> Any:
        return json.loads(self.cli(node_id, *args, "--json").stdout)

    def running(self) -> list[int]:
        return [n for n, node in self.nodes.items() if node.proc and node.proc.poll() is None]

    def wait_mesh(self, timeout: float = 30) -> None:
        running = self.running()
        self.wait(
            lambda: all(
                sum(1 for n in self.json(i, "status")["nodes"] if n["up"]) == len(running)
                for i in running
            ),
            timeout,
            "the nodes did not all see each other",
        )

    @staticmethod
    def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {what}")
            time.sleep(0.3)

    def assert_no_tracebacks(self) -> None:
        """No node logged a traceback (a bug, whatever the test saw from outside)."""
        for node in self.nodes.values():
            log = node.log.read_text() if node.log.exists() else ""
            assert "Traceback" not in log, f"node {node.node_id} logged a traceback:\n{log[-3000:]}"

    def degrees(self, owner: int) -> list[int]:
        state = self.json(owner, "state")
        return [c["degree"] for f in state["files"] for c in f["chunks"]]
