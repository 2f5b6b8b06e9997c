"""Flush policies (``krepis._policy.FlushPolicy``): what each spelling means, the bounds of the
interval, the exact refusals (naming the value, where it came from and the limits) and the
environment default."""

from __future__ import annotations

import pytest

from krepis import FlushPolicy, InvalidTypeError, ValidationError
from krepis._policy import MAX_INTERVAL_MS


def test_the_two_policies_and_their_names() -> None:
    sync, interval = FlushPolicy.sync(), FlushPolicy.interval(25)
    assert (sync.interval_ms, sync.durable, str(sync)) == (None, True, "sync")
    assert (interval.interval_ms, interval.durable, str(interval)) == (25, False, "interval:25ms")
    assert FlushPolicy.interval() == FlushPolicy(10)
    assert MAX_INTERVAL_MS == 3_600_000


@pytest.mark.parametrize("ms", [1, MAX_INTERVAL_MS])
def test_the_interval_bounds_are_allowed(ms: int) -> None:
    assert FlushPolicy.interval(ms).interval_ms == ms
    assert FlushPolicy.parse(f"interval:{ms}ms") == FlushPolicy(ms)


@pytest.mark.parametrize("ms", [0, -1, MAX_INTERVAL_MS + 1])
def test_an_interval_outside_the_bounds_is_refused_naming_them(ms: int) -> None:
    with pytest.raises(ValidationError) as info:
        FlushPolicy.interval(ms)
    assert str(info.value) == f"flush interval {ms}ms is outside 1 … 3600000ms"


@pytest.mark.parametrize("ms", [1.0, "10", True, None])
def test_an_interval_that_is_not_an_int_is_refused_naming_its_type(ms: object) -> None:
    with pytest.raises(InvalidTypeError) as info:
        FlushPolicy.interval(ms)  # type: ignore[arg-type]
    assert str(info.value) == f"flush interval must be an int of milliseconds, got {type(ms).__name__}"


@pytest.mark.parametrize(("text", "policy"), [
    ("sync", FlushPolicy.sync()), ("  sync\n", FlushPolicy.sync()), ("interval:7ms", FlushPolicy(7)),
    (" interval:3600000ms ", FlushPolicy(MAX_INTERVAL_MS)), ("interval:007ms", FlushPolicy(7)),
])
def test_spellings_that_are_read(text: str, policy: FlushPolicy) -> None:
    assert FlushPolicy.parse(text) == policy


def test_a_policy_is_taken_as_it_is() -> None:
    policy = FlushPolicy.interval(5)
    assert FlushPolicy.parse(policy) is policy


@pytest.mark.parametrize("text", ["interval:0ms", "interval:3600001ms"])
def test_a_parsed_interval_outside_the_bounds_is_refused_naming_the_text(text: str) -> None:
    ms = int(text.split(":")[1][:-2])
    with pytest.raises(ValidationError) as info:
        FlushPolicy.parse(text)
    assert str(info.value) == f"flush policy {text!r}: interval {ms}ms is outside 1 … 3600000ms"


@pytest.mark.parametrize("text", ["async", "", "SYNC", "interval:10", "interval:10ms extra",
                                  "interval:-1ms", "interval:1.5ms", "xinterval:10ms"])
def test_other_text_is_refused_saying_what_is_valid(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        FlushPolicy.parse(text)
    assert str(info.value) == (f"flush policy {text!r} is not valid; use 'sync' or 'interval:Nms' "
                               "(N from 1 to 3600000)")


@pytest.mark.parametrize("value", [10, b"sync", ["sync"]])
def test_a_value_that_is_not_text_is_refused_naming_its_type(value: object) -> None:
    with pytest.raises(InvalidTypeError) as info:
        FlushPolicy.parse(value)  # type: ignore[arg-type]
    assert str(info.value) == (f"flush must be 'sync', 'interval:Nms' or a FlushPolicy, got "
                               f"{type(value).__name__}")


def test_no_value_means_the_environment_else_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KREPIS_FLUSH", raising=False)
    assert FlushPolicy.parse(None) == FlushPolicy.sync()
    monkeypatch.setenv("KREPIS_FLUSH", "")
    assert FlushPolicy.parse(None) == FlushPolicy.sync()
    monkeypatch.setenv("KREPIS_FLUSH", "interval:20ms")
    assert FlushPolicy.parse(None) == FlushPolicy(20)
    assert FlushPolicy.parse("sync") == FlushPolicy.sync()  # a value given wins


def test_a_bad_environment_value_is_refused_saying_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KREPIS_FLUSH", "sometimes")
    with pytest.raises(ValidationError) as info:
        FlushPolicy.parse(None)
    assert str(info.value) == ("flush policy 'sometimes' (from KREPIS_FLUSH) is not valid; use 'sync' "
                               "or 'interval:Nms' (N from 1 to 3600000)")
    monkeypatch.setenv("KREPIS_FLUSH", "interval:0ms")
    with pytest.raises(ValidationError) as info:
        FlushPolicy.parse(None)
    assert str(info.value) == ("flush policy 'interval:0ms' (from KREPIS_FLUSH): interval 0ms is "
                               "outside 1 … 3600000ms")
    with pytest.raises(ValidationError) as info:  # a value given is not said to come from it
        FlushPolicy.parse("never")
    assert "KREPIS_FLUSH" not in str(info.value)
