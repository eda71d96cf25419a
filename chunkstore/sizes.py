"""Human-written sizes (``0``, ``500MB``, ``10GiB``) and their display."""

from __future__ import annotations

import re

from .errors import SizeFormatError

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse ``10GB`` (decimal) or ``10GiB`` (binary) into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise SizeFormatError(
            f"invalid size {text!r}: use a number with B, KB, MB, GB, TB or KiB..TiB"
        )
    number, unit = match.groups()
    factor = _UNITS.get(unit.upper())
    if factor is None:
        raise SizeFormatError(f"unknown size unit {unit!r} in {text!r}")
    return int(float(number) * factor) if "." in number else int(number) * factor


def format_size(count: int) -> str:
    """Decimal units, as the original service printed KB of 1000 bytes."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
