"""The small-file path of a backup reads a file whole only if it is still the file it stat'd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkstore.chunking import CHUNK_SIZE
from chunkstore.envelope import chunk_address
from chunkstore.keys import KeyRing
from node.localtree import GROUP_BYTES, GROUP_FILES, SMALL_FILE
from node.localtree import groups as _groups
from node.localtree import read_folders as _read_folders
from node.localtree import read_small as _read_small
from node.localtree import read_smalls as _read_smalls
from node.localtree import runs as _runs
from node.localtree import scan as _scan


def test_a_small_file_is_read_whole_into_its_chunks(tmp_path: Path, keys: KeyRing) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(CHUNK_SIZE + 10)
    path.write_bytes(data)
    os.setxattr(path, "user.b", b"2")
    os.setxattr(path, "user.a", b"1")
    got = _read_small(keys, str(path), path.stat())
    assert got is not None
    chunks, addresses, xattrs = got
    assert chunks == [data[:CHUNK_SIZE], data[CHUNK_SIZE:]]
    assert addresses == [chunk_address(keys, c) for c in chunks]
    assert xattrs == (("user.a", b"1"), ("user.b", b"2"))  # sorted by name


def test_a_file_changed_since_its_stat_is_left_for_a_second_read(
    tmp_path: Path, keys: KeyRing
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"before")
    before = path.stat()
    path.write_bytes(b"after, and longer")
    assert _read_small(keys, str(path), before) is None
    replaced = tmp_path / "g.bin"
    replaced.write_bytes(b"before")
    before = replaced.stat()
    (tmp_path / "new").write_bytes(b"before")
    os.replace(tmp_path / "new", replaced)  # the same bytes, but another file
    assert _read_small(keys, str(replaced), before) is None


def test_an_unreadable_entry_is_an_error_in_its_place(tmp_path: Path, keys: KeyRing) -> None:
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"fine")
    link = tmp_path / "link"
    link.symlink_to(ok)  # swapped in for a file since the scan: never followed
    results = _read_smalls(keys, [(str(link), ok.stat()), (str(ok), ok.stat())])
    assert isinstance(results[0], OSError)
    assert results[1] is not None and not isinstance(results[1], OSError)
    with pytest.raises(FileNotFoundError):
        _read_small(keys, str(tmp_path / "gone"), ok.stat())


def test_backup_groups_are_bounded_by_files_and_bytes(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"x" * 1000)
    big = tmp_path / "big"
    big.write_bytes(b"y" * (SMALL_FILE + 1))
    stats = {str(small): small.stat(), str(big): big.stat()}
    files = [str(small)] * (GROUP_FILES + 3)
    assert [len(g) for g in _groups(files, stats)] == [GROUP_FILES, 3]
    per_group = GROUP_BYTES // SMALL_FILE  # a big file counts as what a group reads of it
    groups = list(_groups([str(big)] * (per_group + 1), stats))
    assert [len(g) for g in groups] == [per_group, 1]
    assert list(_groups([], stats)) == []
    assert [len(g) for g in _groups(["unlisted"] * 5, stats)] == [5]


def test_an_entry_that_cannot_be_stat_ed_is_listed_for_its_own_backup_to_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that can be listed but not searched: its entries cannot be stat'd. The scan
    lists them (their backup fails by name) instead of crashing the whole backup."""
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "locked.txt").write_text("unseen")
    real_scandir = os.scandir

    class Unsearchable:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.name, self.path, self._entry = entry.name, entry.path, entry

        def stat(self, follow_symlinks: bool = True) -> os.stat_result:
            if self.name == "locked.txt":
                raise PermissionError(13, "Permission denied", self.path)
            return self._entry.stat(follow_symlinks=follow_symlinks)

    class Listing:
        def __init__(self, path: str) -> None:
            self._listing = real_scandir(path)

        def __enter__(self) -> list[Unsearchable]:
            return [Unsearchable(e) for e in self._listing]

        def __exit__(self, *exc: object) -> None:
            self._listing.close()

    monkeypatch.setattr(os, "scandir", Listing)
    scan = _scan(str(tmp_path))
    assert scan.files == [str(tmp_path / "locked.txt"), str(tmp_path / "ok.txt")]
    assert str(tmp_path / "locked.txt") not in scan.stats and scan.total == 4


def test_folders_are_read_with_their_xattrs_and_a_swapped_one_is_left_for_later(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    os.setxattr(folder, "user.color", b"blue")
    file = tmp_path / "was-a-folder"
    file.write_bytes(b"x")  # a file where the scan saw a folder: the careful path decides
    got = _read_folders([str(folder), str(file), str(tmp_path / "gone")])
    first = got[0]
    assert isinstance(first, tuple)
    assert first[0].st_ino == folder.stat().st_ino and first[1] == (("user.color", b"blue"),)
    assert got[1] is None
    assert isinstance(got[2], FileNotFoundError)


def test_runs_split_by_bytes_and_never_leave_an_item_out() -> None:
    assert list(_runs([], 10)) == []
    assert list(_runs([4, 4, 4], 8)) == [(0, 2), (2, 3)]
    assert list(_runs([20, 1], 8)) == [(0, 1), (1, 2)]  # too big alone: a run of its own
    assert list(_runs([1] * 5, 100)) == [(0, 5)]
