"""Recovery from nothing, with real processes: the owner's state directory and SOURCE are
deleted; a new folder, the passphrase and one peer address bring back every version."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.fs.conftest import Mount, fuse_available, sweep_stale_mounts

from .procs import ProcessCluster, lanvault
from .test_mount_history import all_safe, iso_utc, tree_of

pytestmark = [pytest.mark.fuse, pytest.mark.slow]


def catalog_on_peers(cluster: ProcessCluster, after: float) -> bool:
    rec = cluster.json(1, "status")["recovery"]
    return bool(
        rec["kit"]
        and rec["kit_holders"] >= 2
        and rec["catalog_holders"] >= 2
        and (rec["last_catalog_backup"] or 0) > after
    )


def test_recover_a_lost_node_with_only_the_passphrase(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    why = fuse_available()
    if why:
        pytest.skip(why)
    sweep_stale_mounts()
    source, mnt = tmp_path / "data", tmp_path / "Backup"
    source.mkdir()
    mnt.mkdir()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("backed up with the backup command\n")
    cluster4.cli(1, "backup", plain)
    mount = Mount(cluster4.nodes[1].state, source, mnt, tmp_path / "mount.log")
    mount.start()
    try:
        (mnt / "docs").mkdir()
        (mnt / "docs" / "report.odt").write_bytes(os.urandom(300_000))
        (mnt / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(mnt / "run.sh", 0o750)
        os.symlink("docs/report.odt", mnt / "link")
        cluster4.wait(lambda: all_safe(cluster4, source.resolve()), 30, "v1 safe")
        os.listdir(mnt / "versions")
        first = tree_of(mnt)
        time.sleep(1.1)
        moment = iso_utc(time.time() - 0.5)
        time.sleep(1.1)
        # Node 4 stops now: it keeps an older catalog copy, which must not win later.
        cluster4.wait(lambda: catalog_on_peers(cluster4, 0), 30, "first catalog copy out")
        cluster4.kill(4)
        (mnt / "docs" / "report.odt").write_bytes(os.urandom(200_000))
        (mnt / "docs" / "new.txt").write_text("later")
        changed = time.time()
        cluster4.wait(lambda: all_safe(cluster4, source.resolve()), 30, "v2 safe")
        cluster4.wait(lambda: catalog_on_peers(cluster4, changed), 30, "newest catalog out")
        second = tree_of(mnt)
    finally:
        mount.stop()

    # The computer is lost: its state directory and SOURCE are gone.
    cluster4.kill(1)
    old_state = cluster4.nodes[1].state
    shutil.rmtree(old_state)
    shutil.rmtree(source)
    cluster4.start(4)  # the stale peer is back, and it is the one we ask

    # A wrong passphrase: one clear line, nothing written.
    wrong = tmp_path / "wrong"
    out = lanvault(
        "recover",
        "--dir",
        wrong,
        "--id",
        "1",
        "--peer",
        cluster4.nodes[4].address,
        check=False,
        extra_env={"LANVAULT_PASSPHRASE": "not the passphrase"},
    )
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("lanvault:")]
    assert len(errors) == 1 and "wrong passphrase" in errors[0]  # (the rest is progress)
    assert not wrong.exists()

    new_state = tmp_path / "new-computer"
    assert cluster4.json(2, "status")["nodes"]  # the network lives on without the owner
    # The peers with the newest copy answer late: frozen longer than the grace period after
    # which a silent peer counts as gone (6 s here). A recovery that settled for the peers it
    # reached first would take node 4's stale copy, whose chunks were deleted.
    frozen = [cluster4.nodes[n].proc for n in (2, 3)]
    for proc in frozen:
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)

    def resume() -> None:
        for proc in frozen:
            assert proc is not None
            proc.send_signal(signal.SIGCONT)

    thaw = threading.Timer(8, resume)
    thaw.start()
    try:
        recovered = lanvault(
            "recover",
            "--dir",
            new_state,
            "--id",
            "1",
            "--peer",
            cluster4.nodes[4].address,
            "--json",
        )
    finally:
        thaw.join()
    data = json.loads(recovered.stdout)
    assert data["node_id"] == 1 and data["files"] == 4, data  # notes, report, run.sh, new.txt
    assert data["peers_unreachable"] == [] and data["peers_asked"] == 3
    offers = {int(k): v for k, v in data["offers"].items()}
    assert offers[4] < max(offers.values())  # node 4's copy was older ...
    assert data["catalog_from_node"] != 4  # ... and did not win
    assert data["catalog_seq"] == max(offers.values())

    # The recovered node keeps its id and its place in the network, and (it was the network's
    # administrator) its network key, from its kit: it can still let a computer in.
    cluster4.nodes[1].state = new_state
    cluster4.start(1)
    cluster4.wait_mesh()
    assert cluster4.json(1, "status")["administrator"]
    cluster4.wait(  # it takes the network's roster back from its peers (4 enrolments)
        lambda: cluster4.json(1, "status")["roster_version"] >= 4, 30, "the roster back"
    )
    code = cluster4.json(1, "invite")["join_code"]
    lanvault("init", "--dir", tmp_path / "n9", "--id", "9", "--join", code)
    assert cluster4.json(1, "status")["roster_version"] == 5
    now = tmp_path / "now"
    cluster4.cli(1, "restore", source, "--to", now)
    assert tree_of(now) == second
    then = tmp_path / "then"
    cluster4.cli(1, "restore", source, "--at", moment, "--to", then)
    assert tree_of(then) == first
    everything = tmp_path / "everything"
    cluster4.cli(1, "restore", "/", "--to", everything)
    rel_plain = str(plain.resolve()).lstrip("/")
    assert (everything / rel_plain / "notes.txt").read_text().startswith("backed up")
    assert tree_of(everything / str(source.resolve()).lstrip("/")) == second
    # And it goes on backing up as before.
    (plain / "more.txt").write_text("after the recovery")
    cluster4.cli(1, "backup", plain)
    assert min(cluster4.degrees(1)) >= 2


def test_what_backup_reported_survives_the_computer_dying_as_it_returns(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    """restic's promise: when `backup` returns, the snapshot is in the repository. Here the
    catalog copy naming the new versions is on the peers before the command returns, so the
    disk may die that instant and a new computer still brings everything back."""
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "notes.txt").write_text("written a moment before the disk died\n")
    (plain / "sub" / "photo.jpg").write_bytes(os.urandom(200_000))
    os.symlink("notes.txt", plain / "link")
    first = cluster4.json(1, "backup", plain)
    assert first["catalog_seq"] > 0
    (plain / "notes.txt").write_text("and changed once more\n")
    second = cluster4.json(1, "backup", plain)
    assert second["catalog_seq"] > first["catalog_seq"] and second["changed"] == 1
    status = cluster4.json(1, "status")["recovery"]
    assert status["catalog_behind_seconds"] is None and status["catalog_holders"] >= 2

    # The disk dies the moment the command returned: state directory gone at once.
    cluster4.kill(1)
    shutil.rmtree(cluster4.nodes[1].state)
    new_state = tmp_path / "new-computer"
    recovered = lanvault(
        "recover", "--dir", new_state, "--id", "1", "--peer", cluster4.nodes[2].address, "--json"
    )
    data = json.loads(recovered.stdout)
    assert data["catalog_seq"] == second["catalog_seq"], data
    cluster4.nodes[1].state = new_state
    cluster4.start(1)
    cluster4.wait_mesh()
    out = tmp_path / "out"
    cluster4.cli(1, "restore", plain, "--to", out)
    assert tree_of(out) == tree_of(plain)
