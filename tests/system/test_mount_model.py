"""A stateful model test through a real mount and the real CLI (process cluster): random
changes made in the mounted folder (write, append, truncate, chmod, touch, mkdir, rmdir,
rename, unlink, symlink, hard link, setxattr), moments taken between them, and restores with
`lanvault restore --at` of the whole tree or of one path, compared with the tree as it was.

The invariant: restoring any moment taken yields exactly the tree of that moment (content,
type, mode, owner, mtime to the nanosecond, symlink targets, extended attributes, which names
are hard links of one file). ``LANVAULT_MOUNT_MODEL_EXAMPLES`` sets how many programs run
(default 2; the long run uses more, and counts the programs and steps that passed into
``LANVAULT_MODEL_COUNT``); failing programs become plain tests.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.node.test_model import Entry, count_run, tree_of

from .procs import ProcessCluster
from .test_mount_history import all_safe, start_mount

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

EXAMPLES = int(os.environ.get("LANVAULT_MOUNT_MODEL_EXAMPLES", "2"))
STEPS = int(os.environ.get("LANVAULT_MOUNT_MODEL_STEPS", "20"))
FILES = ["a.txt", "b.bin", "d/c.txt", "d/e/f.bin"]
FOLDERS = ["d", "d/e", "g"]


def moment_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def subtree(tree: dict[str, Entry], top: str) -> dict[str, Entry]:
    """The entries under ``top`` (a folder), relative to it."""
    prefix = top + "/"
    out: dict[str, Entry] = {}
    for path, entry in tree.items():
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            link = entry[6][len(prefix) :] if entry[6].startswith(prefix) else entry[6]
            out[rest] = (*entry[:6], link)
    return out


def run_machine(cluster: ProcessCluster, tmp: Path) -> None:
    mount, source, mnt = start_mount(cluster, tmp)
    counter = iter(range(10**9))

    class MountModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.moments: list[tuple[str, dict[str, Entry]]] = []
            self.run = next(counter)
            self.top = mnt / f"run{self.run}"
            self.top.mkdir()
            self.restores = 0
            self.steps = 0  # counted for the long run's tally (LANVAULT_MODEL_COUNT)

        def p(self, name: str) -> Path:
            return self.top / name

        @initialize()
        def first_file(self) -> None:
            self.p("a.txt").write_text("start")

        @rule(name=st.sampled_from(FILES), size=st.sampled_from([0, 1, 5000, 64_000, 70_001]))
        def write(self, name: str, size: int) -> None:
            path = self.p(name)
            if path.parent.is_dir() and not path.is_dir() and not path.is_symlink():
                path.write_bytes(os.urandom(size))

        @rule(name=st.sampled_from(FILES), size=st.integers(1, 70_000))
        def append(self, name: str, size: int) -> None:
            path = self.p(name)
            if path.is_file() and not path.is_symlink():
                with path.open("ab") as handle:
                    handle.write(os.urandom(size))

        @rule(name=st.sampled_from(FILES), size=st.integers(0, 80_000))
        def truncate(self, name: str, size: int) -> None:
            path = self.p(name)
            if path.is_file() and not path.is_symlink():
                os.truncate(path, size)

        @rule(name=st.sampled_from(FILES + FOLDERS), mode=st.sampled_from([0o600, 0o644, 0o755]))
        def chmod(self, name: str, mode: int) -> None:
            path = self.p(name)
            if path.exists() and not path.is_symlink():
                os.chmod(path, mode)

        @rule(name=st.sampled_from(FILES), when=st.integers(1, 2**40))
        def touch(self, name: str, when: int) -> None:
            path = self.p(name)
            if path.is_file() and not path.is_symlink():
                os.utime(path, ns=(when, when))

        @rule(name=st.sampled_from(FOLDERS))
        def mkdir(self, name: str) -> None:
            path = self.p(name)
            if path.parent.is_dir() and not path.exists() and not path.is_symlink():
                path.mkdir()

        @rule(name=st.sampled_from(FOLDERS))
        def rmdir(self, name: str) -> None:
            with contextlib.suppress(OSError):
                self.p(name).rmdir()

        @rule(old=st.sampled_from(FILES + FOLDERS), new=st.sampled_from(FILES + FOLDERS))
        def rename(self, old: str, new: str) -> None:
            with contextlib.suppress(OSError):
                os.rename(self.p(old), self.p(new))

        @rule(name=st.sampled_from([*FILES, "link"]))
        def unlink(self, name: str) -> None:
            path = self.p(name)
            if path.is_symlink() or path.is_file():
                path.unlink()

        @rule(pointee=st.sampled_from(FILES))
        def symlink(self, pointee: str) -> None:
            if not os.path.lexists(self.p("link")):
                os.symlink(pointee, self.p("link"))

        @rule(name=st.sampled_from(FILES), other=st.sampled_from(FILES))
        def hardlink(self, name: str, other: str) -> None:
            if self.p(name).is_file() and not self.p(name).is_symlink():
                with contextlib.suppress(OSError):
                    os.link(self.p(name), self.p(other))

        @rule(name=st.sampled_from(FILES + FOLDERS), value=st.binary(max_size=8))
        def setxattr(self, name: str, value: bytes) -> None:
            path = self.p(name)
            if path.exists() and not path.is_symlink():
                if value:
                    os.setxattr(path, "user.model", value)
                else:
                    with contextlib.suppress(OSError):
                        os.removexattr(path, "user.model")

        @rule()
        def take_moment(self) -> None:
            """Everything so far is saved on the peers: remember this moment and the tree."""
            os.listdir(mnt / "versions")  # the newest snapshot holds everything so far
            cluster.wait(lambda: all_safe(cluster, source), 60, "changes safe")
            expected = tree_of(self.top)
            time.sleep(0.01)
            self.moments.append((moment_now(), expected))
            time.sleep(0.01)  # what comes next is after this moment

        @rule(pick=st.integers(0, 99), part=st.sampled_from(["", "d", "d/e"]))
        def restore(self, pick: int, part: str) -> None:
            if not self.moments:
                return
            moment, expected = self.moments[pick % len(self.moments)]
            if part and expected.get(part, ("",))[0] != "dir":
                part = ""
            out = tmp / f"out{self.run}-{self.restores}"
            self.restores += 1
            where = source / f"run{self.run}" / part if part else source / f"run{self.run}"
            cluster.cli(1, "restore", where, "--at", moment, "--to", out)
            got = tree_of(out)
            want = subtree(expected, part) if part else expected
            assert got == want, f"restore of {part or 'the tree'} as of {moment}"
            shutil.rmtree(out)

        def teardown(self) -> None:
            """Every program ends with a moment restored whole, and the first one again."""
            self.take_moment()
            self.restore(len(self.moments) - 1, "")
            self.restore(0, "")
            count_run(self.steps)

        @invariant()
        def mount_alive(self) -> None:
            assert mount.proc is not None and mount.proc.poll() is None
            self.steps += 1

    try:
        settings_ = settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        run_state_machine_as_test(MountModel, settings=settings_)
    finally:
        mount.stop()


def test_restoring_any_moment_of_a_mounted_tree_gives_that_tree(
    cluster4: ProcessCluster, tmp_path: Path
) -> None:
    run_machine(cluster4, tmp_path)
