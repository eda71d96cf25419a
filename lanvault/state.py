"""A node's state directory: config, keys, TLS credentials, store, catalog, control socket.

```
STATE/config.json        node id, network id, listen address, peers, defaults
STATE/keys/master.key    the master key wrapped under the passphrase (safe to copy anywhere)
STATE/keys/master.raw    the master key itself, owner-readable only, so the daemon starts unattended
STATE/keys/verifier      checks passphrase proofs for the recovery kit (one-way from the passphrase)
STATE/tls/ca.pem         the network's CA certificate
STATE/tls/node.pem/.key  this node's certificate and key
STATE/tls/join-code      the join code (owner-readable only: it lets computers in)
STATE/tls/pins.json      certificate fingerprints pinned per node id
STATE/store/             the chunk store this node lends
STATE/catalog.sqlite3    this node's own backups (versions, holders, owed deletes)
STATE/catalog-copy.sqlite3  the catalog's copy on the peers: its chunks and who holds them
STATE/outbox/            sealed chunks a mount cut aside, kept until their version is safe
STATE/unsent/            sealed chunks a backup could not yet bring to their degree (up to 1 GiB)
STATE/restores/          which temporary file each interrupted restore made (resumed only from it)
STATE/control.sock       the daemon's control socket (owner only)
STATE/mounts.json        mountpoint -> SOURCE of every folder mounted (+ mounts.lock to update it)
STATE/peers.json         the peers this node has met (id, address, computer): dialed again after a restart
STATE/web-token          the web dashboard's token (owner-readable only: it shows and downloads files)
```
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import msgpack

from chunkstore.atomic import write_atomic
from chunkstore.keys import (
    derive_wrapping_key,
    kdf_params,
    new_master_key,
    unwrap_with_key,
    wrap_master_key,
)
from chunkstore.recovery import kit_verifier
from chunkstore.retention import DEFAULT_POLICY
from node.identity import (
    IdentityError,
    Invitation,
    NodeCredentials,
    create_network_ca,
    decode_join_code,
    decode_legacy_join_code,
    encode_join_code,
    issue_node_credentials,
    pem_fingerprint,
)

DEFAULT_PORT = 7420


class UsageError(Exception):
    """Wrong usage: exit status 2."""


class CommandError(Exception):
    """A failure the message explains: exit status 1."""


def default_state_dir() -> Path:
    env = os.environ.get("LANVAULT_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "lanvault"


def default_host_id() -> str:
    """A stable name for this computer: nodes with the same host id share one computer."""
    env = os.environ.get("LANVAULT_HOST_ID")
    if env:
        return env
    with contextlib.suppress(OSError):
        machine = Path("/etc/machine-id").read_text().strip()
        if machine:
            return f"{socket.gethostname()}-{machine[:8]}"
    return socket.gethostname()


@dataclass
class Config:
    node_id: int
    network_id: str
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    advertise: str = ""
    peers: list[str] = field(default_factory=list)
    quota: int = 10 * 1000**3
    gone_after: float = 600.0
    host_id: str = ""
    default_degree: int = 2
    heartbeat_interval: float = 1.0
    down_after: float = 5.0
    repair_interval: float = 30.0
    scrub_interval: float = 24 * 3600.0
    discovery: bool = True
    relay: bool = True  # a backup's copies go down a chain of holders, each passing them on
    version_interval: float = 2.0  # least seconds between two versions of one file (mount)
    burst_wait: float = 15.0  # most seconds a closed file waits for a burst of changes to pause
    retention: str = DEFAULT_POLICY  # which snapshots and versions are kept (see retention.py)
    prune_interval: float = 3600.0  # how often the retention policy is applied
    metrics: str = ""  # HOST:PORT of the Prometheus endpoint; "" = off
    web: str = ""  # HOST:PORT of the web dashboard; "" = off
    bucket: str = ""  # s3://NAME[/PREFIX]: this node keeps the chunks it holds there (cloud tier)
    s3_endpoint: str = ""  # URL of a non-AWS S3-compatible service ("" = AWS)
    s3_region: str = ""

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Config:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)  # type: ignore[arg-type]


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def socket_path(self) -> Path:
        return self.root / "control.sock"

    @property
    def store_path(self) -> Path:
        return self.root / "store"

    @property
    def outbox_path(self) -> Path:
        return self.root / "outbox"

    @property
    def unsent_path(self) -> Path:
        return self.root / "unsent"

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.sqlite3"

    def exists(self) -> bool:
        return self.config_path.exists()

    def require(self) -> None:
        if not self.exists():
            raise CommandError(
                f"{self.root} is not a lanvault state directory (run 'lanvault init --dir {self.root} --id N')"
            )

    def load_config(self) -> Config:
        self.require()
        try:
            return Config.from_json(json.loads(self.config_path.read_text()))
        except (ValueError, TypeError) as exc:
            raise CommandError(f"{self.config_path} is damaged: {exc}") from None

    def save_config(self, config: Config) -> None:
        write_atomic(self.config_path, json.dumps(asdict(config), indent=2).encode())

    @property
    def mounts_path(self) -> Path:
        return self.root / "mounts.json"

    def mounts(self) -> dict[str, str]:
        """Mountpoint -> SOURCE of every folder this node has mounted (kept after unmounting)."""
        try:
            data = json.loads(self.mounts_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def record_mount(self, mountpoint: Path, source: Path) -> None:
        # Two mounts of this node may start at once: read, change and write under a lock, or
        # one entry is lost (and both would write the same temporary file).
        lock_fd = os.open(self.root / "mounts.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            mounts = self.mounts()
            mounts[str(mountpoint)] = str(source)
            write_atomic(self.mounts_path, json.dumps(mounts, indent=2).encode())
        finally:
            os.close(lock_fd)  # releases the lock

    def mount_exclusions(self, source: str, patterns: list[str] | None = None) -> list[str]:
        """The patterns a mount of ``source`` leaves out: with ``patterns``, they replace the
        ones kept for it (an empty list drops them); the mount's catch-up uses them too, so
        they are kept across mounts (STATE/mount-exclusions.json)."""
        path = self.root / "mount-exclusions.json"
        lock_fd = os.open(self.root / "mounts.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                kept: dict[str, list[str]] = json.loads(path.read_text())
            except FileNotFoundError:
                kept = {}
            if patterns is None:
                return list(kept.get(source, []))
            if patterns:
                kept[source] = list(patterns)
            else:
                kept.pop(source, None)
            write_atomic(path, json.dumps(kept, indent=2).encode())
            return list(patterns)
        finally:
            os.close(lock_fd)

    def backup_path(self, path: Path) -> str:
        """The path the catalog knows ``path`` by: SOURCE's, for a path inside a mount.

        Backups made through a mount are recorded under SOURCE; people name them by the
        folder they see (the mountpoint), mounted or not.
        """
        absolute = os.path.normpath(path.absolute())
        mountpoint = self._mount_holding(absolute)
        if mountpoint is None:
            return absolute
        return self.mounts()[mountpoint] + absolute[len(mountpoint) :]

    def shown_path(self, catalog_path: str) -> str:
        """The path people see a catalog path by: in the mount (the one mounted now, else the
        one recorded last) for a file backed up through a mount whose SOURCE is elsewhere."""
        best: tuple[bool, str, str] | None = None  # (mounted now, mountpoint, source)
        for mountpoint, source in self.mounts().items():
            inside = catalog_path == source or catalog_path.startswith(source.rstrip("/") + "/")
            if inside and mountpoint != source:
                candidate = (os.path.ismount(mountpoint), mountpoint, source)
                if best is None or candidate[0] >= best[0]:
                    best = candidate
        if best is None:
            return catalog_path
        return best[1] + catalog_path[len(best[2]) :]

    def in_live_mount(self, path: Path) -> bool:
        """Whether ``path`` lies in one of this node's folders, mounted right now."""
        mountpoint = self._mount_holding(os.path.normpath(path.absolute()))
        return mountpoint is not None and os.path.ismount(mountpoint)

    def _mount_holding(self, absolute: str) -> str | None:
        for mountpoint in sorted(self.mounts(), key=len, reverse=True):
            if absolute == mountpoint or absolute.startswith(mountpoint.rstrip("/") + "/"):
                return mountpoint
        return None

    def master_key(self) -> bytes:
        try:
            return (self.root / "keys" / "master.raw").read_bytes()
        except FileNotFoundError:
            raise CommandError(
                f"{self.root}/keys/master.raw is missing (run 'lanvault recover')"
            ) from None

    def web_token(self) -> str:
        """The web dashboard's token, made on first use and kept (owner-readable only)."""
        path = self.root / "web-token"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            token = secrets.token_urlsafe(24)
            write_atomic(path, token.encode())
            return token

    def wrapped_key(self) -> bytes:
        return (self.root / "keys" / "master.key").read_bytes()

    def credentials(self) -> NodeCredentials:
        tls = self.root / "tls"
        config = self.load_config()
        return NodeCredentials(
            node_id=config.node_id,
            cert_pem=(tls / "node.pem").read_bytes(),
            key_pem=(tls / "node.key").read_bytes(),
            ca_cert_pem=(tls / "ca.pem").read_bytes(),
        )

    def identity(self) -> Identity | None:
        """The recovery kit's content, or None for a node made before kits existed."""
        try:
            verifier = (self.root / "keys" / "verifier").read_bytes()
        except FileNotFoundError:
            return None
        tls = self.root / "tls"
        return Identity(
            master=self.master_key(),
            wrapped=self.wrapped_key(),
            verifier=verifier,
            ca_cert=(tls / "ca.pem").read_bytes(),
            ca_key=self.ca_key(),
            node_cert=(tls / "node.pem").read_bytes(),
            node_key=(tls / "node.key").read_bytes(),
            config=self.config_path.read_bytes(),
        )

    def tls_files(self) -> tuple[str, str]:
        return str(self.root / "tls" / "node.pem"), str(self.root / "tls" / "node.key")

    def ca_key(self) -> bytes | None:
        """The network CA's key, on an administrator node only (None elsewhere)."""
        tls = self.root / "tls"
        try:
            return (tls / "ca.key").read_bytes()
        except FileNotFoundError:
            pass
        try:  # a node made by the first lanvault kept the key inside its old join code
            return decode_legacy_join_code((tls / "join-code").read_text()).key_pem
        except (FileNotFoundError, IdentityError):
            return None

    @property
    def roster_path(self) -> Path:
        return self.root / "tls" / "roster"

    @property
    def invites_path(self) -> Path:
        return self.root / "invites"


def read_passphrase(passphrase_file: str | None, confirm: bool = False) -> str:
    """From --passphrase-file, LANVAULT_PASSPHRASE, or the terminal (asked twice if confirming)."""
    if passphrase_file:
        try:
            text = Path(passphrase_file).read_text()
        except OSError as exc:
            raise CommandError(
                f"cannot read passphrase file {passphrase_file}: {exc.strerror}"
            ) from None
        phrase = text.rstrip("\r\n")
    elif "LANVAULT_PASSPHRASE" in os.environ:
        phrase = os.environ["LANVAULT_PASSPHRASE"]
    elif sys.stdin.isatty():
        phrase = getpass.getpass("Passphrase: ")
        if confirm and getpass.getpass("Passphrase again: ") != phrase:
            raise CommandError("the passphrases do not match")
    else:
        raise CommandError(
            "a passphrase is needed: use --passphrase-file FILE or LANVAULT_PASSPHRASE, or run on a terminal"
        )
    if not phrase:
        raise CommandError("the passphrase must not be empty")
    return phrase


def initialize(
    root: Path,
    node_id: int,
    passphrase: str,
    join_code: str | None,
    listen: str | None,
    peers: list[str],
    host_id: str | None,
    master_key: bytes | None = None,
) -> tuple[Config, str | None]:
    """Create a state directory; everything is written aside and moved into place at the end.

    Without a join code: a new network, this node its administrator (it keeps the CA key and
    the roster), and a join code for the next computer is returned. With one: the node's key
    is made here and its certificate requested from the administrator named in the code (or
    ``peers``), which must be running.
    """
    if StateDir(root).exists():
        raise CommandError(f"{root} already holds node state; refusing to overwrite it")
    if not 0 <= node_id < 2**32:
        raise UsageError(f"--id must be in 0..{2**32 - 1}")
    listen = listen or f"127.0.0.1:{DEFAULT_PORT}"
    ca_key: bytes | None = None
    if join_code:
        import trio  # here: every other command starts without it

        from node.enrolment import enrol

        invitation = decode_join_code(join_code)
        try:
            enrolled = trio.run(enrol, invitation, node_id, peers)
        except IdentityError as exc:
            raise CommandError(str(exc)) from None
        network_id, ca_cert = invitation.network_id, invitation.ca_cert_pem
        node_cert, node_key, roster = enrolled.cert_pem, enrolled.key_pem, enrolled.roster
    else:
        ca = create_network_ca()
        creds = issue_node_credentials(ca, node_id)
        network_id, ca_cert, ca_key = ca.network_id, ca.cert_pem, ca.key_pem
        node_cert, node_key = creds.cert_pem, creds.key_pem
        from node.roster import Roster

        first = Roster(network_id, 1, {node_id: pem_fingerprint(node_cert)})
        roster = first.sign(ca.key_pem)
    master = master_key or new_master_key()
    wrapped = wrap_master_key(master, passphrase)
    wrapping = derive_wrapping_key(passphrase, kdf_params(wrapped))
    unwrap_with_key(wrapped, wrapping)  # never leave a key we could not open again
    config = Config(
        node_id=node_id,
        network_id=network_id,
        listen=listen,
        peers=peers,
        host_id=host_id or default_host_id(),
    )
    install_state(
        root,
        Identity(
            master=master,
            wrapped=wrapped,
            verifier=kit_verifier(wrapping),
            ca_cert=ca_cert,
            ca_key=ca_key,
            node_cert=node_cert,
            node_key=node_key,
            config=json.dumps(asdict(config), indent=2).encode(),
        ),
        roster=roster,
    )
    if ca_key is None:
        return config, None
    return config, invite(StateDir(root))


def invite(state: StateDir, lifetime: float | None = None) -> str:
    """A join code for one more computer (this node must be an administrator), valid for
    ``lifetime`` seconds (``enrolment.INVITE_LIFETIME`` unless said)."""
    from node.enrolment import INVITE_LIFETIME, Invites

    ca_key = state.ca_key()
    if ca_key is None:
        raise CommandError(
            f"node {state.load_config().node_id} keeps no network key: run 'lanvault invite'"
            " on an administrator node (the network's first node)"
        )
    config = state.load_config()
    secret = Invites(state.invites_path).create(INVITE_LIFETIME if lifetime is None else lifetime)
    address = reachable_address(config.advertise or config.listen)
    ca_cert = (state.root / "tls" / "ca.pem").read_bytes()
    return encode_join_code(Invitation(config.network_id, ca_cert, secret, (address,)))


def remove_node(state: StateDir, node_id: int) -> int:
    """Take ``node_id`` off the network's roster (this node must be an administrator); the
    new roster's version. Nodes that are up learn it from this one within seconds."""
    from node.roster import RosterBook, roster_lock, write_roster

    ca_key = state.ca_key()
    if ca_key is None:
        raise CommandError(
            "this node keeps no network key: run 'lanvault remove-node' on an administrator"
            " node (the network's first node)"
        )
    if node_id == state.load_config().node_id:
        raise CommandError("a node cannot remove itself")
    book = RosterBook(state.roster_path, (state.root / "tls" / "ca.pem").read_bytes())
    with roster_lock(state.roster_path):
        book.refresh()
        if book.roster is None:
            raise CommandError("this node keeps no roster (made by an older lanvault)")
        try:
            roster = book.roster.without(node_id)
        except IdentityError as exc:
            raise CommandError(str(exc)) from None
        write_roster(state.roster_path, roster.sign(ca_key))
    return roster.version


def reachable_address(listen: str) -> str:
    """``listen`` as another computer would dial it (a wildcard becomes this host's address)."""
    host, _, port = listen.rpartition(":")
    if host not in ("", "0.0.0.0", "::", "[::]"):
        return listen
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        return f"{probe.getsockname()[0]}:{port}"
    return f"127.0.0.1:{port}"


@dataclass(frozen=True)
class Identity:
    """Everything a node's state directory holds that cannot be re-created from the peers'
    chunks: its keys, its credentials in the network, its config (the recovery kit's content).
    An administrator's includes the network CA's key."""

    master: bytes
    wrapped: bytes
    verifier: bytes
    ca_cert: bytes
    ca_key: bytes | None
    node_cert: bytes
    node_key: bytes
    config: bytes

    def credentials_blob(self) -> bytes:
        """What the recovery kit seals (the master key itself stays out: it is wrapped)."""
        fields: dict[str, bytes] = {
            "ca_cert": self.ca_cert,
            "node_cert": self.node_cert,
            "node_key": self.node_key,
            "config": self.config,
        }
        if self.ca_key is not None:
            fields["ca_key"] = self.ca_key
        packed: bytes = msgpack.packb(fields, use_bin_type=True)
        return packed

    @classmethod
    def from_kit(
        cls, master: bytes, wrapped: bytes, verifier: bytes, credentials: bytes
    ) -> Identity:
        try:
            fields = msgpack.unpackb(credentials, raw=False)
            ca_key: bytes | None
            if "join_code" in fields:  # a kit of the first lanvault: the CA inside its code
                legacy = decode_legacy_join_code(str(fields["join_code"]))
                ca_cert, ca_key = legacy.cert_pem, legacy.key_pem
            else:
                ca_cert = bytes(fields["ca_cert"])
                ca_key = bytes(fields["ca_key"]) if "ca_key" in fields else None
            return cls(
                master=master,
                wrapped=wrapped,
                verifier=verifier,
                ca_cert=ca_cert,
                ca_key=ca_key,
                node_cert=bytes(fields["node_cert"]),
                node_key=bytes(fields["node_key"]),
                config=bytes(fields["config"]),
            )
        except Exception:  # any damage means the same: this kit cannot be used
            raise CommandError("the recovery kit is damaged") from None


def install_state(
    root: Path, identity: Identity, marker: str | None = None, roster: bytes = b""
) -> None:
    """Write a state directory aside, then move it into place (``root`` must not hold state)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lanvault-init-", dir=root.parent))
    try:
        os.chmod(staging, 0o700)
        (staging / "keys").mkdir(mode=0o700)
        (staging / "tls").mkdir(mode=0o700)
        write_atomic(staging / "keys" / "master.key", identity.wrapped)
        write_atomic(staging / "keys" / "master.raw", identity.master)
        write_atomic(staging / "keys" / "verifier", identity.verifier)
        write_atomic(staging / "tls" / "ca.pem", identity.ca_cert)
        if identity.ca_key is not None:
            write_atomic(staging / "tls" / "ca.key", identity.ca_key)
        if roster:
            write_atomic(staging / "tls" / "roster", roster)
        write_atomic(staging / "tls" / "node.pem", identity.node_cert)
        write_atomic(staging / "tls" / "node.key", identity.node_key)
        write_atomic(staging / "config.json", identity.config)
        if marker:
            write_atomic(staging / marker, b"")
        if root.exists():
            if any(root.iterdir()):
                raise CommandError(f"{root} exists and is not empty; refusing to mix state into it")
            root.rmdir()
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
