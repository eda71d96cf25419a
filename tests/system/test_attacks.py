"""Attacks on the promises in docs/security.md, with real node processes and the real CLI.

Run as root; "another local user" is uid 1000 (files and links chowned to it)."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from lanvault.runtime import raise_open_file_limit
from tests.attackers import MALLORY, plant_in_shared_folder

from .procs import ProcessCluster, start_lanvault

pytestmark = pytest.mark.slow


def test_restore_never_writes_through_another_users_symlink(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    home = tmp_path / "home" / "mallory"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "passwd").write_text("mallory's notes\n")
    cluster4.cli(1, "backup", home)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (home / "docs" / "passwd").unlink()
    (home / "docs").rmdir()
    (home / "docs").symlink_to(elsewhere)  # mallory points her folder at a system one
    os.lchown(home / "docs", MALLORY, MALLORY)

    result = cluster4.cli(1, "restore", home / "docs" / "passwd", check=False)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"symlink owned by uid {MALLORY}" in result.stderr
    assert list(elsewhere.iterdir()) == []

    cluster4.cli(1, "restore", home)  # the whole folder in place: its folder comes back real
    assert list(elsewhere.iterdir()) == []
    assert (home / "docs").is_dir() and not (home / "docs").is_symlink()
    assert (home / "docs" / "passwd").read_text() == "mallory's notes\n"

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "to-link").symlink_to(out)  # a destination the user names is followed
    cluster4.cli(1, "restore", home, "--to", tmp_path / "to-link")
    assert (out / "docs" / "passwd").read_text() == "mallory's notes\n"


def test_a_planted_temporary_file_gets_nothing(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    secret = src / "secret.txt"
    secret.write_text("the owner's secret\n")
    os.chown(secret, 1001, 1001)
    secret.chmod(0o600)
    cluster4.cli(1, "backup", secret)
    shared = tmp_path / "shared"
    # The name an older lanvault used for every restore's temporary file:
    planted = plant_in_shared_folder(shared, ".secret.txt.lanvault-restore")
    cluster4.cli(1, "restore", secret, "--to", shared / "secret.txt")
    st = os.stat(shared / "secret.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1001, 1001, 0o600)
    assert (shared / "secret.txt").read_text() == "the owner's secret\n"
    assert planted.read_bytes() == b"" and planted.stat().st_uid == MALLORY
    assert sorted(p.name for p in shared.iterdir()) == [planted.name, "secret.txt"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_flood_of_strangers_neither_stops_a_backup_nor_grows_the_node(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    """1,000 connections from hosts without a certificate (half-open, slowloris, large
    declared frames after an anonymous TLS handshake) against a holder while a member backs
    up 100 MB through it: the backup succeeds, the holder stays small, its log stays short."""
    raise_open_file_limit()
    target = cluster4.nodes[2]
    assert target.proc is not None
    host, port = "127.0.0.1", target.port
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(100_000_000))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    held: list[socket.socket] = []
    before = rss_mb(target.proc.pid)

    def connect(i: int) -> socket.socket | None:
        sock: socket.socket = socket.socket()
        sock.settimeout(5)
        try:
            sock.bind((f"127.0.0.{2 + i % 40}", 0))  # strangers from 40 addresses
            sock.connect((host, port))
            if i % 3 == 1:
                sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never ends
            elif i % 3 == 2:
                sock = anonymous.wrap_socket(sock, server_hostname="x")  # takes the socket over
                sock.sendall((1_000_000).to_bytes(4, "big") + b"x" * 600_000)  # a huge frame
        except OSError:
            sock.close()
            return None
        return sock

    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:  # the holder's RSS every 20 ms while the flood and the backup run
        while not done.is_set():
            samples.append(rss_mb(pid))
            done.wait(0.02)

    pid = target.proc.pid
    sampler = threading.Thread(target=sample)
    sampler.start()
    backup = start_lanvault("backup", src, "--degree", "3", "--dir", cluster4.nodes[1].state)
    try:
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            held = [s for s in pool.map(connect, range(1000)) if s is not None]
        out, err = backup.communicate(timeout=300)
    finally:
        done.set()
        sampler.join()
        for sock in held:
            sock.close()
    peak = max(samples)
    print(f"holder RSS: {before:.0f} MB before, peak {peak:.0f} MB over {len(samples)} samples")
    assert backup.returncode == 0, err
    assert "backed up 1 file" in out
    assert peak < 200, f"holder RSS {before:.0f} MB before, {peak:.0f} MB during the flood"
    restored = tmp_path / "restored.bin"
    cluster4.cli(1, "restore", src, "--to", restored)
    assert restored.read_bytes() == src.read_bytes()
    log = target.log.read_text()
    assert sum("refused" in line for line in log.splitlines()) <= 5  # a summary, not a line each
    assert "Traceback" not in log
