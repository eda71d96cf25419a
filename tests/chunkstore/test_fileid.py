from __future__ import annotations

import hashlib

import pytest

from chunkstore.fileid import content_digest, file_id

A = bytes(32)
B = b"\x01" * 32


def test_file_id_changes_with_every_field() -> None:
    base = dict(owner=1, path="docs/report.odt", size=10, mtime_ns=5, digest=content_digest([A]))
    ref = file_id(**base)  # type: ignore[arg-type]
    variants = [
        dict(base, owner=2),
        dict(base, path="docs/report2.odt"),
        dict(base, size=11),
        dict(base, mtime_ns=6),
        dict(base, digest=content_digest([B])),
    ]
    ids = {file_id(**v) for v in variants}  # type: ignore[arg-type]
    assert ref not in ids and len(ids) == len(variants)
    assert len(ref) == 32


def test_documented_bit_string() -> None:
    digest = content_digest([A, B])
    assert digest == hashlib.sha256(A + B).digest()
    expected = hashlib.sha256(
        b"lanvault-fileid-v1\x00"
        + (7).to_bytes(4, "big")
        + (3).to_bytes(4, "big")
        + b"a/b"
        + (42).to_bytes(8, "big")
        + (123).to_bytes(8, "big", signed=True)
        + digest
    ).digest()
    assert file_id(7, "a/b", 42, 123, digest) == expected


def test_path_boundaries_are_unambiguous() -> None:
    # Length-prefixing keeps ("ab", size) and ("a", ...) from colliding.
    d = content_digest([A])
    assert file_id(1, "ab", 1, 0, d) != file_id(1, "a", 1, 0, d)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        content_digest([b"short"])
    with pytest.raises(ValueError):
        file_id(-1, "x", 0, 0, A)
    with pytest.raises(ValueError):
        file_id(1, "x", 0, 0, b"x")
