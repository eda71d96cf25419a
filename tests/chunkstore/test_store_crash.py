"""SIGKILL a writer at random moments; every acknowledged chunk must survive intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkstore.envelope import open_chunk
from chunkstore.keys import KeyRing
from chunkstore.store import ChunkStore

ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(store_dir: Path, seed: int, delay: float) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.chunkstore.crash_writer", str(store_dir), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    return out.decode().splitlines()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_sigkill_loses_no_acknowledged_chunk(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store_dir = tmp_path / "store"
    keys = KeyRing.from_master(bytes(32))
    # True: its put was acknowledged; False: its delete was; None: a delete was in flight
    # when the writer was killed, so it may be there or not.
    acknowledged: dict[tuple[int, str], bool | None] = {}
    # Several kill/restart rounds on the same store: recovery itself must be crash-safe.
    for round_no in range(3):
        writer_seed = seed * 100 + round_no
        owner = writer_seed % 7
        lines = run_and_kill(store_dir, writer_seed, rng.uniform(0.3, 1.5))
        complete = [line for line in lines if len(line) == 66]  # the last line may be torn
        for line in complete:
            kind, address = line.split()
            acknowledged[(owner, address)] = {"P": True, "D": False, "X": None}[kind]
        store = ChunkStore.open(store_dir)
        try:
            report = store.check()
            assert report.clean, f"seed {seed}: bad entries after crash: {report.bad[:3]}"
            held = set()
            for chunk in store.chunks():
                # Nothing partial is visible: every indexed chunk opens and verifies.
                open_chunk(keys, chunk.address, store.get(chunk.owner, chunk.address))
                held.add((chunk.owner, chunk.address.hex()))
        finally:
            store.close()
        assert any(acknowledged.values()), (
            "the writer acknowledged nothing; the test proves nothing"
        )
        for key, present in acknowledged.items():
            if present:
                assert key in held, f"seed {seed}: acknowledged chunk {key} lost"
            elif present is not None:
                assert key not in held, f"seed {seed}: acknowledged delete {key} came back"
            else:  # what the crash left of an in-flight delete must stay so from now on
                acknowledged[key] = key in held
