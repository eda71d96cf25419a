"""The runnable default behind ``scripts/run``: a small lanvault network on this one machine.

Creates (once) four nodes on 127.0.0.1, the owner (with the mount) and three that lend it space,
so that at degree 2 every chunk keeps its degree when one of them reclaims its space. Their
state is under ``.lanvault-demo/`` (ignored by git). It starts them, mounts ``./vault`` (its real files in ``.lanvault-demo/vault-data``), and stays
in the foreground until Ctrl-C, when it unmounts and stops every node cleanly. Running it again
reuses the same network and data. ``--check`` starts everything, writes a file through the mount,
waits until it is at its degree and visible in ``vault/versions/``, restores it, and stops.

A node that stops does not stop the demo: it says so and goes on, as the network does.
``scripts/run --stop-node N`` and ``--start-node N``, from another terminal, stop and start one
node of the running demo (each node's process id is in ``.lanvault-demo/nodeN.pid``), so that a
person can try a failure, a restore without that node, and the repair.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .mounts import FSNAME, is_live, mounted_fsname, unmount

ROOT = Path(__file__).resolve().parents[1]
NODES = 4  # with 3, a reclaim on one lender would leave degree-2 chunks one copy short


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port")


class Demo:
    def __init__(self, home: Path, vault: Path) -> None:
        self.home = home
        self.vault = vault
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.created: set[int] = set()  # nodes made by this run (their quota is set once)
        self.mount_proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "LANVAULT_PASSPHRASE": self.passphrase()}

    def passphrase(self) -> str:
        path = self.home / "passphrase"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, secrets.token_urlsafe(18).encode())
            os.close(fd)
        return path.read_text().strip()

    def node_dir(self, node_id: int) -> Path:
        return self.home / f"node{node_id}"

    def lanvault(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "lanvault.cli", *args],
            env=self.env(),
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            raise SystemExit(f"lanvault {args[0]} failed: {result.stderr.strip()}")
        return result

    def create(self) -> None:
        first = ""
        missing: list[int] = []
        for node_id in range(1, NODES + 1):
            state = self.node_dir(node_id)
            if (state / "config.json").exists():
                first = first or json.loads((state / "config.json").read_text())["listen"]
                continue
            if node_id == 1:
                self._init(1, [])
                first = json.loads((state / "config.json").read_text())["listen"]
            else:
                missing.append(node_id)
        if not missing:
            return
        # The others enrol through node 1 (it holds the network's key), which must run.
        admin = self._spawn(1)
        try:
            self._wait_serving(admin, 1)
            for node_id in missing:
                code = json.loads(
                    self.lanvault("invite", "--json", "--dir", str(self.node_dir(1))).stdout
                )["join_code"]
                self._init(node_id, ["--join", code, "--peer", first])
        finally:
            admin.terminate()
            admin.wait(30)

    def _init(self, node_id: int, extra: list[str]) -> None:
        print(f"creating node {node_id} (Argon2id key derivation takes a moment) …", flush=True)
        self.created.add(node_id)
        address = f"127.0.0.1:{_free_port(17420 + node_id - 1)}"
        state = str(self.node_dir(node_id))
        self.lanvault("init", "--dir", state, "--id", str(node_id), "--listen", address, *extra)

    def _wait_serving(self, proc: subprocess.Popen[bytes], node_id: int) -> None:
        deadline = time.monotonic() + 60
        state = str(self.node_dir(node_id))
        while self.lanvault("status", "--json", "--dir", state, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = self.home / f"node{node_id}.log"
                raise SystemExit(f"node {node_id} did not start (see {log})")
            time.sleep(0.2)

    def _spawn(self, node_id: int) -> subprocess.Popen[bytes]:
        with open(self.home / f"node{node_id}.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lanvault.cli",
                    "node",
                    "--dir",
                    str(self.node_dir(node_id)),
                    # The quota is set at a node's first start only: a later
                    # `lanvault reclaim` must stay in force across restarts.
                    *(["--quota", "5GB"] if node_id in self.created else []),
                ],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the nodes in order
            )
        self.pidfile(node_id).write_text(f"{proc.pid}\n")
        return proc

    def pidfile(self, node_id: int) -> Path:
        return self.home / f"node{node_id}.pid"

    def running_pid(self, node_id: int) -> int | None:
        """Node ``node_id``'s process id while it runs (started by this run or by
        ``--start-node`` from another terminal), else None."""
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            return proc.pid
        try:
            pid = int(self.pidfile(node_id).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        mine = proc is not None and proc.pid == pid  # our child, exited (and reaped)
        if mine or state == "Z" or os.fsencode(self.node_dir(node_id)) + b"\0" not in cmdline:
            return None
        return pid

    def stop_node(self, node_id: int) -> int:
        """Stop one node of the running demo (``--stop-node``); the others go on."""
        pid = self.running_pid(node_id)
        if pid is None:
            print(f"node {node_id} is not running")
            return 0
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self.running_pid(node_id) is not None:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        print(
            f"node {node_id} stopped. The others go on: try a restore now; if it stays away"
            f" longer than its peers' --gone-after (10 minutes), they re-make its copies"
            f" elsewhere. 'scripts/run --start-node {node_id}' starts it again."
        )
        return 0

    def start_node(self, node_id: int) -> int:
        """Start one node of the demo again (``--start-node``)."""
        if self.running_pid(node_id) is not None:
            print(f"node {node_id} is already running")
            return 0
        proc = self._spawn(node_id)
        self._wait_serving(proc, node_id)
        print(f"node {node_id} is running again; it catches up with the others by itself")
        return 0

    def start(self) -> None:
        for node_id in range(1, NODES + 1):
            self.procs[node_id] = self._spawn(node_id)
        deadline = time.monotonic() + 60
        while True:
            status = self.lanvault("status", "--json", "--dir", str(self.node_dir(1)), check=False)
            if (
                status.returncode == 0
                and sum(n["up"] for n in json.loads(status.stdout)["nodes"]) == NODES
            ):
                return
            for node_id, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"node {node_id} stopped; see {self.home}/node{node_id}.log")
            if time.monotonic() > deadline:
                raise SystemExit(f"the nodes did not find each other; see {self.home}/node*.log")
            time.sleep(0.3)

    def mount(self) -> None:
        data = self.home / "vault-data"
        data.mkdir(parents=True, exist_ok=True)
        self.vault.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.vault):  # left behind by a run stopped uncleanly
            unmount(self.vault)
        with open(self.home / "mount.log", "ab") as log:
            self.mount_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lanvault.cli",
                    "mount",
                    str(data),
                    str(self.vault),
                    "--dir",
                    str(self.node_dir(1)),
                ],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not is_live(self.vault):
            if self.mount_proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mounting {self.vault} failed; see {self.home}/mount.log")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.mount_proc is not None and self.mount_proc.poll() is None:
            self.mount_proc.send_signal(signal.SIGTERM)
            try:
                self.mount_proc.wait(15)
            except subprocess.TimeoutExpired:
                self.mount_proc.kill()
        if mounted_fsname(self.vault) == FSNAME:  # dead (killed) or alive
            unmount(self.vault)
        running = {n: pid for n in range(1, NODES + 1) if (pid := self.running_pid(n))}
        for pid in running.values():  # ours, and those started again from another terminal
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for node_id in running:
            while self.running_pid(node_id) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            pid = self.running_pid(node_id)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    def check(self) -> int:
        """Write through the mount, wait until safe and in versions/, restore, compare."""
        payload = os.urandom(300_000)
        name = f"check-{secrets.token_hex(4)}.bin"
        (self.vault / name).write_bytes(payload)
        node1 = str(self.node_dir(1))
        real = (self.home / "vault-data" / name).resolve()
        deadline = time.monotonic() + 60
        safe = False
        while time.monotonic() < deadline and not safe:
            state = json.loads(self.lanvault("state", "--json", "--dir", node1).stdout)
            entry = next((f for f in state["files"] if f["path"] == str(real)), None)
            safe = bool(
                entry and entry["complete"] and all(c["degree"] >= 2 for c in entry["chunks"])
            )
            time.sleep(0.3)
        in_versions = (self.vault / "versions" / "latest" / name).read_bytes() == payload
        with tempfile.TemporaryDirectory(dir=self.home) as tmp:
            self.lanvault("restore", str(real), "--to", str(Path(tmp) / name), "--dir", node1)
            restored = (Path(tmp) / name).read_bytes() == payload
        (self.vault / name).unlink()
        ok = safe and in_versions and restored
        print(
            f"check: written through {self.vault}: at degree 2: {safe}; in versions/: {in_versions};"
            f" restored identical: {restored} -> {'OK' if ok else 'FAILED'}"
        )
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/run", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="start, back up and restore a file, stop"
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("LANVAULT_DEMO_DIR", ROOT / ".lanvault-demo")),
    )
    parser.add_argument(
        "--vault", type=Path, default=ROOT / "vault", help="where to mount the folder"
    )
    control = parser.add_mutually_exclusive_group()
    for option, what in (
        (
            "--stop-node",
            "stop node N of the running demo (from another terminal): the others go on",
        ),
        ("--start-node", "start node N of the running demo again"),
    ):
        control.add_argument(option, type=int, metavar="N", choices=range(1, NODES + 1), help=what)
    args = parser.parse_args(argv)
    demo = Demo(args.home.absolute(), args.vault.absolute())
    if args.stop_node or args.start_node:
        if not (demo.node_dir(1) / "config.json").exists():
            raise SystemExit(f"no demo network in {demo.home}: start one with scripts/run")
        if args.stop_node:
            return demo.stop_node(args.stop_node)
        return demo.start_node(args.start_node)
    demo.create()
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        demo.start()
        demo.mount()
        if args.check:
            return demo.check()
        node1 = demo.node_dir(1)
        print(
            f"""
lanvault demo network: {NODES} nodes on 127.0.0.1, state in {demo.home}
(passphrase in {demo.home}/passphrase; logs in {demo.home}/node*.log and mount.log)

{demo.vault} is mounted: whatever you save there is backed up within seconds.
Try, in another terminal:
  cp -r ~/Documents {demo.vault}/
  ls {demo.vault}/versions/          # every snapshot, as plain folders
  export LANVAULT_DIR={node1}
  .venv/bin/lanvault backup ~/Pictures --degree 2   # plain backups work too
  .venv/bin/lanvault status
  .venv/bin/lanvault state
  .venv/bin/lanvault versions {demo.vault}/Documents/SOME-FILE   # every version of it
  .venv/bin/lanvault restore {demo.vault}/Documents --at 10m       # as it was 10 minutes ago
  .venv/bin/lanvault reclaim 0 --dir {demo.node_dir(2)}
Try a failure and the repair:
  scripts/run --stop-node 3     # the others go on; restore something, look at status
  scripts/run --start-node 3

Press Ctrl-C to unmount and stop every node.""",
            flush=True,
        )
        up = dict.fromkeys(range(1, NODES + 1), True)
        while not stop["now"]:  # a node that stops is said, and the demo goes on
            for node_id in up:
                now = demo.running_pid(node_id) is not None
                if now != up[node_id]:
                    up[node_id] = now
                    print(
                        f"node {node_id} is running again"
                        if now
                        else f"node {node_id} stopped (see {demo.home}/node{node_id}.log);"
                        f" the others go on. 'scripts/run --start-node {node_id}' starts it"
                        " again.",
                        flush=True,
                    )
            time.sleep(0.5)
        print("\nunmounting and stopping the nodes …")
        return 0
    finally:
        demo.stop()


if __name__ == "__main__":
    raise SystemExit(main())
