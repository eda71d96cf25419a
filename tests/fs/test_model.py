"""A randomized model test of the mount: thousands of random operations, applied through the
mount and to a plain reference folder, must leave both trees identical (and give the same
errors); afterwards every snapshot in ``versions/`` equals the reference tree recorded when
it was taken."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Mount

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

NAMES = ["a", "b", "c d", "é", "x.txt"]
FOLDERS = ["", "p", "p/q", "r"]
Tree = dict[str, tuple[str, str, int, int]]  # path -> (kind, digest or target, mode, mtime)


def snapshot_of(root: Path, with_mtime: bool = True) -> Tree:
    """The tree under ``root`` as the versions view would show it (write bits dropped)."""
    out: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            rel_dir = ""
            if "versions" in dirnames:
                dirnames.remove("versions")
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), 0, 0)
                if name in dirnames:
                    dirnames.remove(name)  # os.walk would not descend, but be explicit
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "", 0, 0)
            else:
                digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                mtime = st.st_mtime_ns if with_mtime else 0
                out[rel] = ("file", digest, stat.S_IMODE(st.st_mode) & 0o555, mtime)
    return out


class Model:
    """Applies one random operation to both trees and compares the outcome."""

    def __init__(self, mount: Path, reference: Path, rng: random.Random) -> None:
        self.roots = (mount, reference)
        self.rng = rng

    def path(self) -> str:
        folder = self.rng.choice(FOLDERS)
        name = self.rng.choice(NAMES)
        return f"{folder}/{name}" if folder else name

    def both(self, op: Callable[[Path], object]) -> None:
        outcomes = []
        for root in self.roots:
            try:
                op(root)
                outcomes.append(0)
            except OSError as exc:
                outcomes.append(exc.errno or -1)
        assert outcomes[0] == outcomes[1], f"mount gave {outcomes[0]}, reference {outcomes[1]}"

    def step(self) -> None:
        rng = self.rng
        roll = rng.random()
        p, q = self.path(), self.path()
        if roll < 0.30:
            offset = rng.choice([0, rng.randint(0, 200_000)])
            data = rng.randbytes(rng.choice([1, 100, 4096, 64_000, rng.randint(0, 150_000)]))
            flags = os.O_RDWR | os.O_CREAT | rng.choice([0, 0, os.O_TRUNC, os.O_APPEND])
            sync = rng.random() < 0.2

            def write(root: Path) -> None:
                fd = os.open(root / p, flags, 0o644)
                try:
                    if flags & os.O_APPEND:
                        os.write(fd, data)
                    else:
                        os.pwrite(fd, data, offset)
                    if sync:
                        os.fsync(fd)
                finally:
                    os.close(fd)

            self.both(write)
        elif roll < 0.38:
            size = rng.choice([0, 1, 64_000, rng.randint(0, 200_000)])
            self.both(lambda root: os.truncate(root / p, size))
        elif roll < 0.50:
            self.both(lambda root: os.rename(root / p, root / q))
        elif roll < 0.56:
            folder = rng.choice(FOLDERS[1:])
            self.both(lambda root: os.rename(root / folder, root / (q + "-moved")))
        elif roll < 0.64:
            self.both(lambda root: os.unlink(root / p))
        elif roll < 0.72:
            folder = rng.choice(FOLDERS[1:])
            self.both(lambda root: os.mkdir(root / folder, 0o755))
        elif roll < 0.75:
            folder = rng.choice(FOLDERS[1:])
            self.both(lambda root: os.rmdir(root / folder))
        elif roll < 0.81:
            target = rng.choice(NAMES)
            self.both(lambda root: os.symlink(target, root / p))
        elif roll < 0.86:
            self.both(lambda root: os.link(root / p, root / q, follow_symlinks=False))
        elif roll < 0.93:
            mode = rng.choice([0o600, 0o644, 0o755, 0o444])

            def chmod(root: Path) -> None:
                if (root / p).is_symlink():
                    raise OSError(errno.ELOOP, "symlinks have no mode of their own")
                os.chmod(root / p, mode)

            self.both(chmod)
        else:
            stamp = rng.randint(1_000_000_000, 1_900_000_000) * 10**9

            def touch(root: Path) -> None:
                if (root / p).is_symlink():
                    raise OSError(errno.ELOOP, "no symlink times in the model")
                os.utime(root / p, ns=(stamp, stamp))

            self.both(touch)


def live_tree(root: Path) -> Tree:
    # Modes and content must match; times of the mount are SOURCE's, compared too.
    return snapshot_of(root)


@pytest.mark.parametrize("seed", range(int(os.environ.get("LANVAULT_MODEL_SEEDS", "3"))))
def test_random_operations_match_a_plain_folder_and_every_snapshot(
    mounted: Mount, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    reference = tmp_path / "reference"
    reference.mkdir()
    model = Model(mounted.mountpoint, reference, rng)
    recorded: dict[str, Tree] = {}
    steps = 1200
    for step in range(steps):
        model.step()
        if step % 60 == 59 or step == steps - 1:
            live = live_tree(mounted.mountpoint)
            expected = live_tree(reference)
            # Times differ between the two real folders; content, kinds and modes may not.
            strip = {k: (a, b, m, 0) for k, (a, b, m, _t) in live.items()}
            assert strip == {k: (a, b, m, 0) for k, (a, b, m, _t) in expected.items()}, (
                f"seed {seed} step {step}"
            )
            # Listing versions/ makes everything written so far part of the newest snapshot.
            names = sorted(n for n in os.listdir(mounted.mountpoint / "versions") if n != "latest")
            recorded[names[-1]] = live
    versions = mounted.mountpoint / "versions"
    for name, tree in recorded.items():
        shown = snapshot_of(versions / name)
        differing = {
            k: (shown.get(k), tree.get(k))
            for k in set(shown) | set(tree)
            if shown.get(k) != tree.get(k)
        }
        assert not differing, f"snapshot {name} differs (seed {seed}): {differing}"
    assert snapshot_of(versions / "latest") == recorded[max(recorded)]
