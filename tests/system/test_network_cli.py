"""The CLI end to end on four real node processes over TLS on loopback."""

from __future__ import annotations

import contextlib
import filecmp
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chunkstore.store import ChunkStore, PutItem
from tests.faults.helpers import copies_on_holders

from .procs import ROOT, ProcessCluster, env, lanvault, start_lanvault

pytestmark = pytest.mark.slow


def make_tree(root: Path, big: int = 0) -> None:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "empty.txt").write_bytes(b"")
    (root / "exact.bin").write_bytes(os.urandom(128_000))
    (root / "docs" / "report.odt").write_bytes(os.urandom(200_001))
    (root / "docs" / "deep" / "naïve name with spaces.txt").write_text("héllo\n" * 1000)
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    for name in cmp.common_files:
        if (a / name).read_bytes() != (b / name).read_bytes():
            return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_cli_end_to_end(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    out = cluster4.cli(1, "backup", src, "--degree", "2").stdout
    assert "backed up 4 files" in out
    assert min(cluster4.degrees(1)) >= 2
    state = cluster4.json(1, "state")
    assert {"node_id", "capacity_bytes", "used_bytes", "files", "stored"} <= state.keys()
    entry = next(f for f in state["files"] if f["path"].endswith("exact.bin"))
    assert len(entry["file_id"]) == 64 and entry["desired_degree"] == 2
    assert [c["size"] for c in entry["chunks"]] == [64_000, 64_000, 0]
    holder_state = cluster4.json(2, "state")
    for stored in holder_state["stored"]:
        assert {"owner", "chunk", "size", "degree"} <= stored.keys()
    human = cluster4.cli(1, "state").stdout
    assert "KB" in human and "degree 2" in human

    status = cluster4.json(3, "status")
    assert len(status["nodes"]) == 4 and all(n["up"] for n in status["nodes"])
    assert status["under_replicated_chunks"] == 0

    dest = tmp_path / "restored"
    cluster4.cli(1, "restore", src, "--to", dest)
    assert same_tree(src, dest)
    mode_src = os.stat(src / "exact.bin")
    mode_dst = os.stat(dest / "exact.bin")
    assert mode_src.st_mtime_ns == mode_dst.st_mtime_ns and mode_src.st_mode == mode_dst.st_mode

    chunks = {c["chunk"] for f in cluster4.json(1, "state")["files"] for c in f["chunks"]}
    said = cluster4.cli(1, "delete", src).stdout
    assert f"({len(chunks)} chunks) from every holder" in said, said
    for node_id in (2, 3, 4):
        # What a holder keeps of node 1 now is its catalog copy, none of the files' chunks.
        assert not chunks & {c["chunk"] for c in cluster4.json(node_id, "state")["stored"]}
    failed = cluster4.cli(1, "restore", src, "--to", tmp_path / "again", check=False)
    assert failed.returncode == 1 and "nothing backed up" in failed.stderr


def test_bad_input_gives_one_line_and_status(cluster4: ProcessCluster, tmp_path: Path) -> None:
    cases: list[tuple[list[str | Path], int, str]] = [
        (["backup", tmp_path / "missing"], 1, "no such file"),
        (["backup", tmp_path, "--degree", "10"], 2, "degree"),
        (["reclaim", "lots"], 2, "invalid size"),
        (["check", "--sample", "0"], 2, "a percentage in (0, 100]"),
        (["check", "--sample", "lots"], 2, "not a percentage"),
        (["restore", tmp_path / "never"], 1, "nothing backed up"),
    ]
    for args, code, text in cases:
        result = cluster4.cli(1, *args, check=False)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr
        assert "Traceback" not in result.stderr
    result = lanvault("state", "--dir", tmp_path / "nowhere", check=False)
    assert result.returncode == 1 and "not a lanvault state directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_kill_holder_during_backup_and_restore(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(40_000_000)
    (src / "big.bin").write_bytes(data)
    backup = start_lanvault("backup", src, "--degree", "2", "--dir", cluster4.nodes[1].state)
    time.sleep(0.4)
    cluster4.kill(3)
    _out, err = backup.communicate(timeout=120)
    assert backup.returncode == 0, err
    # Chunks that were on node 3 come back to degree 2 once it is gone (6 s).
    cluster4.wait(lambda: min(cluster4.degrees(1)) >= 2, 60, "degree restored after kill -9")

    restore = start_lanvault(
        "restore", src, "--to", tmp_path / "out", "--dir", cluster4.nodes[1].state
    )
    time.sleep(0.2)
    cluster4.kill(2)
    _out, err = restore.communicate(timeout=120)
    assert restore.returncode == 0, err
    assert (tmp_path / "out" / "big.bin").read_bytes() == data


def test_a_backup_with_its_holders_down_is_finished_by_the_node(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = {f"f{n}.bin": os.urandom(size) for n, size in enumerate((10, 70_000, 9_000_000))}
    for name, content in data.items():
        (src / name).write_bytes(content)
    for n in (2, 3, 4):
        cluster4.stop(n)
    cluster4.wait(
        lambda: not any(n["up"] for n in cluster4.json(1, "status")["nodes"] if n["id"] != 1),
        60,
        "holders seen down",
    )
    result = cluster4.cli(1, "backup", src, check=False)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "lanvault: 3 of 3 files and 1 of 1 symlinks and folders recorded, not yet at degree 2:"
        " the node makes the missing copies when holders return"
    ), result.stderr
    assert "Traceback" not in result.stderr
    status = cluster4.json(1, "status")
    assert status["pending_backlog"] == 4
    assert status["pending_cannot_complete"] is None  # the holders are away, not missing
    # The file changes before the holders return: what was read is what the node finishes.
    (src / "f2.bin").write_bytes(b"changed before the holders came back")
    for n in (2, 3, 4):
        cluster4.start(n)
    cluster4.wait(lambda: cluster4.json(1, "status")["pending_backlog"] == 0, 120, "finished")
    state = cluster4.json(1, "state")
    assert {f["path"] for f in state["files"]} >= {str(src / name) for name in data}
    for entry in state["files"]:  # the owner's view, and the holders' own stores below
        assert all(c["degree"] >= 2 for c in entry["chunks"]), entry
    assert min(copies_on_holders(cluster4, 1).values()) >= 2
    cluster4.cli(1, "restore", src, "--to", tmp_path / "out")
    for name, content in data.items():
        assert (tmp_path / "out" / name).read_bytes() == content


def test_reclaim_zero_then_every_chunk_at_degree(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, big=3_000_000)
    cluster4.cli(1, "backup", src, "--degree", "2")
    holder = max((2, 3, 4), key=lambda n: cluster4.json(n, "state")["used_bytes"])
    out = cluster4.json(holder, "reclaim", "0")
    # Every chunk goes; the owners' small records (kits, catalog manifests) stay, counted.
    assert out["capacity_bytes"] == 0 and out["used_bytes"] == out["records_bytes"]
    assert cluster4.json(holder, "state")["stored"] == []
    cluster4.wait(lambda: min(cluster4.degrees(1)) >= 2, 30, "degree after reclaim 0")
    dest = tmp_path / "out"
    cluster4.cli(1, "restore", src, "--to", dest)
    assert same_tree(src, dest)


def test_gone_node_is_repaired_and_status_reports_it(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src, big=2_000_000)
    cluster4.cli(1, "backup", src, "--degree", "2")
    victim = max((2, 3, 4), key=lambda n: cluster4.json(n, "state")["used_bytes"])
    cluster4.kill(victim)
    snapshot: dict[str, Any] = {}

    def reported_down() -> bool:
        # One status answer for both checks: a later one may come after the node is declared
        # gone (6 s here) and its copies already re-made.
        status = cluster4.json(1, "status")
        entry = next(n for n in status["nodes"] if n["id"] == victim)
        if not entry["up"] and not entry["gone"]:
            snapshot.update(status)
            return True
        assert entry["up"], "the killed node went from up to gone without being seen down"
        return False

    cluster4.wait(reported_down, 15, "killed node reported down")
    assert snapshot["under_replicated_chunks"] > 0
    # Its presence as observed: away once, now, for the time since it was last heard.
    entry = next(n for n in snapshot["nodes"] if n["id"] == victim)
    assert entry["times_away"] == 1 and 0 < entry["away_s"] <= entry["observed_s"]
    assert entry["uptime"] == pytest.approx(
        1 - entry["away_s"] / entry["observed_s"], abs=0.02
    )  # rounded to 0.1 s
    others = [n for n in snapshot["nodes"] if n["id"] not in (1, victim)]
    assert all(n["times_away"] == 0 and n["uptime"] == 1.0 for n in others)
    cluster4.wait(
        lambda: cluster4.json(1, "status")["under_replicated_chunks"] == 0,
        60,
        "healthy after repair",
    )
    assert min(cluster4.degrees(1)) >= 2


def test_delete_while_holder_down_reaches_it_later(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    cluster4.cli(1, "backup", src, "--degree", "3")
    chunks = {c["chunk"] for f in cluster4.json(1, "state")["files"] for c in f["chunks"]}
    assert chunks <= {c["chunk"] for c in cluster4.json(4, "state")["stored"]}
    cluster4.kill(4)
    time.sleep(2)
    out = cluster4.json(1, "delete", src)
    assert out["pending_holders"] >= 1
    cluster4.start(4)
    cluster4.wait(
        lambda: not chunks & {c["chunk"] for c in cluster4.json(4, "state")["stored"]},
        30,
        "node 4 deleted its copies",
    )


def test_non_member_is_refused_and_writes_nothing(cluster4: ProcessCluster, tmp_path: Path) -> None:
    # A node of another network (its own CA) points at our nodes.
    stranger = ProcessCluster(tmp_path / "other", 1, first_id=9)
    stranger.start(9, "--peer", cluster4.nodes[2].address)
    try:
        src = tmp_path / "src"
        make_tree(src)
        time.sleep(3)
        failed = stranger.cli(9, "backup", src, check=False)
        assert failed.returncode == 1
        for node_id in cluster4.nodes:
            assert cluster4.json(node_id, "state")["stored"] == []
            assert all(n["id"] in cluster4.nodes for n in cluster4.json(node_id, "status")["nodes"])
        log = cluster4.nodes[2].log.read_text()
        assert "refused connections since the last report" in log  # one summary line
    finally:
        stranger.stop_all()


def test_versions_and_restore_at_a_time(cluster4: ProcessCluster, tmp_path: Path) -> None:
    path = tmp_path / "report.txt"
    path.write_text("first draft\n")
    cluster4.cli(1, "backup", path)
    time.sleep(1.5)
    between = time.time()
    time.sleep(1.5)
    path.write_text("second draft, longer\n")
    cluster4.cli(1, "backup", path)
    history = cluster4.json(1, "versions", path)["versions"]
    assert len(history) == 2 and all(v["complete"] for v in history)
    assert "safe" in cluster4.cli(1, "versions", path).stdout
    moment = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(between))
    cluster4.cli(1, "restore", path, "--at", moment, "--to", tmp_path / "old.txt")
    assert (tmp_path / "old.txt").read_text() == "first draft\n"
    cluster4.cli(1, "restore", path, "--to", tmp_path / "new.txt")
    assert (tmp_path / "new.txt").read_text() == "second draft, longer\n"
    bad = cluster4.cli(1, "restore", path, "--at", "yesterday-ish", check=False)
    assert bad.returncode == 2 and "invalid time" in bad.stderr
    assert "no snapshots" in cluster4.cli(1, "versions").stdout


def test_metrics_endpoint_and_status_for_people(cluster4: ProcessCluster, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from .procs import free_port

    port = free_port()
    cluster4.kill(1)
    cluster4.start(1, "--metrics", f"127.0.0.1:{port}")
    cluster4.wait_mesh()
    src = tmp_path / "src"
    make_tree(src, big=500_000)
    cluster4.cli(1, "backup", src)
    # node 1 answers a peer's request for certain: node 2 backs up at degree 3 (of 3 others)
    theirs = tmp_path / "theirs"
    make_tree(theirs, big=1_000)
    cluster4.cli(2, "backup", theirs, "--degree", "3")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["lanvault_peers_up"] == 3
    assert values["lanvault_store_capacity_bytes"] == 2e9
    assert values["lanvault_versions"] >= 4
    assert values["lanvault_last_backup_timestamp_seconds"] > 0
    assert "lanvault_request_seconds_bucket" in text
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)
    assert info.value.code == 404
    info.value.close()
    human = cluster4.cli(1, "status").stdout
    assert "chunks below their degree: 0" in human and "recovery:" in human
    assert sum(1 for line in human.splitlines() if " up " in line) == 4


def test_interrupted_restore_resumes(cluster4: ProcessCluster, tmp_path: Path) -> None:
    import signal

    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(200_000_000)
    (src / "big.bin").write_bytes(data)
    cluster4.cli(1, "backup", src / "big.bin")
    out = tmp_path / "out.bin"

    def partials() -> list[Path]:
        return list(tmp_path.glob(".out.bin.lanvault-*"))

    command = [sys.executable, "-m", "lanvault.cli", "restore", str(src / "big.bin")]
    proc = subprocess.Popen(
        [*command, "--to", str(out), "--dir", str(cluster4.nodes[1].state)],
        cwd=ROOT,
        env=env(),
        # As on a terminal: a shell starting a suite in the background (CI) makes its jobs
        # ignore SIGINT, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Ctrl-C as soon as 2 MB of 200 are in (a poll every 2 ms: a slower one let the whole
    # restore finish first once in CI).
    deadline = time.monotonic() + 60

    def fetched() -> int:
        with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
            return max((p.stat().st_size for p in partials()), default=0)
        return 0

    while fetched() <= 2_000_000:
        assert time.monotonic() < deadline and proc.poll() is None, "restore not under way"
        time.sleep(0.002)
    # The holders pause, so the restore cannot finish before the Ctrl-C lands (in CI it once
    # finished within the few milliseconds between the two).
    holders = [cluster4.nodes[n].proc for n in (2, 3, 4)]
    for holder in holders:
        assert holder is not None
        holder.send_signal(signal.SIGSTOP)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        for holder in holders:
            assert holder is not None
            holder.send_signal(signal.SIGCONT)
    assert proc.returncode == 130 and b"interrupted" in err
    time.sleep(1)
    assert len(partials()) == 1 and not out.exists()  # what was fetched is kept, not half-done
    done = cluster4.json(1, "restore", src / "big.bin", "--to", out)
    assert done["bytes"] == len(data)
    assert out.read_bytes() == data and not partials()
    log = cluster4.nodes[1].log.read_text()
    assert "resuming the restore" in log and "chunks already there" in log


def test_restore_onto_a_full_disk_fails_cleanly(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(5_000_000))
    cluster4.cli(1, "backup", src / "big.bin")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        result = cluster4.cli(1, "restore", src / "big.bin", "--to", small / "out.bin", check=False)
        assert result.returncode == 1, result.stderr
        assert "No space left on device" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not (small / "out.bin").exists()  # nothing half-written in place
        # With room again, the same restore completes (what was written is reused).
        subprocess.run(["mount", "-o", "remount,size=16m", str(small)], check=True)
        cluster4.cli(1, "restore", src / "big.bin", "--to", small / "out.bin")
        assert (small / "out.bin").read_bytes() == (src / "big.bin").read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_file_deleted_during_a_folder_backup_spoils_only_itself(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    big.write_bytes(os.urandom(300_000_000))
    (src / "keep.txt").write_text("still backed up")
    command = [sys.executable, "-m", "lanvault.cli", "backup", str(src)]
    proc = subprocess.Popen(
        [*command, "--dir", str(cluster4.nodes[1].state)],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    cluster4.wait(
        lambda: sum(cluster4.json(n, "state")["used_bytes"] for n in (2, 3, 4)) > 5_000_000,
        60,
        "backup under way",
    )
    big.unlink()  # each batch opens the file again: the next one finds it gone
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    text = err.decode()
    last = text.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("lanvault: 1 of 2 files not backed up") and "No such file" in last
    assert "internal error" not in text and "Traceback" not in text
    versions = cluster4.cli(1, "versions", big, check=False)  # none names the half-read file
    assert versions.returncode == 1 and "no versions" in versions.stderr
    assert len(cluster4.json(1, "versions", src / "keep.txt")["versions"]) == 1  # the rest went on


def test_folder_backup_names_what_it_passes_over(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("kept")
    os.symlink("a.txt", src / "link")
    os.mkfifo(src / "pipe")
    os.mkfifo(src / "pipe2")
    result = cluster4.cli(1, "backup", src)
    assert "backed up 1 file, 1 symlink and 1 folder: 3 new, 0 changed" in result.stdout
    assert "passed over 2 entries that are a FIFO, socket or device" in result.stdout
    data = cluster4.json(1, "backup", src)
    assert data["skipped"] == [str(src / "pipe"), str(src / "pipe2")]
    # Many of them: the count is whole, the list names the first hundred.
    for n in range(150):
        os.mkfifo(src / f"more-{n:03d}")
    data = cluster4.json(1, "backup", src)
    assert data["skipped_count"] == 152 and len(data["skipped"]) == 100
    assert "passed over 152 entries" in cluster4.cli(1, "backup", src).stdout


def test_folder_backup_keeps_symlinks_empty_folders_modes_and_times(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    src = tmp_path / "project"
    (src / "docs" / "drafts").mkdir(parents=True)
    (src / "empty" / "deeper").mkdir(parents=True)
    (src / "docs" / "report.txt").write_text("the report\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the backup")
    os.symlink("docs/report.txt", src / "latest")  # relative, to a file
    os.symlink(outside, src / "elsewhere")  # absolute, to a folder: never followed
    os.symlink("nothing-here", src / "dangling")
    os.chmod(src / "docs" / "drafts", 0o750)
    os.utime(src / "empty" / "deeper", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    os.utime(src / "latest", ns=(1_500_000_000 * 10**9,) * 2, follow_symlinks=False)
    data = cluster4.json(1, "backup", src)
    assert (data["files"], data["symlinks"], data["folders"]) == (1, 3, 5)
    assert data["skipped_count"] == 0

    out = tmp_path / "out"
    data = cluster4.json(1, "restore", src, "--to", out)
    assert (data["files"], data["symlinks"], data["folders"]) == (1, 3, 5)
    assert os.readlink(out / "latest") == "docs/report.txt"
    assert (out / "latest").read_text() == "the report\n"
    assert os.readlink(out / "elsewhere") == str(outside)
    assert os.readlink(out / "dangling") == "nothing-here"
    assert os.lstat(out / "latest").st_mtime_ns == 1_500_000_000 * 10**9
    assert (out / "empty" / "deeper").is_dir() and not any((out / "empty" / "deeper").iterdir())
    assert os.stat(out / "empty" / "deeper").st_mtime_ns == 1_600_000_000 * 10**9
    assert stat.S_IMODE(os.stat(out / "docs" / "drafts").st_mode) == 0o750
    for folder in ("", "docs", "empty"):  # times survive the files written into them
        assert os.stat(out / folder).st_mtime_ns == os.stat(src / folder).st_mtime_ns
    state = cluster4.json(1, "state")
    assert not any("secret" in f["path"] for f in state["files"])  # links are not followed

    # A link restored alone, and a link replaced by a real folder since is left alone.
    alone = cluster4.cli(1, "restore", src / "latest", "--to", tmp_path / "alone")
    assert alone.stdout.startswith("restored 1 symlink (")
    assert os.readlink(tmp_path / "alone") == "docs/report.txt"
    # A symlink where the backup had a folder is replaced: nothing is written through it.
    trap = tmp_path / "trap"
    trap.mkdir()
    os.symlink(outside, trap / "docs")
    cluster4.cli(1, "restore", src, "--to", trap)
    assert not (trap / "docs").is_symlink() and (trap / "docs" / "report.txt").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    (src / "dangling").unlink()
    (src / "dangling").mkdir()
    (src / "dangling" / "new.txt").write_text("new")
    kept = cluster4.cli(1, "restore", src / "dangling")  # in place: the backup knew a link
    assert (src / "dangling" / "new.txt").read_text() == "new"
    assert "left 1 folder where the backup had a symlink" in kept.stdout
    assert str(src / "dangling") in kept.stdout


def test_check_read_data_finds_a_copy_a_holder_altered_and_repairs_it(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    """A holder that alters a copy and files it with a fresh checksum passes its own check;
    only the owner, opening the copy, can tell. check --read-data does, and --repair replaces
    the copy from a good one."""
    src = tmp_path / "src"
    make_tree(src)
    cluster4.cli(1, "backup", src, "--degree", "2")
    chunks = {c["chunk"] for f in cluster4.json(1, "state")["files"] for c in f["chunks"]}
    clean = cluster4.json(1, "check", "--read-data")
    assert clean["read_data_bad_copies"] == [] and clean["read_data_unreadable_copies"] == 0
    assert clean["read_data_chunks"] >= len(chunks)  # the catalog copy's chunks too
    assert clean["read_data_copies_verified"] >= 2 * len(chunks)

    holder = next(n for n in (2, 3, 4) if cluster4.json(n, "state")["stored"])
    cluster4.kill(holder)
    store = ChunkStore.open(cluster4.nodes[holder].state / "store")
    try:
        victim = next(c for c in store.chunks(1) if c.address.hex() in chunks)
        envelope = bytearray(store.get(1, victim.address))
        envelope[-1] ^= 0x01  # in the ciphertext: the AEAD tag no longer matches
        store.delete_many(1, [victim.address])
        store.put_many([PutItem(1, victim.address, bytes(envelope), victim.degree)])
        assert store.check(False).bad == []  # the holder's own check sees nothing wrong
    finally:
        store.close()
    cluster4.start(holder)
    cluster4.wait_mesh()

    found = cluster4.cli(1, "check", "--read-data", check=False)
    assert found.returncode == 1, found.stdout
    assert f"bad copy on node {holder}: chunk {victim.address.hex()[:16]}" in found.stdout
    fixed = cluster4.json(1, "check", "--read-data", "--repair")
    assert len(fixed["read_data_bad_copies"]) == 1
    assert fixed["read_data_copies_dropped"] == 1 and fixed["read_data_copies_made"] == 1
    again = cluster4.json(1, "check", "--read-data")
    assert again["read_data_bad_copies"] == [] and again["read_data_unreadable_copies"] == 0
    half = cluster4.json(1, "check", "--sample", "50")
    assert 0 < half["read_data_chunks"] < clean["read_data_chunks"]
    dest = tmp_path / "restored"
    cluster4.cli(1, "restore", src, "--to", dest)
    assert same_tree(src, dest)


def test_backup_of_several_paths_with_exclusions(cluster4: ProcessCluster, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    make_tree(one)
    make_tree(two)
    (two / "docs" / "deep" / "scratch.tmp").write_text("left out")
    patterns = tmp_path / "excludes"
    patterns.write_text("# not worth keeping\n*.tmp\n")
    out = cluster4.cli(
        1, "backup", one, two, "--exclude", "report.odt", "--exclude-file", patterns
    ).stdout.splitlines()
    assert [line.split(":")[0] for line in out] == [str(one), str(two)]
    assert all("backed up 3 files" in line and "left out by 2 patterns" in line for line in out)
    restored = tmp_path / "out"
    cluster4.cli(1, "restore", two, "--to", restored)
    assert sorted(p.name for p in restored.rglob("*") if p.is_file()) == [
        "empty.txt",
        "exact.bin",
        "naïve name with spaces.txt",
    ]
    bad = cluster4.cli(1, "backup", one, "--exclude", "[oops", check=False)
    assert bad.returncode == 2 and "never closed" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_snapshots_lists_every_backup_run(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    cluster4.cli(1, "backup", src)
    (src / "new.txt").write_text("one more")
    cluster4.cli(1, "backup", src / "docs", src)
    runs = cluster4.json(1, "snapshots")["snapshots"]
    mine = [r for r in runs if r["kind"] == "backup"]
    # 4 files and 3 folders (src, docs, deep) new at first; then nothing; then new.txt, and
    # src itself changed (its mtime moved).
    assert [(r["path"], r["entries"], r["new"], r["changed"], r["outcome"]) for r in mine] == [
        (str(src), 7, 7, 0, "complete"),
        (str(src / "docs"), 4, 0, 0, "complete"),  # 2 files, 2 folders
        (str(src), 8, 1, 1, "complete"),
    ]
    assert mine[0]["bytes_added"] > 0 and mine[1]["bytes_added"] == 0
    assert mine[2]["new"] == 1 and mine[2]["bytes_added"] > 0
    only_docs = cluster4.json(1, "snapshots", src / "docs" / "deep")["snapshots"]
    assert [r["path"] for r in only_docs] == [str(src), str(src / "docs"), str(src)]
    human = cluster4.cli(1, "snapshots", src / "docs").stdout
    assert human.count("backup:") == 3 and "1 new" in human
    # ls, diff and find over those runs.
    first, _docs, last = (r["id"] for r in mine)
    listed = cluster4.json(1, "ls", first)["entries"]
    assert sorted(e["path"] for e in listed if e["kind"] == "file") == sorted(
        str(p) for p in src.rglob("*") if p.is_file() and p.name != "new.txt"
    )
    only = cluster4.json(1, "ls", last, src / "docs" / "deep")["entries"]
    assert [e["path"] for e in only] == [
        str(src / "docs" / "deep"),
        str(src / "docs" / "deep" / "naïve name with spaces.txt"),
    ]
    changes = cluster4.json(1, "diff", first, last)
    assert changes == {
        "added": [str(src / "new.txt")],
        "removed": [],
        "changed": [],
        "metadata": [],
    }
    assert "+    " + str(src / "new.txt") in cluster4.cli(1, "diff", first, last).stdout
    found = cluster4.json(1, "find", "*.odt")["paths"]
    assert [(f["path"], f["versions"]) for f in found] == [(str(src / "docs" / "report.odt"), 1)]
    missing = cluster4.cli(1, "ls", "b999", check=False)
    assert missing.returncode == 1 and "no backup run b999" in missing.stderr


def test_simulate_takes_the_network_as_it_is(cluster4: ProcessCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    cluster4.cli(1, "backup", src, "--degree", "2")
    backed_up = sum(f["size"] for f in cluster4.json(1, "state")["files"])
    said = cluster4.json(1, "simulate", "--from-network", "--trials", "5", "--laptops", "1")
    assert said["network"]["desktops"] + said["network"]["laptops"] == 4  # four computers
    assert said["network"]["laptops"] == 1
    assert said["network"]["data_bytes"] == backed_up
    assert [s["scheme"] for s in said["schemes"]] == ["degree 1", "degree 2", "degree 3"]
