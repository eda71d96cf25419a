"""Which snapshots a retention policy keeps.

A policy is a list of tiers, youngest first, written like ``all:24h,hourly:7d,daily:30d,
weekly:1y`` (the default): keep everything younger than 24 hours; of what is younger than 7
days, the newest snapshot of every hour; younger than 30 days, the newest of every day; younger
than a year, the newest of every week. A tier's interval is ``all``, ``hourly``, ``daily``,
``weekly``, ``monthly`` (30 days) or a duration (``15m``, ``6h``); its span is a duration or
``forever``. The newest snapshot is always kept, whatever its age. ``all:forever`` keeps
everything.

Buckets are aligned to the Unix epoch in UTC (weeks start on Monday), so a snapshot's bucket
never changes as time passes: what a tier keeps today it keeps tomorrow, until it ages out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ChunkstoreError, SizeFormatError
from .sizes import DURATION_UNITS, parse_duration

DEFAULT_POLICY = "all:24h,hourly:7d,daily:30d,weekly:1y"
_NAMED = {"all": 0.0, "hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0}
_NAMED["monthly"] = 30 * 86400.0
_MONDAY_OFFSET = 3 * 86400  # 1970-01-01 was a Thursday


class RetentionFormatError(ChunkstoreError, ValueError):
    """A retention policy that cannot be read."""


def _duration(text: str) -> float:
    text = text.strip().lower()
    if text == "forever":
        return math.inf
    try:
        value = parse_duration(text)
    except SizeFormatError:
        raise RetentionFormatError(f"invalid duration {text!r} (e.g. 24h, 7d, 1y)") from None
    if not value > 0:
        raise RetentionFormatError(f"duration {text!r} must be positive")
    return value


@dataclass(frozen=True, slots=True)
class Tier:
    every: float  # seconds between kept snapshots; 0 keeps all
    within: float  # age in seconds up to which the tier applies (math.inf: forever)


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    tiers: tuple[Tier, ...]

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        tiers = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            every_text, sep, within_text = part.partition(":")
            if not sep:
                raise RetentionFormatError(
                    f"retention tier {part!r} is not INTERVAL:SPAN (e.g. hourly:7d)"
                )
            every_key = every_text.strip().lower()
            every = _NAMED[every_key] if every_key in _NAMED else _duration(every_key)
            tiers.append(Tier(every, _duration(within_text)))
        if not tiers:
            raise RetentionFormatError("a retention policy needs at least one tier")
        return cls(tuple(tiers))

    def describe(self) -> str:
        def span(seconds: float) -> str:
            if math.isinf(seconds):
                return "forever"
            for unit in "ywdhm":
                if seconds % DURATION_UNITS[unit] == 0:
                    return f"{seconds / DURATION_UNITS[unit]:g}{unit}"
            return f"{seconds:g}s"

        def name(every: float) -> str:
            for key, value in _NAMED.items():
                if value == every:
                    return key
            return span(every)

        return ",".join(f"{name(t.every)}:{span(t.within)}" for t in self.tiers)

    def keep(self, times_ns: Sequence[int], now_ns: int) -> set[int]:
        """Indexes into ``times_ns`` of the snapshots to keep at ``now_ns``."""
        if not times_ns:
            return set()
        kept = {max(range(len(times_ns)), key=lambda i: (times_ns[i], i))}
        for tier in self.tiers:
            newest_in_bucket: dict[int, int] = {}
            for index, t in enumerate(times_ns):
                age = (now_ns - t) / 1e9
                if age > tier.within:
                    continue
                if tier.every == 0:
                    kept.add(index)
                    continue
                bucket = math.floor((t / 1e9 + _MONDAY_OFFSET) / tier.every)
                best = newest_in_bucket.get(bucket)
                if best is None or (t, index) > (times_ns[best], best):
                    newest_in_bucket[bucket] = index
            kept.update(newest_in_bucket.values())
        return kept
