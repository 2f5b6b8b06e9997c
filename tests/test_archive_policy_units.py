"""Retention policies and the archive selectors (``krepis.archive._policy``), rule by rule: what
each accepts at its limits, what it refuses (the error's type and exact text), the text form both
ways, and the time ``keep_days`` selects. Pure functions: no store."""

from __future__ import annotations

import pytest

import krepis._model
from krepis import InvalidTypeError, ValidationError
from krepis.archive import ArchiveReport, RetentionPolicy
from krepis.archive._policy import parse_before

DAY = 86_400_000


def _refused(error: type[Exception], call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    assert type(info.value) is error
    return str(info.value)


# -- RetentionPolicy ------------------------------------------------------------------------------
def test_a_policy_holds_exactly_one_selector_and_runs_every_minute_by_default() -> None:
    assert RetentionPolicy(keep_last=5) == RetentionPolicy(keep_last=5, keep_days=None, every=60.0)
    assert RetentionPolicy(keep_days=1.5).every == 60.0
    for kwargs in ({}, {"keep_last": 1, "keep_days": 1}, {"keep_last": 0, "keep_days": 0}, {"every": 5}):
        assert _refused(ValidationError, RetentionPolicy, **kwargs) == (
            "a retention policy needs exactly one of keep_last and keep_days")


@pytest.mark.parametrize("value", [0, 1, 10**12])
def test_keep_last_is_any_whole_number_from_zero(value: int) -> None:
    assert RetentionPolicy(keep_last=value).keep_last == value


@pytest.mark.parametrize("value,shown", [(-1, "-1"), (True, "True"), (1.0, "1.0"), ("5", "'5'"),
                                         ("x" * 50, "'" + "x" * 39)])
def test_keep_last_that_is_not_a_whole_number_from_zero_is_refused(value: object, shown: str) -> None:
    assert _refused(ValidationError, RetentionPolicy, keep_last=value) == (
        f"keep_last must be an int >= 0, got {shown}")


@pytest.mark.parametrize("value", [0, 0.0, 0.5, 30, 1_000_000, 1_000_000.0])
def test_keep_days_is_a_number_in_0_to_a_million(value: float) -> None:
    assert RetentionPolicy(keep_days=value).keep_days == value


@pytest.mark.parametrize("value,shown", [(-0.001, "-0.001"), (1_000_000.5, "1000000.5"), (True, "True"),
                                         (False, "False"), ("3", "'3'")])
def test_keep_days_out_of_range_or_not_a_number_is_refused(value: object, shown: str) -> None:
    assert _refused(ValidationError, RetentionPolicy, keep_days=value) == (
        f"keep_days must be a number of days in 0 … 1000000, got {shown}")


@pytest.mark.parametrize("every", [0.01, 1, 60.0, 86_400, 86_400.0])
def test_the_interval_is_0_01_to_86400_seconds(every: float) -> None:
    assert RetentionPolicy(keep_last=1, every=every).every == every


@pytest.mark.parametrize("every,shown", [(0.009, "0.009"), (0, "0"), (86_400.5, "86400.5"), (True, "True"),
                                         (False, "False"), ("60", "'60'")])
def test_an_interval_out_of_range_or_not_a_number_is_refused(every: object, shown: str) -> None:
    assert _refused(ValidationError, RetentionPolicy, keep_last=1, every=every) == (
        f"retention interval must be 0.01 … 86400 seconds, got {shown}")


@pytest.mark.parametrize("text,policy", [
    ("keep-last:1000000", RetentionPolicy(keep_last=1_000_000)),
    ("keep-last:0", RetentionPolicy(keep_last=0)),
    ("keep-days:30", RetentionPolicy(keep_days=30.0)),
    ("keep-days:1.5", RetentionPolicy(keep_days=1.5)),
    ("keep-last:5,every:300s", RetentionPolicy(keep_last=5, every=300.0)),
    ("keep-days:2,every:0.5s", RetentionPolicy(keep_days=2.0, every=0.5)),
    ("  keep-last:7 \n", RetentionPolicy(keep_last=7)),
])
def test_a_policy_is_parsed_from_its_text(text: str, policy: RetentionPolicy) -> None:
    parsed = RetentionPolicy.parse(text)
    assert parsed == policy
    assert type(parsed.keep_last) is type(policy.keep_last) and type(parsed.every) is float


def test_a_policy_given_is_taken_as_it_is() -> None:
    policy = RetentionPolicy(keep_last=3, every=2)
    assert RetentionPolicy.parse(policy) is policy
    assert RetentionPolicy.parse(policy, " (KREPIS_RETENTION)") is policy


@pytest.mark.parametrize("value,name", [(5, "int"), (None, "NoneType"), (b"keep-last:5", "bytes")])
def test_a_policy_that_is_neither_a_policy_nor_text_is_refused(value: object, name: str) -> None:
    assert _refused(InvalidTypeError, RetentionPolicy.parse, value) == (
        f"retention must be a RetentionPolicy or its text, got {name}")


@pytest.mark.parametrize("text", [
    "", "keep-weeks:3", "keep-last", "keep-last:", "keep-last:-1", "keep-last:5,", "keep-last:5,every:5",
    "keep-last:5,every:s", "keep-last:5,every:5sx", "keep-last:5 ,every:5s", "Keep-last:5", "keep-days:.5",
    "keep-days:5.", "keep-last:5,every:5s,every:6s", "xkeep-last:5", "keep-last:5x", "keep-last:\u0661",
])
def test_text_that_is_not_a_policy_is_refused(text: str) -> None:
    assert _refused(ValidationError, RetentionPolicy.parse, text) == (
        f"retention policy {text!r} is not valid; use 'keep-last:N' or 'keep-days:D', optionally followed "
        "by ',every:Ss'")


def test_a_refusal_names_where_the_text_came_from_and_cuts_a_long_text() -> None:
    assert _refused(ValidationError, RetentionPolicy.parse, "keep-weeks:3", " (KREPIS_RETENTION)") == (
        "retention policy 'keep-weeks:3' (KREPIS_RETENTION) is not valid; use 'keep-last:N' or "
        "'keep-days:D', optionally followed by ',every:Ss'")
    long = "k" * 100
    assert _refused(ValidationError, RetentionPolicy.parse, long).startswith(
        f"retention policy '{'k' * 79} is not valid")


@pytest.mark.parametrize("text,why", [
    ("keep-last:1.5", "keep-last takes a whole number of entries"),
    ("keep-last:2.0", "keep-last takes a whole number of entries"),
    ("keep-days:1000001", "keep_days must be a number of days in 0 … 1000000, got 1000001.0"),
    ("keep-last:5,every:0s", "retention interval must be 0.01 … 86400 seconds, got 0.0"),
    ("keep-days:1,every:86401s", "retention interval must be 0.01 … 86400 seconds, got 86401.0"),
])
def test_a_policy_text_breaking_a_rule_names_the_text_and_the_rule(text: str, why: str) -> None:
    for source in ("", " (KREPIS_RETENTION)"):
        assert _refused(ValidationError, RetentionPolicy.parse, text, source) == (
            f"retention policy {text!r}{source}: {why}")


@pytest.mark.parametrize("policy,text", [
    (RetentionPolicy(keep_last=5), "keep-last:5"),
    (RetentionPolicy(keep_last=0, every=60), "keep-last:0"),
    (RetentionPolicy(keep_days=30), "keep-days:30"),
    (RetentionPolicy(keep_days=1.5), "keep-days:1.5"),
    (RetentionPolicy(keep_days=0), "keep-days:0"),
    (RetentionPolicy(keep_last=5, every=5), "keep-last:5,every:5s"),
    (RetentionPolicy(keep_days=2, every=0.05), "keep-days:2,every:0.05s"),
    (RetentionPolicy(keep_last=1, every=60.5), "keep-last:1,every:60.5s"),
])
def test_a_policy_s_text_parses_back_to_it(policy: RetentionPolicy, text: str) -> None:
    assert str(policy) == text
    assert RetentionPolicy.parse(text) == policy


# -- parse_before ---------------------------------------------------------------------------------
def test_the_selector_needs_exactly_one_of_its_three() -> None:
    assert _refused(ValidationError, parse_before, None, None, None) == (
        "archive needs exactly one of before, keep_last and keep_days")
    assert _refused(ValidationError, parse_before, 5, 1, 2) == (
        "archive needs exactly one of before, keep_last and keep_days (got before, keep_last, keep_days)")
    assert _refused(ValidationError, parse_before, None, 0, 0) == (
        "archive needs exactly one of before, keep_last and keep_days (got keep_last, keep_days)")
    assert _refused(ValidationError, parse_before, 0, None, 0) == (
        "archive needs exactly one of before, keep_last and keep_days (got before, keep_last)")


def test_keep_last_selects_by_count() -> None:
    assert parse_before(None, None, 0) == (None, 0)
    assert parse_before(None, None, 7) == (None, 7)
    assert _refused(ValidationError, parse_before, None, None, -1) == "keep_last must be >= 0, got -1"
    for value, name in ((1.0, "float"), (True, "bool"), ("3", "str")):
        assert _refused(InvalidTypeError, parse_before, None, None, value) == (
            f"keep_last must be an int, got {name}")


def test_keep_days_selects_the_time_that_many_days_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(krepis._model, "now_ms", lambda: 10 * DAY + 123)
    assert parse_before(None, 1.5, None) == (10 * DAY + 123 - 3 * DAY // 2, None)
    assert parse_before(None, 0, None) == (10 * DAY + 123, None)
    assert parse_before(None, 10, None) == (123, None)
    assert parse_before(None, 1e-9, None) == (10 * DAY + 123, None)  # less than a millisecond
    assert parse_before(None, 20, None) == (0, None)  # before 1970: nothing is that old
    assert parse_before(None, 1_000_000, None) == (0, None)
    for value in (-0.5, 1_000_000.5):
        assert _refused(ValidationError, parse_before, None, value, None) == (
            f"keep_days must be in 0 … 1000000, got {value}")
    for value, name in ((True, "bool"), ("1", "str")):
        assert _refused(InvalidTypeError, parse_before, None, value, None) == (
            f"keep_days must be a number, got {name}")


def test_before_is_a_time() -> None:
    assert parse_before(1_700_000_000_000, None, None) == (1_700_000_000_000, None)
    assert parse_before("2026-01-01T00:00:00Z", None, None) == (1_767_225_600_000, None)
    assert _refused(ValidationError, parse_before, "nope", None, None).startswith(
        "before 'nope' is not a time")


def test_a_report_is_a_plain_dict() -> None:
    report = ArchiveReport("/a", 1, 256, 1, 1, 1000, 300, 256, False)
    assert report.to_dict() == {"directory": "/a", "epoch": 1, "entries": 256, "bundles": 1, "segments": 1,
                                "bytes": 1000, "live_first_seq": 300, "archived_entries": 256,
                                "completed_previous": False}
