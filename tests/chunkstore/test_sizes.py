from __future__ import annotations

import pytest

from chunkstore.errors import SizeFormatError
from chunkstore.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("500MB", 500_000_000),
        ("10GiB", 10 * 2**30),
        ("1.5 GB", 1_500_000_000),
        ("7", 7),
        ("64kb", 64_000),
    ],
)
def test_parse(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "-5", "5XB", "5 G B"])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(SizeFormatError):
        parse_size(text)


def test_format() -> None:
    assert format_size(0) == "0 B"
    assert format_size(64_000) == "64.0 KB"
    assert format_size(2_500_000_000) == "2.5 GB"


def test_durations_in_every_unit_and_bad_ones_refused() -> None:
    from chunkstore.sizes import parse_duration

    assert parse_duration("30s") == 30 and parse_duration(" 10M ") == 600
    assert parse_duration("2h") == 7200 and parse_duration("7d") == 7 * 86400
    assert parse_duration("1w") == 7 * 86400 and parse_duration("1y") == 365 * 86400
    assert parse_duration("0.5") == 0.5 and parse_duration("0") == 0
    for bad in ("", "x", "10x", "-5s", "nan", "inf", "1e999s"):
        with pytest.raises(SizeFormatError, match="invalid duration"):
            parse_duration(bad)
