"""A snapshot's file or folder as a download: bytes and tar streams, checked by unpacking them."""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from lanvault.downloads import FETCH_BATCH, DownloadError, plan
from lanvault.history import Listed

CHUNK = 1000  # these tests' chunk size (the real one does not matter to a download)


class Chunks:
    """Chunks by address, as the peers would give their plaintexts; counts what was asked."""

    def __init__(self) -> None:
        self.plain: dict[bytes, bytes] = {}
        self.asked: list[int] = []

    def add(self, data: bytes) -> tuple[bytes, ...]:
        addresses = []
        for start in range(0, max(len(data), 1), CHUNK):
            piece = data[start : start + CHUNK]
            address = hashlib.sha256(piece).digest()
            self.plain[address] = piece
            addresses.append(address)
        return tuple(addresses)

    async def fetch(self, addresses: list[bytes]) -> list[bytes]:
        self.asked.append(len(addresses))
        await trio.lowlevel.checkpoint()
        return [self.plain[a] for a in addresses]


def file_entry(chunks: Chunks, data: bytes, mode: int = 0o100644) -> Listed:
    return Listed("file", len(data), mode, 1_700_000_000_123_456_789, b"", chunks.add(data))


def folder(mode: int = 0o40755) -> Listed:
    return Listed("folder", 0, mode, 1_700_000_000_000_000_000, b"")


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([piece async for piece in body])


async def test_a_file_is_its_own_bytes_fetched_a_batch_at_a_time() -> None:
    chunks = Chunks()
    data = bytes(range(256)) * 100  # 26 chunks of this test's size
    entries = {"/home/u/docs/a.bin": file_entry(chunks, data)}
    download = plan(entries, "/home/u/docs/a.bin", chunks.fetch)
    assert (download.filename, download.size) == ("a.bin", len(data))
    assert await collect(download.body) == data
    assert max(chunks.asked) == FETCH_BATCH and sum(chunks.asked) == 26


async def test_a_folder_is_a_tar_that_unpacks_to_what_was_backed_up() -> None:
    chunks = Chunks()
    entries = {
        "/home/u/docs": folder(),
        "/home/u/docs/a.txt": file_entry(chunks, b"hello\n", 0o100600),
        "/home/u/docs/sub": folder(0o40700),
        "/home/u/docs/sub/" + "long name " * 20: file_entry(chunks, b"x" * 2500),
        "/home/u/docs/empty": file_entry(chunks, b""),
        "/home/u/docs/link": Listed("symlink", 0, 0o120777, 0, b"", chunks.add(b"a.txt")),
    }
    download = plan(entries, "/home/u/docs", chunks.fetch)
    assert download.filename == "docs.tar" and download.size is None
    with tarfile.open(fileobj=io.BytesIO(await collect(download.body))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {
            "docs",
            "docs/a.txt",
            "docs/sub",
            "docs/sub/" + "long name " * 20,
            "docs/empty",
            "docs/link",
        }
        assert members["docs/sub"].isdir() and members["docs/sub"].mode == 0o700
        assert members["docs/a.txt"].mode == 0o600
        assert members["docs/a.txt"].mtime == pytest.approx(1_700_000_000.123456789)
        assert members["docs/link"].issym() and members["docs/link"].linkname == "a.txt"
        assert tar.extractfile("docs/a.txt").read() == b"hello\n"  # type: ignore[union-attr]
        long = tar.extractfile("docs/sub/" + "long name " * 20)
        assert long is not None and long.read() == b"x" * 2500
        assert tar.extractfile("docs/empty").read() == b""  # type: ignore[union-attr]


async def test_a_mounted_trees_root_gets_a_folder_of_its_own() -> None:
    chunks = Chunks()
    entries = {"/srv/tree/x": file_entry(chunks, b"1"), "/srv/tree/d": folder()}
    download = plan(entries, "/srv/tree", chunks.fetch)
    with tarfile.open(fileobj=io.BytesIO(await collect(download.body))) as tar:
        assert [m.name for m in tar.getmembers()] == ["tree", "tree/d", "tree/x"]
        assert tar.getmember("tree").isdir()


async def test_a_mount_symlink_keeps_its_recorded_target() -> None:
    entries = {"/t/l": Listed("symlink", 0, 0o120777, 0, b"", target="../elsewhere")}
    download = plan(entries, "/t/l", Chunks().fetch)
    with tarfile.open(fileobj=io.BytesIO(await collect(download.body))) as tar:
        assert tar.getmember("l").linkname == "../elsewhere"


async def test_chunks_that_do_not_add_up_to_the_size_end_the_stream_with_an_error() -> None:
    chunks = Chunks()
    entry = file_entry(chunks, b"abc")
    short = Listed("file", 10, entry.mode, 0, b"", entry.chunks)
    with pytest.raises(DownloadError, match="3 bytes of a 10-byte file"):
        await collect(plan({"/f": short}, "/f", chunks.fetch).body)


def test_nothing_to_download_is_said() -> None:
    with pytest.raises(DownloadError, match="nothing to download"):
        plan({}, "/gone", Chunks().fetch)


names = st.text(
    st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=40
).filter(lambda n: n not in (".", ".."))


@settings(max_examples=40, deadline=None)
@given(
    files=st.dictionaries(
        st.lists(names, min_size=1, max_size=3).map("/".join), st.binary(max_size=3000), max_size=8
    )
)
def test_any_tree_unpacks_inside_its_own_folder_with_every_byte(files: dict[str, bytes]) -> None:
    chunks = Chunks()
    entries: dict[str, Listed] = {"/r": folder()}
    for relative, data in sorted(files.items()):  # a file before what would be inside it
        parts = relative.split("/")
        parents = ["/r/" + "/".join(parts[:i]) for i in range(1, len(parts))]
        if "/r/" + relative in entries or any(
            entries.get(p, folder()).kind != "folder" for p in parents
        ):
            continue  # a name both a file and a folder: not a tree
        for parent in parents:
            entries.setdefault(parent, folder())
        entries["/r/" + relative] = file_entry(chunks, data)

    async def main() -> bytes:
        return await collect(plan(entries, "/r", chunks.fetch).body)

    blob = trio.run(main)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for member in tar.getmembers():
            assert member.name == "r" or member.name.startswith("r/")
            assert ".." not in member.name.split("/")
            entry = entries["/" + member.name]
            if member.isfile():
                got = tar.extractfile(member)
                assert got is not None
                assert got.read() == b"".join(chunks.plain[a] for a in entry.chunks)
            else:
                assert member.isdir() and stat.S_ISDIR(entry.mode)
        assert len(tar.getmembers()) == len(entries)
