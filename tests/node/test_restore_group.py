"""Small files are restored in groups (node/restore_files.py): one flush for the group, each
file whole or not at all, and nothing of a file that failed left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from chunkstore.catalog import FileVersion, is_own_temp
from chunkstore.chunking import CHUNK_SIZE
from node.report import RestoreError
from node.restore_files import Entry, _write_group
from node.restore_target import RestoreTarget, flush_files


def version(path: str, data: bytes, mtime_ns: int, mode: int = 0o100640) -> FileVersion:
    return FileVersion(
        path=path,
        file_id=os.urandom(32),
        size=len(data),
        mode=mode,
        uid=os.geteuid(),
        gid=os.getegid(),
        mtime_ns=mtime_ns,
        ctime_ns=mtime_ns,
        degree=2,
        chunks=(path.encode().ljust(32, b"."),),
        owner=1,
        xattrs=(("user.color", b"blue"),),
    )


def test_a_group_is_written_whole_and_a_file_whose_chunk_is_missing_leaves_nothing(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    files = {f"d{n % 3}/f{n}": os.urandom(100 + n) for n in range(20)}
    files["d0/empty"] = b""
    versions = [version(p, d, 1_000_000_000 + n) for n, (p, d) in enumerate(files.items())]
    found = {v.chunks[0]: files[v.path] for v in versions}
    lost = versions[5]
    del found[lost.chunks[0]]
    short = versions[7]  # a holder gave a chunk of the wrong length
    found[short.chunks[0]] = files[short.path][:-1]
    missing = {lost.chunks[0]: RestoreError(f"no reachable holder has chunk of {lost.path}")}
    blocked = versions[1]  # a folder is where it goes: its rename fails after the flush
    (out / blocked.path / "inside").mkdir(parents=True)
    group: list[Entry] = [(out / v.path, v, None) for v in versions]
    with RestoreTarget(out, as_typed=True, resume_dir=tmp_path / "restores") as target:
        outcomes = _write_group(target, group, found, missing)
        target.sync()
    for v, outcome in zip(versions, outcomes, strict=True):
        where = out / v.path
        if v in (lost, short, blocked):
            assert isinstance(outcome, RestoreError)
            assert where.is_dir() if v is blocked else not where.exists()
            continue
        assert outcome == []  # no extended attribute refused
        assert where.read_bytes() == files[v.path]
        st = where.stat()
        assert st.st_mtime_ns == v.mtime_ns and stat.S_IMODE(st.st_mode) == 0o640
        assert os.getxattr(where, "user.color") == b"blue"
    assert "wrong length" in str(outcomes[7])
    leftovers = [n for _d, _s, names in os.walk(out) for n in names if is_own_temp(n)]
    assert leftovers == []


def test_flush_files_reports_each_file(tmp_path: Path) -> None:
    fds = [os.open(tmp_path / f"f{n}", os.O_CREAT | os.O_RDWR, 0o600) for n in range(3)]
    try:
        for fd in fds:
            os.write(fd, b"x" * CHUNK_SIZE)
        assert flush_files(fds) == [None, None, None]
        bad = os.open(tmp_path / "f0", os.O_RDONLY)
        os.close(bad)  # a closed descriptor: its flush fails, the others' do not
        results = flush_files([fds[0], bad, fds[1]])
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], OSError)
    finally:
        for fd in fds:
            os.close(fd)
