"""A lanvault network of processes on this machine: one way to make, start and stop it.

Each node is a ``lanvault node`` process with a state folder ``ROOT/NAMEn``, its log
``ROOT/NAMEn.log`` and its process id in ``ROOT/NAMEn.pid`` (so that another process, such as
``scripts/run --stop-node``, can find it). The first node makes the network; the others enrol
through it while it runs. A node may run in a network namespace (``prefix``: ``ip netns exec
NAME``) with an address of its own. The demo (``demo.py``), the benchmarks and the tests all
launch their networks with this class.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class LocalNetError(RuntimeError):
    """A node would not start, or a command on it failed (the message says which)."""


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()  # by this process: two nodes never get the same port


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it is free, else a free port below the kernel's ephemeral range.

    A port from bind(("...", 0)) is ephemeral: between closing the probe and the node binding
    it, an outgoing connection of another node may take it as its local port (CI once failed
    with EADDRINUSE this way). Ports below the range are never given to outgoing connections.
    """
    floor = _ephemeral_floor()
    rng = random.Random()
    candidates = [preferred] if preferred else []
    candidates += [rng.randrange(10000, min(floor, 32768)) for _ in range(1000)]
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise LocalNetError("no free port below the ephemeral range")


@dataclass
class LocalNode:
    node_id: int
    state: Path
    port: int
    host: str | None  # --host-id (None: this computer's own)
    log: Path
    pidfile: Path
    ip: str = "127.0.0.1"
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NAME]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


class LocalNet:
    """Nodes ``ids`` under ``root``. ``node_args(node_id)`` are the options each ``lanvault
    node`` starts with; ``env()`` is a process's environment (the passphrase), asked at each
    start or command."""

    def __init__(
        self,
        root: Path,
        ids: Sequence[int],
        env: Callable[[], dict[str, str]],
        node_args: Callable[[int], list[str]],
        *,
        name: str = "n",
        hosts: Sequence[str | None] | None = None,
        ips: Sequence[str] | None = None,
        prefixes: Sequence[list[str]] | None = None,
        ports: Callable[[int], int] = lambda node_id: free_port(),
        new_session: bool = False,
    ) -> None:
        self.root = root
        self.env = env
        self.node_args = node_args
        self.new_session = new_session  # a terminal's Ctrl-C reaches the launcher only
        self.nodes: dict[int, LocalNode] = {}
        self.join_code = ""  # the network's, once this run made its first node
        self.name = name
        for index, node_id in enumerate(ids):
            node = self.add(node_id, hosts[index] if hosts else None, ports)
            if ips:
                node.ip = ips[index]
            if prefixes:
                node.prefix = list(prefixes[index])

    def add(
        self,
        node_id: int,
        host: str | None = None,
        ports: Callable[[int], int] = lambda node_id: free_port(),
    ) -> LocalNode:
        """One more node (not made: ``create`` or a ``lanvault init`` of one's own makes it)."""
        state = self.root / f"{self.name}{node_id}"
        config = state / "config.json"
        if config.exists():  # made by an earlier run: its address stays
            port = int(json.loads(config.read_text())["listen"].rsplit(":", 1)[1])
        else:
            port = ports(node_id)
        node = LocalNode(
            node_id,
            state,
            port,
            host,
            self.root / f"{self.name}{node_id}.log",
            self.root / f"{self.name}{node_id}.pid",
        )
        self.nodes[node_id] = node
        return node

    # -- making the network ----------------------------------------------------------------

    def create(
        self, *, seed_peer: bool = True, on_create: Callable[[int], None] | None = None
    ) -> list[int]:
        """``lanvault init`` every node not made yet (the first makes the network, the others
        enrol through it while it runs); return the ids made."""
        first_id = next(iter(self.nodes))
        first = self.nodes[first_id]
        made: list[int] = []
        started_first = False
        try:
            for node_id, node in self.nodes.items():
                if (node.state / "config.json").exists():
                    continue
                if on_create is not None:
                    on_create(node_id)
                args = ["init", "--dir", str(node.state), "--id", str(node_id)]
                args += ["--listen", node.address, "--json"]
                if node.host is not None:
                    args += ["--host-id", node.host]
                if node_id != first_id:
                    if self.pid(first_id) is None:
                        self.start(first_id)
                        started_first = True
                    code = self.json(first_id, "invite")["join_code"]
                    args += ["--join", code]
                    if seed_peer:
                        args += ["--peer", first.address]
                said = json.loads(self.run(node_id, *args).stdout)
                if node_id == first_id:
                    self.join_code = str(said["join_code"])
                made.append(node_id)
        finally:
            if started_first:
                self.stop(first_id)
        return made

    # -- processes -------------------------------------------------------------------------

    def start(self, node_id: int, *extra: str, timeout: float = 60) -> None:
        """Start node ``node_id`` and wait until it answers on its control socket."""
        node = self.nodes[node_id]
        command = [*node.prefix, sys.executable, "-m", "lanvault.cli", "node"]
        command += ["--dir", str(node.state), *self.node_args(node_id), *extra]
        (node.state / "control.sock").unlink(missing_ok=True)  # left by a killed run
        with open(node.log, "ab") as handle:  # the child keeps its own copy of the descriptor
            node.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        node.pidfile.write_text(f"{node.proc.pid}\n")
        deadline = time.monotonic() + timeout
        while not (node.state / "control.sock").exists():
            if node.proc.poll() is not None:
                tail = node.log.read_text(errors="replace")[-2000:]
                raise LocalNetError(f"node {node_id} exited (see {node.log}):\n{tail}")
            if time.monotonic() > deadline:
                raise LocalNetError(f"node {node_id} did not start (see {node.log})")
            time.sleep(0.05)

    def pid(self, node_id: int) -> int | None:
        """Node ``node_id``'s process id while it runs (started here or by another process
        with this class: its pid file, checked in /proc), else None."""
        node = self.nodes[node_id]
        if node.proc is not None and node.proc.poll() is None:
            return node.proc.pid
        try:
            pid = int(node.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        mine = node.proc is not None and node.proc.pid == pid  # our child, exited (reaped)
        if mine or status == "Z" or os.fsencode(node.state) + b"\0" not in cmdline:
            return None
        return pid

    def running(self) -> list[int]:
        return [node_id for node_id in self.nodes if self.pid(node_id) is not None]

    def stop(self, node_id: int, timeout: float = 10) -> None:
        """SIGTERM (a clean stop), SIGKILL after ``timeout`` seconds."""
        self.stop_many([node_id], timeout)

    def stop_many(self, ids: Sequence[int], timeout: float = 10) -> None:
        """Stop several nodes at once (each told first, then each waited for)."""
        pids = {node_id: pid for node_id in ids if (pid := self.pid(node_id)) is not None}
        for pid in pids.values():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node_id, pid in pids.items():
            while self.pid(node_id) is not None and time.monotonic() < deadline:
                self._reap(node_id, min(0.1, max(0.0, deadline - time.monotonic())))
            if self.pid(node_id) is not None:
                _signal(pid, signal.SIGKILL)
                self._reap(node_id, timeout)
        for node_id in ids:
            self.nodes[node_id].proc = None

    def stop_all(self, timeout: float = 10) -> None:
        self.stop_many(list(self.nodes), timeout)

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash, or a computer switched off."""
        pid = self.pid(node_id)
        if pid is not None:
            _signal(pid, signal.SIGKILL)
            self._reap(node_id, 10)
        (self.nodes[node_id].state / "control.sock").unlink(missing_ok=True)

    def _reap(self, node_id: int, timeout: float) -> None:
        proc = self.nodes[node_id].proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        elif timeout:
            time.sleep(min(timeout, 0.1))

    def start_all(self, timeout: float = 60) -> None:
        for node_id in self.nodes:
            if self.pid(node_id) is None:
                self.start(node_id)
        self.wait_mesh(timeout)

    # -- commands --------------------------------------------------------------------------

    def run(
        self, node_id: int, *args: str | Path, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A lanvault command on ``node_id``'s computer (its network namespace, if any)."""
        result = subprocess.run(
            [*self.nodes[node_id].prefix, sys.executable, "-m", "lanvault.cli", *map(str, args)],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            words = " ".join(map(str, args))
            raise LocalNetError(f"lanvault {words} failed ({result.returncode}): {result.stderr}")
        return result

    def cli(
        self, node_id: int, *args: str | Path, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A lanvault command about ``node_id``'s state (``--dir`` it)."""
        state = self.nodes[node_id].state
        return self.run(node_id, *args, "--dir", state, check=check, timeout=timeout)

    def json(self, node_id: int, *args: str | Path) -> Any:
        return json.loads(self.cli(node_id, *args, "--json").stdout)

    def up_seen_by(self, node_id: int) -> int | None:
        """How many nodes ``node_id`` sees up (itself included); None if it does not answer."""
        result = self.cli(node_id, "status", "--json", check=False, timeout=30)
        if result.returncode != 0:
            return None
        return sum(1 for n in json.loads(result.stdout)["nodes"] if n["up"])

    def wait_mesh(self, timeout: float = 30) -> None:
        """Until every running node sees every running node up."""
        running = self.running()
        deadline = time.monotonic() + timeout
        while not all(self.up_seen_by(i) == len(running) for i in running):
            for node_id in running:
                if self.pid(node_id) is None:
                    log = self.nodes[node_id].log
                    raise LocalNetError(f"node {node_id} stopped (see {log})")
            if time.monotonic() > deadline:
                raise LocalNetError("timed out: the nodes did not all see each other")
            time.sleep(0.3)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
