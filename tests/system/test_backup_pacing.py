"""A backup's catalog copies, on real node processes over a slow link: while a backup runs,
the owner does not copy its catalog to the peers after every file it commits (each copy
re-sends much of the catalog over the same link as the files); it secures one copy that
names the backup at its end (``node/safekeeping.py``, ``Safekeeping.backup_running``)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from .netns import Lan, netns_available, sweep_stale
from .procs import ProcessCluster

pytestmark = [pytest.mark.netns, pytest.mark.slow]

FILES = 4
FILE_BYTES = 3_000_000  # each about 3 s on the owner's 8 Mbit/s link: commits > SETTLE apart


def catalog_copies(cluster: ProcessCluster) -> int:
    """Catalog copies the owner has put on the peers, as its log tells them."""
    log = cluster.nodes[1].log.read_text(errors="replace")
    return len(re.findall(r"catalog copy \d+ on the peers", log))


def test_a_backup_on_a_slow_link_copies_its_catalog_once(tmp_path: Path) -> None:
    why = netns_available()
    if why:
        pytest.skip(why)
    sweep_stale()
    lan = Lan(tag=f"p{os.getpid() % 1000}", subnet=(os.getpid() + 100) % 200 + 20)
    lan.create(3)
    cluster = ProcessCluster.on_lan(tmp_path / "net", lan, list(range(3)), "1h")
    try:
        lan.shape(0, "8mbit")
        cluster.start_all()
        cluster.wait_mesh(60)
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "first.txt").write_bytes(b"a catalog copy before the backup under test\n")
        cluster.cli(1, "backup", tree, "--degree", "1", timeout=300)
        for n in range(FILES):  # files are committed one by one, each after its chunks
            (tree / f"big{n}.bin").write_bytes(os.urandom(FILE_BYTES))
        before = catalog_copies(cluster)
        run = cluster.cli(1, "backup", tree, "--degree", "1", "--json", timeout=600)
        done = json.loads(run.stdout)
        after = catalog_copies(cluster)
        assert done["new"] == FILES, done
        # The copy securing the backup, and at most one more if an earlier change was due;
        # a copy after each file's commit would make FILES or more.
        assert 1 <= after - before <= 2, (before, after)
        out = tmp_path / "out"
        cluster.cli(1, "restore", tree, "--to", out, timeout=600)
        for n in range(FILES):
            assert (out / f"big{n}.bin").read_bytes() == (tree / f"big{n}.bin").read_bytes()
    finally:
        cluster.stop_all()
        lan.destroy()
    cluster.assert_no_tracebacks()
