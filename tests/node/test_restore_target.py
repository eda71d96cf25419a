"""A restore writes only inside its target: the rules of node/restore_target.py, attacked."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from node import restore_target
from node.restore_target import RestoreTarget, UnsafeDestination
from node.restore_windows import all_zeros
from tests.attackers import MALLORY, plant_in_shared_folder


def target(anchor: Path, tmp_path: Path, as_typed: bool = True) -> RestoreTarget:
    return RestoreTarget(anchor, as_typed=as_typed, resume_dir=tmp_path / "restores")


def write(t: RestoreTarget, dest: Path, data: bytes, mode: int = 0o600) -> None:
    with t.parent(dest) as (dir_fd, name):
        fd, tmp, _resumed = t.partial_file(dir_fd, name, dest, mode, (0, 0))
        try:
            os.write(fd, data)
            t.publish(dir_fd, fd, tmp, name, dest, mode, 1_000_000_000)
        finally:
            os.close(fd)


def test_a_folder_swapped_for_a_symlink_is_not_written_through(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    with target(out, tmp_path) as t:
        t.make_folder(out / "docs")
        write(t, out / "docs" / "a.txt", b"a")
        (out / "docs").rename(tmp_path / "moved")
        (out / "docs").symlink_to(elsewhere)  # swapped while the restore runs
        with pytest.raises(UnsafeDestination, match="symlink"):
            write(t, out / "docs" / "b.txt", b"b")
        t.make_folder(out / "docs")  # where the restore makes a folder, the link goes
        write(t, out / "docs" / "b.txt", b"b")
    assert list(elsewhere.iterdir()) == []
    assert (out / "docs").is_dir() and not (out / "docs").is_symlink()
    assert (out / "docs" / "b.txt").read_bytes() == b"b"


def test_an_in_place_anchor_follows_only_our_own_symlinks(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "etc"
    (home / "mallory").mkdir(parents=True)
    elsewhere.mkdir()
    ours = tmp_path / "ours"
    ours.symlink_to(home)
    with target(ours / "mallory", tmp_path, as_typed=False) as t:  # a link we (root) made
        write(t, ours / "mallory" / "ok.txt", b"ok")
    assert (home / "mallory" / "ok.txt").read_bytes() == b"ok"
    docs = home / "mallory" / "docs"
    docs.symlink_to(elsewhere)
    os.lchown(docs, MALLORY, MALLORY)
    with pytest.raises(UnsafeDestination, match=f"owned by uid {MALLORY}"):
        target(docs, tmp_path, as_typed=False)
    assert list(elsewhere.iterdir()) == []


def test_temporary_files_are_new_owned_and_private_before_any_data(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    # The name an older lanvault used for every restore's temporary file:
    planted = plant_in_shared_folder(shared, ".secret.txt.lanvault-restore")
    with target(shared, tmp_path) as t, t.parent(shared / "secret.txt") as (dir_fd, name):
        fd, tmp, resumed = t.partial_file(dir_fd, name, shared / "secret.txt", 0o600, (1001, 1001))
        try:
            st = os.fstat(fd)
            assert not resumed and tmp != planted.name and st.st_size == 0
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1001, 1001, 0o600)
        finally:
            os.close(fd)
    assert planted.read_bytes() == b"" and planted.stat().st_uid == MALLORY


def test_a_resume_trusts_only_the_file_it_made(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dest = out / "big.bin"
    with target(out, tmp_path) as t, t.parent(dest) as (dir_fd, name):
        fd, tmp, resumed = t.partial_file(dir_fd, name, dest, 0o644, (0, 0))
        os.write(fd, b"partial")
        os.close(fd)
        assert not resumed
        fd, again, resumed = t.partial_file(dir_fd, name, dest, 0o644, (0, 0))
        os.close(fd)
        assert resumed and again == tmp  # an interrupted restore picks its own file up
        os.unlink(out / tmp)  # another user replaces it under the same name
        (out / tmp).write_bytes(b"evil")
        os.chown(out / tmp, MALLORY, MALLORY)
        fd, third, resumed = t.partial_file(dir_fd, name, dest, 0o644, (0, 0))
        os.close(fd)
        assert not resumed and third != tmp
    assert (out / tmp).read_bytes() == b"evil"  # not ours: never used, never touched


def test_names_that_leave_the_anchor_are_refused(tmp_path: Path) -> None:
    with target(tmp_path / "out", tmp_path) as t:
        for bad in (tmp_path / "elsewhere.txt", tmp_path / "out" / ".." / "x"):
            with pytest.raises(UnsafeDestination), t.parent(bad):
                pass


def test_a_backup_passes_over_a_restore_still_on_its_way(tmp_path: Path) -> None:
    from chunkstore.catalog import own_temp_name
    from node.localtree import scan as _scan

    (tmp_path / "kept.txt").write_text("mine")
    (tmp_path / own_temp_name("kept.txt")).write_text("half a restore")
    scan = _scan(str(tmp_path))
    assert scan.files == [str(tmp_path / "kept.txt")]


def test_a_one_chunk_file_is_not_recorded_and_folders_are_flushed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    with target(out, tmp_path) as t:
        t.make_folder(out / "docs")
        with t.parent(out / "docs" / "a") as (dir_fd, name):
            fd, _tmp, resumed = t.partial_file(
                dir_fd, name, out / "docs" / "a", 0o644, (0, 0), resumable=False
            )
            os.close(fd)
        assert not resumed and not (tmp_path / "restores").exists()
        monkeypatch.setattr(os, "fsync", fsync)
        for n in range(5):
            write(t, out / "docs" / f"f{n}", b"x")
        folders = {(out / "docs").stat().st_ino, out.stat().st_ino}
        assert not folders & set(synced)  # files only, so far
        t.sync()
        assert sorted(ino for ino in synced if ino in folders) == sorted(folders)


def test_a_hard_link_is_made_only_to_the_file_the_restore_wrote(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with target(out, tmp_path) as t:
        write(t, out / "a", b"mine")
        assert t.make_hard_link(out / "a", out / "b")
        assert (out / "a").stat().st_ino == (out / "b").stat().st_ino
        (out / "a").unlink()
        (out / "a").write_bytes(b"planted")  # someone swaps the first name meanwhile
        with pytest.raises(UnsafeDestination, match="not the file this restore wrote"):
            t.make_hard_link(out / "a", out / "c")
        with pytest.raises(UnsafeDestination, match="not the file this restore wrote"):
            t.make_hard_link(out / "never", out / "d")
    assert not (out / "c").exists() and (out / "b").read_bytes() == b"mine"


def test_all_zeros_tells_a_chunk_of_zeros_from_any_other() -> None:
    assert all_zeros(b"") and all_zeros(bytes(64_000)) and all_zeros(b"\0")
    for at in (0, 1, 31_999, 63_999):  # one byte set anywhere, the ends included
        data = bytearray(64_000)
        data[at] = 1
        assert not all_zeros(bytes(data))
    assert not all_zeros(b"\x01" + bytes(10))


def test_the_names_remembered_for_paths_are_those_worked_out_and_unsafe_ones_never_kept(
    tmp_path: Path,
) -> None:
    """``_parts`` remembers the latest paths' names below the target (a small file asks four
    times): more paths than it keeps, and each answer is what the rule gives; a path outside
    the target or with ``..`` is refused every time it is asked, before and after."""
    out = tmp_path / "out"
    outside = [out / ".." / "escape", tmp_path / "elsewhere" / "x", Path("/etc/passwd")]
    with target(out, tmp_path) as t:
        for n in range(restore_target.PARTS_KEPT * 2 + 5):
            path = out / f"d{n % 7}" / f"f{n}"
            assert t._parts(path) == [f"d{n % 7}", f"f{n}"]
            assert t._parts(path) == [f"d{n % 7}", f"f{n}"]  # remembered: the same
            if n % 1000 == 0:
                for bad in outside:
                    with pytest.raises(UnsafeDestination):
                        t._parts(bad)
        assert len(t._parts_of) <= restore_target.PARTS_KEPT
        parts = t._parts(out / "a" / "b")
        parts.append("changed by a caller")
        assert t._parts(out / "a" / "b") == ["a", "b"]  # a copy each time
