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
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .localnet import LocalNet, LocalNetError, free_port
from .mounts import FSNAME, is_live, mounted_fsname, unmount

ROOT = Path(__file__).resolve().parents[1]
NODES = 4  # with 3, a reclaim on one lender would leave degree-2 chunks one copy short
WEB_PORT = 8384  # the dashboard's, if free (else another)


class Demo:
    def __init__(self, home: Path, vault: Path) -> None:
        self.home = home
        self.vault = vault
        self.created: set[int] = set()  # nodes made by this run (their quota is set once)
        self.mount_proc: subprocess.Popen[bytes] | None = None
        self.net = LocalNet(
            home,
            range(1, NODES + 1),
            self.env,
            self.node_args,
            name="node",
            ports=lambda node_id: free_port(17420 + node_id - 1),
            new_session=True,  # Ctrl-C reaches us; we stop the nodes in order
        )

    def node_args(self, node_id: int) -> list[str]:
        # The quota is set at a node's first start only: a later `lanvault reclaim` must stay
        # in force across restarts. The first node serves the web dashboard, on this computer
        # only.
        args = ["--quota", "5GB"] if node_id in self.created else []
        if node_id == 1:
            args += ["--web", f"127.0.0.1:{free_port(WEB_PORT)}"]
        return args

    def dashboard(self) -> str:
        """The web dashboard's address, with its token."""
        return self.lanvault("dashboard", "--dir", str(self.node_dir(1))).stdout.strip()

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
        return self.net.nodes[node_id].state

    def lanvault(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.net.run(1, *args)

    def create(self) -> None:
        def creating(node_id: int) -> None:
            print(f"creating node {node_id} (Argon2id key derivation takes a moment) …", flush=True)
            self.created.add(node_id)

        self.home.mkdir(parents=True, exist_ok=True)
        self.net.create(on_create=creating)

    def stop_node(self, node_id: int) -> int:
        """Stop one node of the running demo (``--stop-node``); the others go on."""
        if self.net.pid(node_id) is None:
            print(f"node {node_id} is not running")
            return 0
        self.net.stop(node_id, 20)
        print(
            f"node {node_id} stopped. The others go on: try a restore now; if it stays away"
            f" longer than its peers' --gone-after (10 minutes), they re-make its copies"
            f" elsewhere. 'scripts/run --start-node {node_id}' starts it again."
        )
        return 0

    def start_node(self, node_id: int) -> int:
        """Start one node of the demo again (``--start-node``)."""
        if self.net.pid(node_id) is not None:
            print(f"node {node_id} is already running")
            return 0
        self.net.start(node_id)
        print(f"node {node_id} is running again; it catches up with the others by itself")
        return 0

    def start(self) -> None:
        self.net.start_all(60)

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
        self.net.stop_all(15)  # ours, and those started again from another terminal

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
        url = self.dashboard()
        origin, token = url.split("/?token=")
        answer = urllib.request.Request(origin + "/api/overview")
        answer.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(answer, timeout=30) as got:
            shown = len(json.loads(got.read())["status"]["nodes"])
        dashboard = shown == NODES
        ok = safe and in_versions and restored and dashboard
        print(
            f"check: written through {self.vault}: at degree 2: {safe}; in versions/: {in_versions};"
            f" restored identical: {restored}; the dashboard shows {shown} nodes"
            f" -> {'OK' if ok else 'FAILED'}"
        )
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except LocalNetError as exc:  # a node would not start, a command failed: said in one line
        raise SystemExit(f"scripts/run: {exc}".rstrip()) from None


def _main(argv: list[str] | None) -> int:
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

The web dashboard (nodes, repair, running backups, snapshots to browse and download):
  {demo.dashboard()}

Press Ctrl-C to unmount and stop every node.""",
            flush=True,
        )
        up = dict.fromkeys(range(1, NODES + 1), True)
        while not stop["now"]:  # a node that stops is said, and the demo goes on
            for node_id in up:
                now = demo.net.pid(node_id) is not None
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
