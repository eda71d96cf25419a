"""fileId: SHA-256 over a bit string naming one version of one file.

The bit string (``docs/formats.md``) is::

    b"lanvault-fileid-v1\\x00" | owner(u32) | len(path)(u32) | path (UTF-8)
    | size(u64) | mtime_ns(i64) | content_digest(32)

``content_digest`` is SHA-256 over the ordered chunk addresses, so a version whose chunks are
mostly unchanged needs only its dirty chunks re-read, and any change of content, size, time or
name gives a new id.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

_DOMAIN = b"lanvault-fileid-v1\x00"
_TAIL = struct.Struct(">Qq")


def content_digest(addresses: Iterable[bytes]) -> bytes:
    digest = hashlib.sha256()
    for address in addresses:
        if len(address) != 32:
            raise ValueError("chunk addresses are 32 bytes")
        digest.update(address)
    return digest.digest()


def file_id(owner: int, path: str, size: int, mtime_ns: int, digest: bytes) -> bytes:
    """The 32-byte fileId of one version of a file."""
    if not 0 <= owner < 2**32:
        raise ValueError("owner id must fit in 32 bits")
    if len(digest) != 32:
        raise ValueError("content digest must be 32 bytes")
    encoded = path.encode("utf-8", "surrogateescape")
    return hashlib.sha256(
        _DOMAIN
        + owner.to_bytes(4, "big")
        + len(encoded).to_bytes(4, "big")
        + encoded
        + _TAIL.pack(size, mtime_ns)
        + digest
    ).digest()
