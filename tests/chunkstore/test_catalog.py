from __future__ import annotations

import contextlib
import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkstore.catalog import (
    KIND_FILE_VERSION,
    KIND_SNAPSHOT,
    KIND_SNAPSHOT_ENTRY_DIR,
    KIND_SNAPSHOT_ENTRY_FILE,
    KIND_SNAPSHOT_ENTRY_SYMLINK,
    FileVersion,
    Snapshot,
    SnapshotEntry,
    decode_file_version,
    decode_snapshot,
    encode_file_version,
    encode_snapshot,
    hard_links,
    link_key,
    open_record,
    pack_xattrs,
    read_xattrs,
    seal_record,
    unpack_xattrs,
)
from chunkstore.chunking import chunk_count
from chunkstore.errors import CatalogFormatError, ChunkstoreError, TamperedEnvelopeError
from chunkstore.keys import KeyRing

RING = KeyRing.from_master(bytes(32))
addresses = st.binary(min_size=32, max_size=32)
texts = st.text(min_size=1, max_size=60)


@st.composite
def file_versions(draw: st.DrawFn) -> FileVersion:
    size = draw(st.one_of(st.sampled_from([0, 1, 63_999, 64_000, 128_000]), st.integers(0, 10**7)))
    return FileVersion(
        path=draw(texts),
        file_id=draw(addresses),
        size=size,
        mode=draw(st.integers(0, 0o177777)),
        uid=draw(st.integers(0, 2**32 - 1)),
        gid=draw(st.integers(0, 2**32 - 1)),
        mtime_ns=draw(st.integers(-(2**62), 2**62)),
        ctime_ns=draw(st.integers(0, 2**62)),
        degree=draw(st.integers(1, 9)),
        chunks=tuple(
            draw(st.lists(addresses, min_size=chunk_count(size), max_size=chunk_count(size)))
        ),
        owner=draw(st.integers(0, 2**32 - 1)),
        xattrs=tuple(
            sorted(draw(st.dictionaries(texts, st.binary(max_size=40), max_size=4)).items())
        ),
        link=draw(st.integers(0, 2**63 - 1)),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    entries = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(
            st.sampled_from(
                [KIND_SNAPSHOT_ENTRY_DIR, KIND_SNAPSHOT_ENTRY_FILE, KIND_SNAPSHOT_ENTRY_SYMLINK]
            )
        )
        entries.append(
            SnapshotEntry(
                path=draw(texts),
                kind=kind,
                mode=draw(st.integers(0, 0o177777)),
                mtime_ns=draw(st.integers(0, 2**62)),
                file_id=draw(addresses) if kind == KIND_SNAPSHOT_ENTRY_FILE else b"",
                target=draw(texts) if kind == KIND_SNAPSHOT_ENTRY_SYMLINK else "",
            )
        )
    return Snapshot(
        seq=draw(st.integers(0, 2**63)),
        taken_ns=draw(st.integers(0, 2**62)),
        owner=draw(st.integers(0, 99)),
        entries=tuple(entries),
    )


@given(file_versions())
@settings(max_examples=50)
def test_file_version_round_trip(version: FileVersion) -> None:
    encoded = encode_file_version(version)
    assert decode_file_version(encoded) == version
    sealed = seal_record(RING, KIND_FILE_VERSION, encoded)
    assert decode_file_version(open_record(RING, KIND_FILE_VERSION, sealed)) == version


@given(snapshots())
@settings(max_examples=50)
def test_snapshot_round_trip(snapshot: Snapshot) -> None:
    encoded = encode_snapshot(snapshot)
    assert decode_snapshot(encoded) == snapshot
    assert (
        decode_snapshot(open_record(RING, KIND_SNAPSHOT, seal_record(RING, KIND_SNAPSHOT, encoded)))
        == snapshot
    )


def test_version_is_compact() -> None:
    version = FileVersion(
        "a.txt", os.urandom(32), 10, 0o100644, 0, 0, 1, 1, 2, (os.urandom(32),), 1
    )
    assert len(encode_file_version(version)) < 130


def test_chunk_list_must_match_size() -> None:
    with pytest.raises(CatalogFormatError, match="chunk addresses"):
        FileVersion("a", bytes(32), 64_000, 0, 0, 0, 0, 0, 1, (bytes(32),), 1)


def test_unknown_version_refused() -> None:
    import msgpack

    with pytest.raises(CatalogFormatError, match="version"):
        decode_file_version(msgpack.packb([KIND_FILE_VERSION, 99]))
    with pytest.raises(CatalogFormatError, match="kind"):
        decode_file_version(encode_snapshot(Snapshot(1, 1, 1)))


def test_sealed_record_tampering_and_kind_binding() -> None:
    sealed = bytearray(seal_record(RING, KIND_SNAPSHOT, encode_snapshot(Snapshot(1, 2, 3))))
    with pytest.raises(CatalogFormatError, match="kind"):
        open_record(RING, KIND_FILE_VERSION, bytes(sealed))
    sealed[-3] ^= 1
    with pytest.raises(TamperedEnvelopeError):
        open_record(RING, KIND_SNAPSHOT, bytes(sealed))


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_decoders_raise_only_their_own_error_on_garbage(garbage: bytes) -> None:
    for decode in (decode_file_version, decode_snapshot):
        with contextlib.suppress(CatalogFormatError):
            decode(garbage)
    with contextlib.suppress(ChunkstoreError):
        open_record(RING, KIND_SNAPSHOT, garbage)


@given(file_versions(), st.data())
@settings(max_examples=100)
def test_mutated_records_raise_only_format_errors(
    version: FileVersion, data: st.DataObject
) -> None:
    encoded = bytearray(encode_file_version(version))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] = data.draw(st.integers(0, 255))
    with contextlib.suppress(CatalogFormatError):
        decode_file_version(bytes(encoded))


def test_own_temporary_names_are_recognised_and_nothing_else() -> None:
    from chunkstore.catalog import is_own_temp, own_temp_name

    made = own_temp_name("report.odt")
    assert is_own_temp(made) and is_own_temp(f"docs/{made}", "report.odt")
    assert not is_own_temp(made, "other.odt")
    for user_name in (
        "report.odt",
        ".report.odt",
        ".report.odt.lanvault-",
        ".report.odt.lanvault-xyz",
        ".report.odt.lanvault-0123456789abcdef.bak",
        "report.odt.lanvault-0123456789abcdef",
    ):
        assert not is_own_temp(user_name), user_name


def test_a_version_recorded_before_links_and_xattrs_reads_as_having_none() -> None:
    import msgpack

    old = [KIND_FILE_VERSION, 1, "/f", bytes(32), 3, 0o100644, 0, 0, 5, 6, 2, bytes(32), 1]
    version = decode_file_version(msgpack.packb(old, use_bin_type=True))
    assert (version.xattrs, version.link) == ((), 0)
    with pytest.raises(CatalogFormatError, match="extended attribute"):
        decode_file_version(msgpack.packb([*old, [["n"]], 0], use_bin_type=True))
    with pytest.raises(CatalogFormatError, match="sorted"):
        FileVersion("/f", bytes(32), 0, 0, 0, 0, 0, 0, 1, (bytes(32),), 1, (("b", b""), ("a", b"")))
    assert unpack_xattrs(pack_xattrs((("a", b"\x00"),))) == (("a", b"\x00"),)
    assert pack_xattrs(()) == b"" and unpack_xattrs(b"") == ()
    with pytest.raises(CatalogFormatError):
        unpack_xattrs(msgpack.packb([["a", "not bytes"]], use_bin_type=True))


def test_hard_links_are_names_of_one_file_with_one_content() -> None:
    def version(path: str, link: int, chunk: bytes, mtime: int = 5) -> FileVersion:
        return FileVersion(path, bytes(32), 3, 0o100644, 0, 0, mtime, 0, 1, (chunk,), 1, (), link)

    a, b = bytes(32), b"\x01" * 32
    versions = [
        version("/x", 7, a),
        version("/y", 7, a),  # a second name of /x
        version("/z", 7, b),  # the same file read later with other content: not a link
        version("/w", 0, a),  # link unknown (recorded before links were): never linked
        version("/v", 7, a, mtime=6),
        version("/u", 7, a),
    ]
    assert hard_links(versions) == [None, 0, None, None, None, 0]


def test_link_key_names_regular_files_only(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "f")
    with open(path, "w"):
        pass
    os.link(path, os.path.join(tmp_path, "g"))
    assert link_key(os.stat(path)) == link_key(os.stat(os.path.join(tmp_path, "g"))) != 0
    assert link_key(os.stat(tmp_path)) == 0


def test_an_attribute_that_cannot_be_read_is_an_error_one_removed_meanwhile_is_not(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(tmp_path, "f")
    with open(path, "w"):
        pass
    os.setxattr(path, "user.a", b"1")
    os.setxattr(path, "user.b", b"2")
    real = os.getxattr

    def getxattr(where: str, name: str, *, follow_symlinks: bool = True) -> bytes:
        if name == "user.a":
            raise OSError(errno.ENODATA, "No data available")
        if name == "user.b" and fail:
            raise OSError(errno.EACCES, "Permission denied")
        return real(where, name, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "getxattr", getxattr)
    fail = False
    assert read_xattrs(path) == (("user.b", b"2"),)  # user.a went away while read
    fail = True
    with pytest.raises(OSError, match=r"cannot read its extended attribute user\.b"):
        read_xattrs(path)
