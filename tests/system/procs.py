"""Real lanvault processes on real TCP sockets (TLS), driven through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lanvault.localnet import ROOT, LocalNet, free_port

from .netns import Lan

__all__ = ["ROOT", "ProcessCluster", "env", "free_port", "lanvault", "start_lanvault"]


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


class ProcessCluster(LocalNet):
    """A network of lanvault processes for a test (``lanvault.localnet``): made at once, with
    the suite's passphrase, each computer named ``computer-N``, and options that make faults
    heal quickly."""

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
        self.gone_after = gone_after
        self.repair_interval = repair_interval
        ids = list(range(first_id, first_id + count))
        super().__init__(
            root,
            ids,
            env,
            self._node_args,
            hosts=hosts or [f"computer-{node_id}" for node_id in ids],
            ips=ips,
            prefixes=prefixes,
        )
        self.create(seed_peer=seed_peer)

    @classmethod
    def on_lan(
        cls, root: Path, lan: Lan, computers: list[int], gone_after: str, seed_peer: bool = True
    ) -> ProcessCluster:
        """A node on each of ``computers`` (the LAN's computer of node 1, of node 2, ...: one
        computer may run several), named for its computer, reached at its address."""
        return cls(
            root,
            len(computers),
            hosts=[f"computer-{c}" for c in computers],
            gone_after=gone_after,
            ips=[lan.ip(c) for c in computers],
            prefixes=[lan.prefix(c) for c in computers],
            seed_peer=seed_peer,
        )

    def _node_args(self, node_id: int) -> list[str]:
        args = ["--quota", "2GB", "--gone-after", self.gone_after, "--heartbeat", "0.5"]
        return [*args, "--repair-interval", self.repair_interval]

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
