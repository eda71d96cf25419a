"""The catalog: file versions and snapshots, serialized with msgpack and sealed.

A *file version* names one instant of one file: its path, fileId, size, mode, owner, times,
desired degree and the ordered chunk addresses. A *snapshot* is the tree as of one instant: a
sequence number, a time and the entries (path -> version, directory or symlink).

Every record is a msgpack array whose first element is the record kind and second the format
version, so a reader refuses what it does not know instead of misreading it. Sealed records are
encrypted with the metadata key (``seal_record``); ``docs/formats.md`` gives the layout.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.utils

from .chunking import chunk_count
from .errors import CatalogFormatError, TamperedEnvelopeError, TruncatedEnvelopeError
from .fileid import content_digest, file_id
from .keys import KeyRing
from .shares import Code

CATALOG_VERSION = 1
KIND_FILE_VERSION = 1
KIND_SNAPSHOT = 2
KIND_CATALOG_MANIFEST = 3  # see chunkstore/recovery.py
KIND_RECOVERY_KIT = 4
KIND_SNAPSHOT_ENTRY_DIR = 1
KIND_SNAPSHOT_ENTRY_FILE = 2
KIND_SNAPSHOT_ENTRY_SYMLINK = 3

MAX_RECORD_SIZE = 256 * 1024 * 1024
# The extended attribute that asks a mount for a file's (or a folder's files') degree.
DEGREE_XATTR = "user.lanvault.degree"
_SEALED_HEADER = struct.Struct(">4sBB24s")  # magic, version, kind, nonce
_SEALED_MAGIC = b"LVMD"


@dataclass(frozen=True, slots=True)
class FileVersion:
    path: str
    file_id: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    degree: int  # copies, 1..9, or a K-of-N code as Code.as_degree() (32 K + N)
    chunks: tuple[bytes, ...]
    owner: int
    xattrs: tuple[tuple[str, bytes], ...] = ()  # extended attributes, sorted by name
    link: int = 0  # names the file (device, inode) it was read from: equal for hard links

    def __post_init__(self) -> None:
        if len(self.file_id) != 32:
            raise CatalogFormatError("fileId must be 32 bytes")
        if self.size < 0:
            raise CatalogFormatError("size must not be negative")
        if not 1 <= self.degree <= 9:
            try:
                Code.of_degree(self.degree)
            except ValueError:
                raise CatalogFormatError(
                    f"degree {self.degree} is neither 1..9 copies nor a K-of-N code"
                ) from None
        if len(self.chunks) != chunk_count(self.size):
            raise CatalogFormatError(
                f"{len(self.chunks)} chunk addresses for a {self.size}-byte file"
                f" (expected {chunk_count(self.size)})"
            )
        if any(len(c) != 32 for c in self.chunks):
            raise CatalogFormatError("chunk addresses must be 32 bytes")
        if list(self.xattrs) != sorted(set(self.xattrs)) or len({n for n, _ in self.xattrs}) != len(
            self.xattrs
        ):
            raise CatalogFormatError("extended attributes must be sorted and named once")
        if not 0 <= self.link < 1 << 63:
            raise CatalogFormatError("link key outside 0..2**63-1")

    @property
    def code(self) -> Code | None:
        """The K-of-N code its chunks are kept with, or None: ``degree`` copies."""
        return Code.of_degree(self.degree)


def link_key(st: os.stat_result) -> int:
    """What names a regular file among the files read at one time: two names with the same
    key (and the same content) are hard links of one file. 0 for anything else."""
    if not stat.S_ISREG(st.st_mode):
        return 0
    digest = hashlib.blake2b(f"{st.st_dev}:{st.st_ino}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


def hard_links(versions: Sequence[FileVersion]) -> list[int | None]:
    """For each of ``versions`` (files restored together), the index of an earlier one it is a
    second name of (a hard link: same file read, same content), else None."""
    first: dict[tuple[int, int, int, bytes], int] = {}
    out: list[int | None] = []
    for index, version in enumerate(versions):
        if not version.link:
            out.append(None)
            continue
        key = (version.link, version.size, version.mtime_ns, content_digest(version.chunks))
        if key in first:
            out.append(first[key])
        else:
            first[key] = index
            out.append(None)
    return out


def read_xattrs(path: str | int, *, dir_fd: int | None = None) -> tuple[tuple[str, bytes], ...]:
    """The extended attributes of ``path`` (or of the open descriptor), sorted; a file
    system without them gives none, and one removed while they are read is left out. One that
    is listed but cannot be read raises: a backup says what it could not keep."""
    where: str | int = path
    if dir_fd is not None:
        assert isinstance(path, str)
        where = f"/proc/self/fd/{dir_fd}/{path}"
    follow = isinstance(where, int)
    try:
        names = os.listxattr(where, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return ()
        raise
    out = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(where, name, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise OSError(
                    exc.errno, f"cannot read its extended attribute {name}: {exc.strerror}"
                ) from None
    return tuple(out)


def version_from_stat(
    owner: int,
    path: str,
    st: os.stat_result,
    degree: int,
    chunks: Sequence[bytes],
    size: int | None = None,
    xattrs: tuple[tuple[str, bytes], ...] = (),
) -> FileVersion:
    """The version of ``path`` whose metadata is ``st`` and content the ordered ``chunks``;
    ``size`` when the content is not ``st_size`` bytes (a folder's is none, a symlink's its
    target)."""
    size = st.st_size if size is None else size
    return FileVersion(
        path=path,
        file_id=file_id(owner, path, size, st.st_mtime_ns, content_digest(chunks)),
        size=size,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        degree=degree,
        chunks=tuple(chunks),
        owner=owner,
        xattrs=xattrs,
        link=link_key(st),
    )


# lanvault's own temporary files (a restored file before it takes its name, in the folder it
# goes to) are never part of anyone's history: the mount and a backup pass over them.
_OWN_TEMP = re.compile(r"\..+\.lanvault-[0-9a-f]{16}")


def own_temp_name(name: str) -> str:
    """A fresh name for a temporary file that will become ``name`` (hidden, random)."""
    return f".{name}.lanvault-{secrets.token_hex(8)}"


def is_own_temp(path: str, name: str | None = None) -> bool:
    """Whether ``path``'s last component is one of ours (for ``name``, if given)."""
    base = path.rpartition("/")[2]
    if name is not None and not base.startswith(f".{name}.lanvault-"):
        return False
    return _OWN_TEMP.fullmatch(base) is not None


Xattrs = tuple[tuple[str, bytes], ...]


def pack_xattrs(xattrs: Xattrs) -> bytes:
    """The catalog's column form of a version's or entry's extended attributes (b"": none)."""
    return _pack([[name, value] for name, value in xattrs]) if xattrs else b""


def unpack_xattrs(data: bytes) -> Xattrs:
    if not data:
        return ()
    pairs = _unpack(data)
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], bytes)
        for p in pairs
    ):
        raise CatalogFormatError("extended attributes are malformed")
    return tuple((str(p[0]), bytes(p[1])) for p in pairs)


def version_key(version: FileVersion) -> tuple[object, ...]:
    """What makes two versions of one path the same version: the fileId (name, size, mtime,
    content) and the metadata a restore gives back that the fileId leaves out (mode, owner,
    extended attributes, which file it is). A new ctime alone is not a new version."""
    return version.file_id, version.mode, version.uid, version.gid, version.xattrs, version.link


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One node of a snapshot tree: a directory, a file (by fileId) or a symlink."""

    path: str
    kind: int
    mode: int
    mtime_ns: int
    file_id: bytes = b""
    target: str = ""


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int
    taken_ns: int
    owner: int
    entries: tuple[SnapshotEntry, ...] = field(default_factory=tuple)


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes) -> Any:
    if len(data) > MAX_RECORD_SIZE:
        raise CatalogFormatError("catalog record too large")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CatalogFormatError(f"malformed catalog record: {exc}") from None


def _header(obj: Any, kind: int) -> list[Any]:
    if not isinstance(obj, list) or len(obj) < 2:
        raise CatalogFormatError("catalog record is not a versioned array")
    if obj[0] != kind:
        raise CatalogFormatError(f"expected record kind {kind}, found {obj[0]!r}")
    if obj[1] != CATALOG_VERSION:
        raise CatalogFormatError(f"catalog format version {obj[1]!r} is not supported")
    return obj[2:]


def _expect(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CatalogFormatError(f"field {name} has the wrong type")
    return value


def encode_file_version(v: FileVersion) -> bytes:
    return _pack(
        [
            KIND_FILE_VERSION,
            CATALOG_VERSION,
            v.path,
            v.file_id,
            v.size,
            v.mode,
            v.uid,
            v.gid,
            v.mtime_ns,
            v.ctime_ns,
            v.degree,
            b"".join(v.chunks),
            v.owner,
            [[name, value] for name, value in v.xattrs],
            v.link,
        ]
    )


def decode_file_version(data: bytes) -> FileVersion:
    fields = _header(_unpack(data), KIND_FILE_VERSION)
    if len(fields) == 11:  # written before versions kept extended attributes and links
        fields = [*fields, [], 0]
    if len(fields) != 13:
        raise CatalogFormatError("file version record has the wrong number of fields")
    path, fid, size, mode, uid, gid, mtime, ctime, degree, chunks, owner, raw_xattrs, link = fields
    xattrs = []
    for pair in _expect(raw_xattrs, list, "xattrs"):
        if not isinstance(pair, list) or len(pair) != 2:
            raise CatalogFormatError("extended attribute is malformed")
        xattrs.append((_expect(pair[0], str, "xattr name"), _expect(pair[1], bytes, "xattr value")))
    blob = _expect(chunks, bytes, "chunks")
    if len(blob) % 32:
        raise CatalogFormatError("chunk list is not a whole number of addresses")
    try:
        return FileVersion(
            path=_expect(path, str, "path"),
            file_id=_expect(fid, bytes, "file_id"),
            size=_expect(size, int, "size"),
            mode=_expect(mode, int, "mode"),
            uid=_expect(uid, int, "uid"),
            gid=_expect(gid, int, "gid"),
            mtime_ns=_expect(mtime, int, "mtime_ns"),
            ctime_ns=_expect(ctime, int, "ctime_ns"),
            degree=_expect(degree, int, "degree"),
            chunks=tuple(blob[i : i + 32] for i in range(0, len(blob), 32)),
            owner=_expect(owner, int, "owner"),
            xattrs=tuple(xattrs),
            link=_expect(link, int, "link"),
        )
    except ValueError as exc:
        raise CatalogFormatError(str(exc)) from None


def encode_snapshot(s: Snapshot) -> bytes:
    return _pack(
        [
            KIND_SNAPSHOT,
            CATALOG_VERSION,
            s.seq,
            s.taken_ns,
            s.owner,
            [[e.path, e.kind, e.mode, e.mtime_ns, e.file_id, e.target] for e in s.entries],
        ]
    )


def decode_snapshot(data: bytes) -> Snapshot:
    fields = _header(_unpack(data), KIND_SNAPSHOT)
    if len(fields) != 4:
        raise CatalogFormatError("snapshot record has the wrong number of fields")
    seq, taken, owner, raw_entries = fields
    entries = []
    for raw in _expect(raw_entries, list, "entries"):
        if not isinstance(raw, list) or len(raw) != 6:
            raise CatalogFormatError("snapshot entry is malformed")
        path, kind, mode, mtime, fid, target = raw
        if kind not in (
            KIND_SNAPSHOT_ENTRY_DIR,
            KIND_SNAPSHOT_ENTRY_FILE,
            KIND_SNAPSHOT_ENTRY_SYMLINK,
        ):
            raise CatalogFormatError(f"unknown snapshot entry kind {kind!r}")
        file_id = _expect(fid, bytes, "file_id")
        if kind == KIND_SNAPSHOT_ENTRY_FILE and len(file_id) != 32:
            raise CatalogFormatError("file entry without a 32-byte fileId")
        entries.append(
            SnapshotEntry(
                path=_expect(path, str, "path"),
                kind=kind,
                mode=_expect(mode, int, "mode"),
                mtime_ns=_expect(mtime, int, "mtime_ns"),
                file_id=file_id,
                target=_expect(target, str, "target"),
            )
        )
    return Snapshot(
        seq=_expect(seq, int, "seq"),
        taken_ns=_expect(taken, int, "taken_ns"),
        owner=_expect(owner, int, "owner"),
        entries=tuple(entries),
    )


def seal_record(keys: KeyRing, kind: int, plaintext: bytes) -> bytes:
    """Encrypt a catalog record with the metadata key; the kind is bound as associated data."""
    nonce = nacl.utils.random(24)
    header = _SEALED_HEADER.pack(_SEALED_MAGIC, CATALOG_VERSION, kind, nonce)
    return header + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, header, nonce, keys.metadata_key
    )


def open_record(keys: KeyRing, kind: int, sealed: bytes) -> bytes:
    if len(sealed) < _SEALED_HEADER.size + 16:
        raise TruncatedEnvelopeError("sealed catalog record is truncated")
    header = sealed[: _SEALED_HEADER.size]
    magic, version, rec_kind, nonce = _SEALED_HEADER.unpack(header)
    if magic != _SEALED_MAGIC:
        raise CatalogFormatError("not a sealed lanvault catalog record")
    if version != CATALOG_VERSION:
        raise CatalogFormatError(f"sealed record version {version} is not supported")
    if rec_kind != kind:
        raise CatalogFormatError(f"sealed record is of kind {rec_kind}, expected {kind}")
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[_SEALED_HEADER.size :], header, nonce, keys.metadata_key
        )
    except nacl.exceptions.CryptoError:
        raise TamperedEnvelopeError("catalog record failed authentication") from None
