"""The retention policy: which snapshots are kept, by age and bucket."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkstore.retention import DEFAULT_POLICY, RetentionFormatError, RetentionPolicy, Tier

HOUR = 3600 * 10**9
DAY = 24 * HOUR
NOW = 1_800_000_000 * 10**9 + 17 * HOUR  # some afternoon


def test_parse_default_and_custom() -> None:
    policy = RetentionPolicy.parse(DEFAULT_POLICY)
    assert policy.tiers == (
        Tier(0, 86400),
        Tier(3600, 7 * 86400),
        Tier(86400, 30 * 86400),
        Tier(7 * 86400, 365 * 86400),
    )
    assert RetentionPolicy.parse("15m:6h, monthly:forever").tiers == (
        Tier(900, 6 * 3600),
        Tier(30 * 86400, math.inf),
    )
    assert RetentionPolicy.parse(policy.describe()) == policy


@pytest.mark.parametrize("text", ["", "hourly", "hourly:", "often:7d", "hourly:-1d", "x:y", ","])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(RetentionFormatError):
        RetentionPolicy.parse(text)


def test_default_policy_thins_out_with_age() -> None:
    policy = RetentionPolicy.parse(DEFAULT_POLICY)
    # One snapshot every 10 minutes for 400 days.
    times = [NOW - i * 10 * 60 * 10**9 for i in range(400 * 24 * 6)]
    kept = {times[i] for i in policy.keep(times, NOW)}
    ages = sorted((NOW - t) / DAY for t in kept)
    recent = [t for t in times if NOW - t <= DAY]
    assert set(recent) <= kept  # everything of the last 24 hours
    hourly = [a for a in ages if 1 < a <= 7]
    assert 6 * 24 - 2 <= len(hourly) <= 6 * 24 + 1  # one per hour
    daily = [a for a in ages if 7 < a <= 30]
    assert 22 <= len(daily) <= 24  # one per day
    weekly = [a for a in ages if 30 < a <= 365]
    assert 47 <= len(weekly) <= 53  # one per week
    assert not [a for a in ages if a > 365]  # nothing older than a year


def test_newest_is_always_kept_and_all_forever_keeps_everything() -> None:
    policy = RetentionPolicy.parse("all:1h")
    old = [NOW - 10 * DAY, NOW - 5 * DAY]
    assert policy.keep(old, NOW) == {1}
    assert RetentionPolicy.parse("all:forever").keep(old, NOW) == {0, 1}
    assert policy.keep([], NOW) == set()


@given(
    st.lists(st.integers(min_value=0, max_value=400 * DAY), min_size=1, max_size=60),
    st.integers(min_value=0, max_value=30 * DAY),
)
def test_kept_stays_kept_until_it_ages_out(ages: list[int], later: int) -> None:
    """Buckets are fixed: what is kept now is kept later unless its tier's span has passed."""
    policy = RetentionPolicy.parse("all:1d,hourly:7d,daily:30d,weekly:1y")
    times = [NOW - a for a in ages]
    kept_now = {times[i] for i in policy.keep(times, NOW)}
    kept_later = {times[i] for i in policy.keep(times, NOW + later)}
    newest = max(times)
    for t in kept_now - kept_later:
        age_later = (NOW + later - t) / 1e9
        # It may only disappear by leaving its tier, never because a bucket moved.
        assert t != newest
        assert age_later > 86400
