"""Time input: one parser for ``--since/--until`` and ``SovereignJournal.query(since=…, until=…)``."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import InvalidTypeError, LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis._time import parse_time
from test_cli import krepis

NOW = 1_769_860_800_000  # 2026-01-31T12:00:00Z
UTC = dt.timezone.utc
# A POSIX TZ string (no tz database needed): local time is UTC+05:30, no daylight saving.
PLUS_0530 = "XYZ-5:30"


@pytest.fixture
def local_plus_0530() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = PLUS_0530
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def ms(*args: int, tz: dt.tzinfo = UTC) -> int:
    return int(dt.datetime(*args, tzinfo=tz).timestamp() * 1000)  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-31T12:00:00Z", NOW),
    ("2026-01-31T12:00:00.250Z", NOW + 250),
    ("2026-01-31 12:00:00,001z", NOW + 1),
    ("2026-01-31T14:00+02:00", NOW),
    ("2026-01-31T14:00:00+0200", NOW),
    ("2026-01-31T07:00-05", NOW),
    ("now", NOW),
    ("NOW", NOW),
    ("1h", NOW - 3_600_000),
    ("30m", NOW - 1_800_000),
    ("2d", NOW - 2 * 86_400_000),
    ("90s", NOW - 90_000),
    ("1w", NOW - 7 * 86_400_000),
    ("1h30m", NOW - 5_400_000),
    ("2 hours ago", NOW - 7_200_000),
    ("1 day 2 hours ago", NOW - 93_600_000),
    ("-15min", NOW - 900_000),
    ("1769860800000", NOW),
    ("0", 0),
    ("@1769860800", NOW),
])
def test_text_forms(text: str, expected: int) -> None:
    assert parse_time(text, param="since", now_ms=NOW) == expected


def test_a_time_without_a_zone_is_local_time(local_plus_0530: None) -> None:
    plus_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert parse_time("2026-01-31T12:00", param="since") == ms(2026, 1, 31, 12, tz=plus_0530)
    assert parse_time("2026-01-31T12:00", param="since") == NOW - 5 * 3_600_000 - 1_800_000
    assert parse_time("2026-01-31", param="since") == ms(2026, 1, 31, tz=plus_0530)
    # today / yesterday are local midnights: 2026-01-31T12:00Z is 17:30 in UTC+05:30
    assert parse_time("today", param="since", now_ms=NOW) == ms(2026, 1, 31, tz=plus_0530)
    assert parse_time("yesterday", param="since", now_ms=NOW) == ms(2026, 1, 30, tz=plus_0530)
    assert parse_time(dt.datetime(2026, 1, 31, 12), param="since") == ms(2026, 1, 31, 12, tz=plus_0530)
    assert parse_time("2026-01-31T12:00Z", param="since") == NOW  # an explicit zone wins


def test_python_values() -> None:
    assert parse_time(5, param="since") == 5  # an int is Unix ms, exactly, never reinterpreted
    assert parse_time(1_700_000_000, param="since") == 1_700_000_000
    assert parse_time(1.9, param="since") == 1
    assert parse_time(dt.datetime(2026, 1, 31, 12, tzinfo=UTC), param="since") == NOW
    aware = dt.datetime(2026, 1, 31, 12, 0, 0, 1500, tzinfo=UTC)  # sub-millisecond: rounded down
    assert parse_time(aware, param="since") == NOW + 1


@pytest.mark.parametrize(("value", "error", "words"), [
    ("1700000000", ValidationError, "'1700000000' looks like Unix seconds (2023-11-14 22:13:20 UTC)"),
    ("1700000000", ValidationError, "or @1700000000 for seconds"),
    (1.7e9, ValidationError, "looks like Unix seconds"),
    ("²", ValidationError, "'²' is not a time; use ISO-8601"),
    ("١٢٣", ValidationError, "is not a time"),
    ("soon", ValidationError, "'soon' is not a time"),
    ("", ValidationError, "'' is empty"),
    ("5 parsecs", ValidationError, "is not a time"),
    ("2026-02-30", ValidationError, "'2026-02-30' is not a valid date/time"),
    ("2026-01-31T12:00+24:00", ValidationError, "offset +24:00 is not a valid UTC offset"),
    (float("nan"), ValidationError, "nan is not a finite number"),
    (float("inf"), ValidationError, "inf is not a finite number"),
    (-5, ValidationError, "-5 is outside 0 … 2**63-1"),
    (2**63, ValidationError, "is outside 0 … 2**63-1"),
    ("1969-12-31T23:59:59Z", ValidationError, "is outside"),
    (True, InvalidTypeError, "got bool True"),
    (None, InvalidTypeError, "got NoneType"),
    (b"1h", InvalidTypeError, "got bytes"),
])
@pytest.mark.parametrize("param", ["since", "--until"])
def test_errors_name_the_parameter_and_the_value(value: object, error: type[Exception], words: str,
                                                 param: str) -> None:
    with pytest.raises(error) as info:
        parse_time(value, param=param, now_ms=NOW)
    assert str(info.value).startswith(f"{param} ")
    assert words in str(info.value)
    assert isinstance(info.value, ValueError if error is ValidationError else TypeError)


def test_query_takes_datetimes_and_iso_text(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        for i in range(5):
            journal.log_transaction(TransactionLog(NOW + i * 60_000, "op", f"r{i}", LogStatus.Completed))
        got = journal.query(since=dt.datetime(2026, 1, 31, 12, 1, tzinfo=UTC), until="2026-01-31T12:04:00Z")
        assert [e.request_id for e in got] == ["r3", "r2", "r1"]
        assert [e.request_id for e in journal.iter_logs(since="2026-01-31T13:03+01:00")] == ["r4", "r3"]
        assert len(journal.query(since=NOW + 60_000)) == 4  # ints stay Unix ms
        with pytest.raises(ValidationError, match=r"^since 'soon' is not a time"):
            journal.query(since="soon")
        with pytest.raises(ValidationError, match=r"^until '1769860800' looks like Unix seconds"):
            journal.iter_logs(until="1769860800")


def test_cli_reads_relative_local_and_seconds_forms(tmp_path: Path) -> None:
    now = time.time_ns() // 1_000_000
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        for name, age_ms in (("three_days", 3 * 86_400_000), ("two_hours", 7_200_000),
                             ("ten_minutes", 600_000)):
            journal.log_transaction(TransactionLog(now - age_ms, name, "r", LogStatus.Completed))
        journal.log_transaction(TransactionLog(NOW, "fixed", "r", LogStatus.Completed))

    def ops(*args: str, tz: str = "UTC") -> list[str]:
        out = krepis("logs", "--storage", str(store), "--json", "--all", *args, cwd=tmp_path,
                     env={"TZ": tz}).stdout
        return [json.loads(line)["op_name"] for line in out.splitlines()]

    assert ops("--since", "1h") == ["ten_minutes"]
    assert ops("--since", "3 hours ago", "--until", "30m") == ["two_hours"]
    assert ops("--since", "2d", "--until", "now") == ["ten_minutes", "two_hours"]
    assert ops("--until", "1d") == ["three_days", "fixed"]
    # no zone = local time: 17:30 in UTC+05:30 is 12:00 UTC, the "fixed" entry
    assert ops("--since", "2026-01-31T17:30", "--until", "2026-01-31T17:30:00.001", tz=PLUS_0530) == ["fixed"]
    assert ops("--since", "2026-01-31T17:30", "--until", "2026-01-31T17:30:00.001", tz="UTC") == []
    assert ops("--since", "@1769860800", "--until", "1769860800001") == ["fixed"]
