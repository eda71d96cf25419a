"""Human-written sizes (``0``, ``500MB``, ``10GiB``) and their display, and durations (``30s``,
``10m``, ``7d``)."""

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


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``10m``, ``2h``, ``7d``, ``1w``, ``1y`` or a plain number of seconds
    (never negative, never NaN)."""
    cleaned = text.strip().lower()
    unit = DURATION_UNITS.get(cleaned[-1:]) if cleaned else None
    number = cleaned[:-1] if unit else cleaned
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        raise SizeFormatError(
            f"invalid duration {text.strip()!r} (e.g. 30s, 10m, 2h, 7d)"
        ) from None
    if not value >= 0 or value == float("inf"):  # NaN and infinity are not durations
        raise SizeFormatError(f"invalid duration {text.strip()!r} (e.g. 30s, 10m, 2h, 7d)")
    return value
