"""What a backup leaves out: the pattern rules, cache folders, other file systems, and a backup
and restore through an in-process network with exclusions (what was left out is not restored;
what was backed up before and is now left out is recorded as no longer there)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio.testing

from chunkstore.exclusions import (
    CACHEDIR_SIGNATURE,
    Exclusions,
    PatternError,
    compile_pattern,
    read_pattern_file,
)
from node.localtree import scan

from .cluster import open_cluster


@pytest.mark.parametrize(
    ("pattern", "left_out", "kept"),
    [
        ("node_modules", ["/a/node_modules", "/node_modules"], ["/a/node_modules2", "/a/x"]),
        ("*.o", ["/src/main.o", "/a/b.o"], ["/src/main.o.txt", "/src/o"]),
        ("/home/ann/tmp", ["/home/ann/tmp"], ["/srv/home/ann/tmp", "/home/ann/tmp2"]),
        ("build/tmp", ["/src/build/tmp", "/build/tmp"], ["/src/rebuild/tmp", "/src/build"]),
        ("/data/*/cache", ["/data/x/cache"], ["/data/x/y/cache", "/data/cache"]),
        ("/data/**/cache", ["/data/x/cache", "/data/x/y/cache"], ["/other/x/cache"]),
        ("file?.txt", ["/a/file1.txt"], ["/a/file10.txt", "/a/file/.txt"]),
        ("[ab]*.log", ["/x/a1.log", "/x/b.log"], ["/x/c.log"]),
        ("[!ab]*.log", ["/x/c.log"], ["/x/a1.log"]),
        ("cache/", ["/home/cache"], ["/home/cache2"]),  # a trailing slash changes nothing
    ],
)
def test_pattern_rules(pattern: str, left_out: list[str], kept: list[str]) -> None:
    rule = Exclusions([pattern])
    assert [p for p in left_out if not rule.excludes(p)] == []
    assert [p for p in kept if rule.excludes(p)] == []


def test_bad_patterns_and_pattern_files(tmp_path: Path) -> None:
    with pytest.raises(PatternError, match="never closed"):
        compile_pattern("[abc")
    with pytest.raises(PatternError, match="empty"):
        compile_pattern("  ")
    listing = tmp_path / "excludes"
    listing.write_text("# build products\n*.o\n\n  node_modules  \n   # indented comment\n")
    assert read_pattern_file(str(listing)) == ["*.o", "node_modules"]
    with pytest.raises(PatternError, match="No such file"):
        read_pattern_file(str(tmp_path / "nowhere"))


def make_tree(root: Path) -> None:
    for name in ("a.txt", "b.o", "keep/c.txt", "keep/d.o", "node_modules/x/y.js", "cache/big"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (root / "cache" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# a cache\n")
    (root / "fake").mkdir()
    (root / "fake" / "CACHEDIR.TAG").write_bytes(b"Signature: not the real one\n")
    (root / "fake" / "e.txt").write_text("kept")


def test_scan_leaves_out_matches_whole_folders_and_cache_contents(tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_tree(root)
    locked = root / "node_modules" / "x"
    locked.chmod(0)  # left out, so never read: no "cannot be read" for it
    try:
        found = scan(str(root), Exclusions(["*.o", "node_modules"], exclude_caches=True))
    finally:
        locked.chmod(0o755)
    relative = sorted(os.path.relpath(p, root) for p in found.files)
    assert relative == [
        "a.txt",
        "cache/CACHEDIR.TAG",  # the tag says why the folder is empty
        "fake/CACHEDIR.TAG",
        "fake/e.txt",  # a tag without the signature is not a cache's
        "keep/c.txt",
    ]
    assert sorted(os.path.relpath(p, root) for p in found.folders) == [".", "cache", "fake", "keep"]
    assert found.unlisted == []
    everything = scan(str(root))
    assert len(everything.files) == 9


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_one_file_system_keeps_a_mount_point_empty(tmp_path: Path) -> None:
    root = tmp_path / "src"
    make_tree(root)
    other = root / "mnt"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True)
    try:
        (other / "elsewhere.txt").write_text("on another file system")
        found = scan(str(root), Exclusions(one_file_system=True))
        assert str(other) in found.folders
        assert str(other / "elsewhere.txt") not in found.files
        assert str(other / "elsewhere.txt") in scan(str(root)).files
    finally:
        subprocess.run(["umount", str(other)], check=True)


async def test_a_backup_with_exclusions_restores_without_them(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    root = tmp_path / "src"
    make_tree(root)
    async with open_cluster(tmp_path / "c", 3) as cluster:
        owner = cluster.members[1].owner
        first = await owner.backup_path(root, degree=2)
        assert first.removed == 0
        rules = Exclusions(["*.o", "node_modules"], exclude_caches=True)
        second = await owner.backup_path(root, degree=2, exclusions=rules)
        # Backed up before, left out now: no longer in the newest state of the tree.
        left_out = {"b.o", "keep/d.o", "node_modules", "node_modules/x", "node_modules/x/y.js"}
        assert second.removed == len(left_out) + 1  # and cache/big
        out = tmp_path / "out"
        await owner.restorer.restore_path(root, out)
        restored = sorted(
            os.path.relpath(os.path.join(d, n), out) for d, _s, names in os.walk(out) for n in names
        )
        assert restored == [
            "a.txt",
            "cache/CACHEDIR.TAG",
            "fake/CACHEDIR.TAG",
            "fake/e.txt",
            "keep/c.txt",
        ]
        assert (out / "keep" / "c.txt").read_text() == "keep/c.txt"
