"""The per-chunk CPU work, as pure functions that callers run on worker threads.

Every primitive here releases the GIL (OpenSSL HMAC, libsodium through cffi, zstd), so two
threads run at about twice the speed of one. Callers should hand over several chunks per thread
call: a thread hop costs this VM 100-190 us of the event loop's CPU, about two chunks' hashing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .envelope import chunk_address, open_chunk, seal_chunk
from .keys import KeyRing


@dataclass(frozen=True, slots=True)
class PreparedChunk:
    """A chunk ready to send: its address, its envelope and its plaintext length."""

    address: bytes
    envelope: bytes
    size: int


def prepare_chunk(keys: KeyRing, plaintext: bytes) -> PreparedChunk:
    address = chunk_address(keys, plaintext)
    return PreparedChunk(address, seal_chunk(keys, address, plaintext), len(plaintext))


def prepare_chunks(keys: KeyRing, plaintexts: Sequence[bytes]) -> list[PreparedChunk]:
    return [prepare_chunk(keys, p) for p in plaintexts]


def chunk_addresses(keys: KeyRing, plaintexts: Sequence[bytes]) -> list[bytes]:
    """Each plaintext's address (a backup skips those already held before sealing)."""
    return [chunk_address(keys, p) for p in plaintexts]


def seal_chunks(
    keys: KeyRing, items: Sequence[tuple[bytes, bytes]], *, deterministic: bool = False
) -> list[bytes]:
    """Seal ``(address, plaintext)`` pairs whose addresses are known (``deterministic``: see
    ``seal_chunk``; a coded chunk's envelope is sealed so)."""
    return [seal_chunk(keys, a, plain, deterministic=deterministic) for a, plain in items]


def open_chunks(keys: KeyRing, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Open ``(address, envelope)`` pairs; raises on the first bad one."""
    return [open_chunk(keys, address, envelope) for address, envelope in items]
