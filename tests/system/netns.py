"""Several "computers" on one machine: network namespaces joined by veth pairs to a bridge.

Each computer is a namespace with one interface (``eth0``) on 10.231.N.0/24 and a multicast
route, so LAN discovery works as on a real switch. The bridge lives in its own namespace, so
nothing touches the host's network. ``link_down``/``link_up`` unplug and replug a computer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def netns_available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"lvprobe{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "del", probe)
    except subprocess.CalledProcessError as exc:
        return f"ip netns does not work here: {exc.stderr.strip()}"
    return None


@dataclass
class Lan:
    tag: str
    subnet: int
    computers: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"lv{self.tag}sw"

    def ip(self, index: int) -> str:
        return f"10.231.{self.subnet}.{index + 1}"

    def create(self, count: int) -> None:
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / self.tag).write_text(str(os.getpid()))  # before anything a sweep could see
        run("ip", "netns", "add", self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for index in range(count):
            name = f"lv{self.tag}c{index}"
            run("ip", "netns", "add", name)
            self.computers.append(name)
            run(
                "ip",
                "link",
                "add",
                f"lv{self.tag}p{index}",
                "type",
                "veth",
                "peer",
                "name",
                f"lv{self.tag}q{index}",
            )
            run("ip", "link", "set", f"lv{self.tag}p{index}", "netns", name)
            run("ip", "link", "set", f"lv{self.tag}q{index}", "netns", self.switch)
            run("ip", "-n", name, "link", "set", f"lv{self.tag}p{index}", "name", "eth0")
            run("ip", "-n", name, "addr", "add", f"{self.ip(index)}/24", "dev", "eth0")
            run("ip", "-n", name, "link", "set", "eth0", "up")
            run("ip", "-n", name, "link", "set", "lo", "up")
            run("ip", "-n", name, "route", "add", "224.0.0.0/4", "dev", "eth0")
            run("ip", "-n", self.switch, "link", "set", f"lv{self.tag}q{index}", "master", "br0")
            run("ip", "-n", self.switch, "link", "set", f"lv{self.tag}q{index}", "up")

    def prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.computers[index]]

    def shape(self, index: int, rate: str) -> None:
        """Limit a computer's link to ``rate`` (e.g. ``1gbit``) each way with ``tc tbf``: its
        own interface's sending side, and the switch port's (what it receives)."""
        for namespace, device in (
            (self.computers[index], "eth0"),
            (self.switch, f"lv{self.tag}q{index}"),
        ):
            run(
                "ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device,
                "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms",
            )  # fmt: skip

    def link_down(self, index: int) -> None:
        run("ip", "-n", self.switch, "link", "set", f"lv{self.tag}q{index}", "down")

    def link_up(self, index: int) -> None:
        run("ip", "-n", self.switch, "link", "set", f"lv{self.tag}q{index}", "up")

    def destroy(self) -> None:
        for name in [*self.computers, self.switch]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        (OWNERS / self.tag).unlink(missing_ok=True)


# Who made each LAN: a file per tag holding the making process's id, so that a sweep removes
# only what a dead run left, never the namespaces of a run going on beside it (a CI run's sweep
# once cut every computer of the fault suite's partition scenario running at the same time).
OWNERS = Path("/run/lanvault-netns")
_NAME = re.compile(r"^lv(?P<tag>.+?)(?:sw|c\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_alive(tag: str) -> bool:
    try:
        return _alive(int((OWNERS / tag).read_text()))
    except (OSError, ValueError):
        return False


def sweep_stale(prefix: str = "lv") -> None:
    """Remove namespaces left behind by an earlier run that was killed (its maker is gone);
    those of a run still going on are left alone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        found = _NAME.match(name) if name.startswith(prefix) else None
        if found is None or _owner_alive(found["tag"]):
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        (OWNERS / found["tag"]).unlink(missing_ok=True)
