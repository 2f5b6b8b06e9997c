"""Points in time as people write them (``krepis._time``), checked exactly: the bounds of
milliseconds and of numbers that look like seconds, zones and local time (under a zone east of
UTC, so that UTC and local readings differ), relative and ISO forms at their edges, and the texts
of refusals, which name the value as given."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from krepis import ValidationError
from krepis._model import MAX_TIMESTAMP
from krepis._time import parse_time

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is UTC+9 (no daylight saving) for the test."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def refused(value: object) -> str:
    with pytest.raises(ValidationError) as info:
        parse_time(value, param="since", now_ms=NOW)
    assert type(info.value) is ValidationError
    return str(info.value)


# --- numbers -------------------------------------------------------------------------------------

def test_the_largest_timestamp_is_allowed() -> None:
    assert parse_time(MAX_TIMESTAMP, param="since") == MAX_TIMESTAMP
    assert refused(MAX_TIMESTAMP + 1) == (f"since {MAX_TIMESTAMP + 1} is outside 0 … 2**63-1 (Unix "
                                          "milliseconds: 1970 and later)")


def test_a_float_is_named_as_given_when_refused() -> None:
    assert refused(-1.5) == "since -1.5 is outside 0 … 2**63-1 (Unix milliseconds: 1970 and later)"
    assert parse_time(1234.9, param="since") == 1234


@pytest.mark.usefixtures("tokyo")
@pytest.mark.parametrize("value", [1e9, "1000000000"])
def test_a_number_that_looks_like_seconds_shows_both_readings_in_utc(value: object) -> None:
    assert refused(value) == (
        f"since {value!r} looks like Unix seconds (2001-09-09 01:46:40 UTC); as milliseconds it "
        "would be in 1970. Give milliseconds (1000000000000) or @1000000000 for seconds")


@pytest.mark.parametrize("value", [999_999_999, 100_000_000_000, 999_999_999.0, 100_000_000_000.0,
                                   "999999999", "100000000000"])
def test_numbers_just_outside_the_seconds_range_are_milliseconds(value: object) -> None:
    assert parse_time(value, param="since") == int(float(value))  # type: ignore[arg-type]


def test_at_seconds() -> None:
    assert parse_time("@1767225600", param="since") == NOW


@pytest.mark.parametrize("text", ["x123", "@x5", "@\u06615", "-", "@", "@-5"])
def test_text_that_only_resembles_a_number_is_not_a_time(text: str) -> None:
    assert refused(text).startswith(f"since {text!r} is not a time; use ISO-8601")


# --- datetimes -----------------------------------------------------------------------------------

class _NoOffset(dt.tzinfo):
    """A zone that knows no offset: such a datetime is read as local time."""

    def utcoffset(self, moment: dt.datetime | None) -> None:
        return None

    def dst(self, moment: dt.datetime | None) -> None:
        return None

    def tzname(self, moment: dt.datetime | None) -> None:
        return None


@pytest.mark.usefixtures("tokyo")
def test_naive_and_offsetless_datetimes_are_local_time() -> None:
    local = dt.datetime(2026, 1, 1, 9, 0)
    assert parse_time(local, param="since") == NOW
    assert parse_time(local.replace(tzinfo=_NoOffset()), param="since") == NOW
    assert parse_time(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), param="since") == NOW


@pytest.mark.usefixtures("tokyo")
def test_the_last_utc_datetime_is_read_without_going_through_local_time() -> None:
    last = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    assert parse_time(last, param="since") == 253_402_300_799_999


def test_datetimes_out_of_range_are_refused_naming_them() -> None:
    before = dt.datetime(1969, 12, 31, 23, 59, tzinfo=dt.timezone.utc)
    assert refused(before) == (f"since {before!r} is outside 0 … 2**63-1 (Unix milliseconds: 1970 "
                               "and later)")
    assert refused(dt.datetime.min) == ("since '0001-01-01T00:00:00' cannot be converted to Unix "
                                        "time (year 0 is out of range)")


# --- text ------------------------------------------------------------------------------------------

def test_a_long_text_is_shown_cut_at_80_characters() -> None:
    assert refused("x" * 80).startswith(f"since {'x' * 80!r} is not a time; ")
    assert refused("x" * 81).startswith(f"since {'x' * 80!r}… is not a time; ")


def test_now_without_a_fixed_now_is_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    got = parse_time("now", param="since")
    assert before <= got <= time.time_ns() // 1_000_000


@pytest.mark.usefixtures("tokyo")
@pytest.mark.parametrize(("word", "days"), [("today", 0), ("yesterday", -1), ("tomorrow", 1),
                                            ("Tomorrow", 1)])
def test_days_are_local_midnights(word: str, days: int) -> None:
    now = NOW + 20 * HOUR  # 2026-01-01T20:00Z is 2026-01-02T05:00 in Tokyo
    midnight = NOW + 15 * HOUR  # 2026-01-02T00:00 in Tokyo
    assert parse_time(word, param="since", now_ms=now) == midnight + days * DAY


@pytest.mark.parametrize(("text", "back"), [("2h ago", 2 * HOUR), ("2 hours ago", 2 * HOUR),
                                            ("-15min", 15 * 60_000), ("1h30m", 90 * 60_000),
                                            ("1.5h", 90 * 60_000)])
def test_relative_times_are_in_the_past(text: str, back: int) -> None:
    assert parse_time(text, param="since", now_ms=NOW) == NOW - back


@pytest.mark.parametrize(("text", "ms"), [
    ("2026-01-01T00:00:00.1234567Z", NOW + 123),  # digits past the microsecond are dropped
    ("2026-01-01T05:30+05:30", NOW), ("2026-01-01T05:30+0530", NOW),
    ("2025-12-31T19:00-05", NOW), ("2026-01-01T23:00+23:00", NOW), ("2026-01-01T00:59+00:59", NOW),
    ("2026-01-01T00:00z", NOW),
])
def test_iso_times_with_their_zones(text: str, ms: int) -> None:
    assert parse_time(text, param="since") == ms


@pytest.mark.parametrize(("zone"), ["+24:00", "+00:60", "-99"])
def test_an_offset_that_is_not_one_is_refused_naming_it(zone: str) -> None:
    text = f"2026-01-01T00:00{zone}"
    assert refused(text) == f"since {text!r}: the offset {zone} is not a valid UTC offset"


def test_an_impossible_date_is_refused_naming_it() -> None:
    assert refused("2026-02-30") == ("since '2026-02-30' is not a valid date/time (day is out of range "
                                     "for month)")

