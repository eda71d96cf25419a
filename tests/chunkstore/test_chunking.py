from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore.chunking import (
    CHUNK_SIZE,
    chunk_count,
    chunk_length,
    chunks_touching,
    iter_chunks,
    join_chunks,
    split_bytes,
)

BOUNDARIES = [0, 1, 63_999, 64_000, 64_001, 127_999, 128_000, 128_001, 192_000]


@pytest.mark.parametrize("size", BOUNDARIES)
def test_chunk_shapes_at_boundaries(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    chunks = list(iter_chunks(io.BytesIO(data)))
    assert [no for no, _ in chunks] == list(range(chunk_count(size)))
    assert all(len(c) == CHUNK_SIZE for _, c in chunks[:-1])
    assert len(chunks[-1][1]) == size % CHUNK_SIZE
    assert [len(c) for _, c in chunks] == [chunk_length(size, n) for n in range(chunk_count(size))]
    assert join_chunks(c for _, c in chunks) == data
    assert split_bytes(data) == [c for _, c in chunks]


def test_empty_file_has_one_empty_chunk() -> None:
    assert list(iter_chunks(io.BytesIO(b""))) == [(0, b"")]
    assert chunk_count(0) == 1


def test_multiple_of_chunk_size_ends_with_empty_chunk() -> None:
    chunks = list(iter_chunks(io.BytesIO(b"x" * 128_000)))
    assert [len(c) for _, c in chunks] == [64_000, 64_000, 0]


class TrickleReader(io.RawIOBase):
    """Returns at most ``step`` bytes per read, as pipes and sockets do."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@given(
    size=st.one_of(
        st.sampled_from(BOUNDARIES),
        st.integers(min_value=0, max_value=4 * CHUNK_SIZE + 10),
    ),
    step=st.integers(min_value=1, max_value=100_000),
)
def test_reassembly_is_identity_for_any_read_pattern(size: int, step: int) -> None:
    data = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    chunks = list(iter_chunks(TrickleReader(data, step)))
    assert len(chunks) == chunk_count(size)
    assert join_chunks(c for _, c in chunks) == data


@given(offset=st.integers(0, 10**7), length=st.integers(0, 10**6))
def test_chunks_touching_covers_exactly_the_written_bytes(offset: int, length: int) -> None:
    touched = chunks_touching(offset, length)
    if length == 0:
        assert len(touched) == 0
        return
    assert touched.start * CHUNK_SIZE <= offset < (touched.start + 1) * CHUNK_SIZE
    end = offset + length - 1
    assert (touched.stop - 1) * CHUNK_SIZE <= end < touched.stop * CHUNK_SIZE


def test_join_refuses_a_short_middle_chunk() -> None:
    with pytest.raises(ValueError, match="only the last"):
        join_chunks([b"x" * 10, b""])
    with pytest.raises(ValueError):
        join_chunks([b"x" * CHUNK_SIZE])


def test_chunk_length_out_of_range() -> None:
    with pytest.raises(ValueError):
        chunk_length(10, 1)
    with pytest.raises(ValueError):
        chunk_count(-1)


def test_streaming_memory_does_not_grow(tmp_path: object) -> None:
    import tracemalloc

    class Zeroes(io.RawIOBase):
        def __init__(self, total: int) -> None:
            self.left = total

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            n = min(len(buffer), self.left)
            buffer[:n] = bytes(n)
            self.left -= n
            return n

    tracemalloc.start()
    count = 0
    for _no, chunk in iter_chunks(Zeroes(200 * CHUNK_SIZE + 5)):
        count += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 200 * CHUNK_SIZE + 5
    assert peak < 8 * CHUNK_SIZE
