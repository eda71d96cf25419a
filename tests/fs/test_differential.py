"""The mount against the file system beneath it, errno for errno: the same random sequence of
system calls runs in a plain folder and in the mount, and every result (value or errno) and the
final trees must be the same. Every failing sequence Hypothesis finds becomes a plain test
below."""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkstore.catalog import DEGREE_XATTR
from fs.capture import degree_from_xattrs

from .conftest import Mount

pytestmark = pytest.mark.fuse

EXAMPLES = int(os.environ.get("LANVAULT_DIFF_EXAMPLES", "40"))
NAMES = ["a", "b", "d", "d/c", "d/e", "d/e/f", "x" * 255, "d/" + "y" * 256]
FLAGS = [
    os.O_RDONLY,
    os.O_WRONLY,
    os.O_RDWR,
    os.O_RDWR | os.O_CREAT,
    os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    os.O_RDONLY | os.O_CREAT | os.O_EXCL,
    os.O_RDWR | os.O_APPEND | os.O_CREAT,
    os.O_RDONLY | os.O_DIRECTORY,
    os.O_RDONLY | os.O_NOFOLLOW,
    os.O_WRONLY | os.O_TRUNC,
]
MODES = [0o644, 0o600, 0o755, 0o400, 0o000]

name = st.sampled_from(NAMES)
Op = tuple[str, ...] | tuple[object, ...]
ops = st.one_of(
    st.tuples(st.just("open"), name, st.sampled_from(FLAGS), st.sampled_from(MODES)),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(
        st.just("pwrite"), st.integers(0, 3), st.binary(max_size=300), st.integers(0, 70_000)
    ),
    st.tuples(st.just("write"), st.integers(0, 3), st.binary(max_size=300)),
    st.tuples(st.just("pread"), st.integers(0, 3), st.integers(0, 400), st.integers(0, 70_000)),
    st.tuples(st.just("ftruncate"), st.integers(0, 3), st.integers(0, 100_000)),
    st.tuples(st.just("fsync"), st.integers(0, 3)),
    st.tuples(st.just("fchmod"), st.integers(0, 3), st.sampled_from(MODES)),
    st.tuples(st.just("fstat"), st.integers(0, 3)),
    st.tuples(st.just("truncate"), name, st.integers(0, 100_000)),
    st.tuples(st.just("mkdir"), name, st.sampled_from(MODES)),
    st.tuples(st.just("rmdir"), name),
    st.tuples(st.just("unlink"), name),
    st.tuples(st.just("rename"), name, name),
    st.tuples(st.just("link"), name, name),
    st.tuples(st.just("symlink"), st.sampled_from(["a", "d", "nowhere", "../a"]), name),
    st.tuples(st.just("readlink"), name),
    st.tuples(st.just("chmod"), name, st.sampled_from(MODES)),
    st.tuples(st.just("utime"), name, st.integers(0, 2**40)),
    st.tuples(st.just("stat"), name),
    st.tuples(st.just("listdir"), st.sampled_from(["", "d", "d/e", "a"])),
    st.tuples(
        st.just("setxattr"), name, st.sampled_from(["user.k", "user.l"]), st.binary(max_size=20)
    ),
    st.tuples(st.just("getxattr"), name, st.sampled_from(["user.k", "user.l"])),
    st.tuples(st.just("removexattr"), name, st.sampled_from(["user.k", "user.l"])),
    st.tuples(st.just("listxattr"), name),
)


def describe(st_: os.stat_result) -> tuple[int, int, int]:
    """What must agree: type and permission bits, size (folders' sizes are the file system's
    own business) and link count of files."""
    size = 0 if stat.S_ISDIR(st_.st_mode) else st_.st_size
    nlink = st_.st_nlink if stat.S_ISREG(st_.st_mode) else 0
    return st_.st_mode, size, nlink


class Side:
    """One place the calls run: a plain folder, or a folder inside the mount."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: list[int] = []

    def p(self, rel: str) -> str:
        return str(self.root / rel)

    def fd(self, index: int) -> int:
        if not self.fds:
            raise OSError(errno.EBADF, "no open file")
        return self.fds[index % len(self.fds)]

    def run(self, op: tuple[object, ...]) -> object:
        kind, *args = op
        call: Callable[[], object]
        if kind == "open":
            rel, flags, mode = args
            assert isinstance(rel, str) and isinstance(flags, int) and isinstance(mode, int)

            def call() -> object:
                self.fds.append(os.open(self.p(rel), flags, mode))
                return len(self.fds)
        elif kind == "close":

            def call() -> object:
                fd = self.fd(int(args[0]))  # type: ignore[call-overload]
                self.fds.remove(fd)
                os.close(fd)
                return None
        else:
            call = self._call(str(kind), args)
        try:
            return ("ok", call())
        except OSError as exc:
            return ("err", errno.errorcode.get(exc.errno or 0, exc.errno))

    def _call(self, kind: str, args: list[object]) -> Callable[[], object]:
        a = args
        if kind == "pwrite":
            return lambda: os.pwrite(self.fd(a[0]), a[1], a[2])  # type: ignore[arg-type]
        if kind == "write":
            return lambda: os.write(self.fd(a[0]), a[1])  # type: ignore[arg-type]
        if kind == "pread":
            return lambda: os.pread(self.fd(a[0]), a[1], a[2])  # type: ignore[arg-type]
        if kind == "ftruncate":
            return lambda: os.ftruncate(self.fd(a[0]), a[1])  # type: ignore[arg-type]
        if kind == "fsync":
            return lambda: os.fsync(self.fd(a[0]))  # type: ignore[arg-type]
        if kind == "fchmod":
            return lambda: os.fchmod(self.fd(a[0]), a[1])  # type: ignore[arg-type]
        if kind == "fstat":
            return lambda: describe(os.fstat(self.fd(a[0])))  # type: ignore[arg-type]
        if kind == "truncate":
            return lambda: os.truncate(self.p(a[0]), a[1])  # type: ignore[arg-type]
        if kind == "mkdir":
            return lambda: os.mkdir(self.p(a[0]), a[1])  # type: ignore[arg-type]
        if kind == "rmdir":
            return lambda: os.rmdir(self.p(a[0]))  # type: ignore[arg-type]
        if kind == "unlink":
            return lambda: os.unlink(self.p(a[0]))  # type: ignore[arg-type]
        if kind == "rename":
            return lambda: os.rename(self.p(a[0]), self.p(a[1]))  # type: ignore[arg-type]
        if kind == "link":
            return lambda: os.link(self.p(a[0]), self.p(a[1]))  # type: ignore[arg-type]
        if kind == "symlink":
            return lambda: os.symlink(a[0], self.p(a[1]))  # type: ignore[arg-type]
        if kind == "readlink":
            return lambda: os.readlink(self.p(a[0]))  # type: ignore[arg-type]
        if kind == "chmod":
            return lambda: os.chmod(self.p(a[0]), a[1])  # type: ignore[arg-type]
        if kind == "utime":
            return lambda: os.utime(self.p(a[0]), ns=(a[1], a[1]))  # type: ignore[arg-type]
        if kind == "stat":
            return lambda: describe(os.lstat(self.p(a[0])))  # type: ignore[arg-type]
        if kind == "listdir":
            return lambda: sorted(os.listdir(self.p(a[0])))  # type: ignore[arg-type]
        if kind == "setxattr":
            return lambda: os.setxattr(self.p(a[0]), a[1], a[2], follow_symlinks=False)  # type: ignore[arg-type]
        if kind == "getxattr":
            return lambda: os.getxattr(self.p(a[0]), a[1], follow_symlinks=False)  # type: ignore[arg-type]
        if kind == "removexattr":
            return lambda: os.removexattr(self.p(a[0]), a[1], follow_symlinks=False)  # type: ignore[arg-type]
        if kind == "listxattr":
            return lambda: sorted(os.listxattr(self.p(a[0]), follow_symlinks=False))  # type: ignore[arg-type]
        raise AssertionError(kind)

    def close_all(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = Path(dirpath) / entry
            st_ = path.lstat()
            content: object = None
            if stat.S_ISREG(st_.st_mode):
                content = path.read_bytes() if st_.st_mode & 0o400 else st_.st_size
            elif stat.S_ISLNK(st_.st_mode):
                content = os.readlink(path)
            out[str(path.relative_to(root))] = (describe(st_), content)
    return out


def compare(plain_root: Path, mount_root: Path, program: list[tuple[object, ...]]) -> None:
    plain_root.mkdir()
    mount_root.mkdir()
    plain, mounted = Side(plain_root), Side(mount_root)
    try:
        for step, op in enumerate(program):
            expected = plain.run(op)
            got = mounted.run(op)
            assert got == expected, f"step {step}: {op!r}: mount {got!r}, plain folder {expected!r}"
    finally:
        plain.close_all()
        mounted.close_all()
    for root in (plain_root, mount_root):  # readable again, so the trees can be compared
        for dirpath, _dirs, _files in os.walk(root):
            os.chmod(dirpath, 0o755)
    assert tree(mount_root) == tree(plain_root)


_counter = itertools.count()


@settings(
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=st.lists(ops, min_size=1, max_size=30))
def test_the_mount_answers_every_call_as_the_folder_beneath(
    mounted: Mount, tmp_path: Path, program: list[tuple[object, ...]]
) -> None:
    n = next(_counter)
    compare(tmp_path / f"plain{n}", mounted.mountpoint / f"run{n}", program)


def deep_calls(root: Path) -> list[object]:
    """Calls made relative to folder descriptors 24 levels down: each call's own path is
    short, the path from the top is longer than PATH_MAX (4096)."""
    results: list[object] = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(24):
            part = f"{level:02d}" + "p" * 198
            os.mkdir(part, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        file = os.open("f.txt", os.O_RDWR | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file, b"deep")
        os.fsync(file)
        os.close(file)
        os.rename("f.txt", "g.txt", src_dir_fd=fd, dst_dir_fd=fd)
        os.link("g.txt", "h.txt", src_dir_fd=fd, dst_dir_fd=fd)
        os.symlink("g.txt", "s", dir_fd=fd)
        os.mkdir("sub", dir_fd=fd)
        os.chmod("g.txt", 0o600, dir_fd=fd)
        os.utime("g.txt", ns=(5, 5), dir_fd=fd)
        results.append(describe(os.stat("h.txt", dir_fd=fd)))
        results.append(os.readlink("s", dir_fd=fd))
        results.append(sorted(os.listdir(fd)))
        os.setxattr(f"/proc/self/fd/{fd}", "user.deep", b"1")
        results.append(os.getxattr(f"/proc/self/fd/{fd}", "user.deep"))
        os.truncate(f"/proc/self/fd/{fd}/g.txt", 2)
        file = os.open("g.txt", os.O_RDONLY, dir_fd=fd)
        results.append(os.read(file, 10))
        os.close(file)
        os.unlink("h.txt", dir_fd=fd)
        os.rmdir("sub", dir_fd=fd)
    finally:
        os.close(fd)
    return results


def test_paths_longer_than_path_max_from_the_top_work_as_beneath(
    mounted: Mount, tmp_path: Path
) -> None:
    (tmp_path / "plain").mkdir()
    (mounted.mountpoint / "deep").mkdir()
    assert deep_calls(mounted.mountpoint / "deep") == deep_calls(tmp_path / "plain")


def deep_folder(root: Path, levels: int) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(levels):
        inner = os.open(f"{level:02d}" + "p" * 198, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    return fd


def test_changes_deeper_than_path_max_are_caught_up_at_mount_time(mounted: Mount) -> None:
    (mounted.mountpoint / "deep").mkdir()
    deep_calls(mounted.mountpoint / "deep")
    mounted.stop()
    fd = deep_folder(mounted.source / "deep", 24)
    try:
        with open(os.open("g.txt", os.O_WRONLY | os.O_TRUNC, dir_fd=fd), "wb") as handle:
            handle.write(b"changed while unmounted")
        os.mkdir("new", dir_fd=fd)
    finally:
        os.close(fd)
    mounted.start()
    fd = deep_folder(mounted.mountpoint / "versions" / "latest" / "deep", 24)
    try:
        assert sorted(os.listdir(fd)) == ["g.txt", "new", "s"]
        with open(os.open("g.txt", os.O_RDONLY, dir_fd=fd), "rb") as handle:
            assert handle.read() == b"changed while unmounted"
    finally:
        os.close(fd)


def test_a_degree_set_on_a_folder_deeper_than_path_max_is_found(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    parts = []
    try:
        for level in range(22):
            part = f"{level:02d}" + "q" * 198
            parts.append(part)
            os.mkdir(part, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.setxattr(f"/proc/self/fd/{fd}", DEGREE_XATTR, b"4")
        os.close(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    relative = "/".join([*parts, "f.txt"])
    assert len(relative) > 4096
    assert degree_from_xattrs(str(tmp_path), relative, 2) == 4
