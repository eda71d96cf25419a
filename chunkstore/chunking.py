"""Fixed-size chunking exactly as the original service defines it.

A file of ``size`` bytes has ``size // CHUNK_SIZE + 1`` chunks numbered from 0. Every chunk but the
last holds exactly ``CHUNK_SIZE`` bytes; the last holds the remainder, which is 0 bytes when the
size is a multiple of ``CHUNK_SIZE`` (the empty file included). The zero-length last chunk is what
tells a reader that the file ends there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

CHUNK_SIZE = 64_000


class Readable(Protocol):
    """Anything with ``readinto`` (files opened in binary mode, ``io.BytesIO``)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


def chunk_count(size: int) -> int:
    """Number of chunks of a file of ``size`` bytes (always at least 1)."""
    if size < 0:
        raise ValueError(f"negative file size: {size}")
    return size // CHUNK_SIZE + 1


def chunk_length(size: int, chunk_no: int) -> int:
    """Length in bytes of chunk ``chunk_no`` of a file of ``size`` bytes."""
    count = chunk_count(size)
    if not 0 <= chunk_no < count:
        raise ValueError(f"chunk {chunk_no} out of range for a {size}-byte file ({count} chunks)")
    if chunk_no < count - 1:
        return CHUNK_SIZE
    return size - chunk_no * CHUNK_SIZE


def chunks_touching(offset: int, length: int) -> range:
    """Chunk numbers that a write of ``length`` bytes at ``offset`` modifies."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
    if length == 0:
        return range(offset // CHUNK_SIZE, offset // CHUNK_SIZE)
    return range(offset // CHUNK_SIZE, (offset + length - 1) // CHUNK_SIZE + 1)


def _read_full(stream: Readable, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream`` unless it ends first; return the bytes read."""
    filled = 0
    while filled < len(buffer):
        got = stream.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


def iter_chunks(stream: Readable) -> Iterator[tuple[int, bytes]]:
    """Yield ``(chunk_no, data)`` for a binary stream, in order, in constant memory.

    The final, possibly empty, chunk is always yielded.
    """
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    chunk_no = 0
    while True:
        filled = _read_full(stream, view)
        yield chunk_no, bytes(view[:filled])
        if filled < CHUNK_SIZE:
            return
        chunk_no += 1


def split_bytes(data: bytes) -> list[bytes]:
    """Split an in-memory buffer into its chunks (convenience for small data and tests)."""
    count = chunk_count(len(data))
    return [data[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE] for i in range(count)]


def join_chunks(chunks: Iterable[bytes]) -> bytes:
    """Reassemble chunks, checking that only the last one is short."""
    parts = list(chunks)
    if not parts:
        raise ValueError("a file has at least one chunk")
    for no, part in enumerate(parts[:-1]):
        if len(part) != CHUNK_SIZE:
            raise ValueError(f"chunk {no} has {len(part)} bytes; only the last may be short")
    if len(parts[-1]) >= CHUNK_SIZE:
        raise ValueError("the last chunk must be shorter than CHUNK_SIZE")
    return b"".join(parts)
