from __future__ import annotations

import json

import pytest

from krepis import InvalidTypeError, JournalError, LogStatus, TransactionLog, ValidationError
from krepis._model import decode_log, encode_log


def test_serialized_exactly_as_serde_writes_the_struct() -> None:
    log = TransactionLog(1234567890, "test_op", "req-001", LogStatus.Completed)
    assert log.to_json() == (
        '{"timestamp":1234567890,"op_name":"test_op","request_id":"req-001","status":"Completed"}'
    )


def test_optional_fields_written_only_when_set() -> None:
    log = TransactionLog(1, "op", "r", LogStatus.Failed, duration_us=12, error="boom")
    assert log.to_json() == (
        '{"timestamp":1,"op_name":"op","request_id":"r","status":"Failed","duration_us":12,"error":"boom"}'
    )
    assert decode_log(encode_log(log)) == log


@pytest.mark.parametrize("text", ["héllo ✓", 'quote " back \\ slash', "ctl \n\t\x01\x7f", "emoji 🚀"])
def test_string_escaping_round_trips_and_keeps_utf8(text: str) -> None:
    log = TransactionLog(5, text, text, LogStatus.Started)
    raw = encode_log(log)
    assert json.loads(raw) == {"timestamp": 5, "op_name": text, "request_id": text, "status": "Started"}
    assert "\\u00e9" not in raw.decode() and "\\u2713" not in raw.decode()  # non-ASCII stays UTF-8
    assert decode_log(raw) == log
    if "\x01" in text:
        assert b"\\u0001" in raw  # control characters escaped as serde_json does (lowercase hex)


def test_status_strings() -> None:
    assert [s.value for s in LogStatus] == ["Started", "Completed", "Failed"]
    assert str(LogStatus.Completed) == "Completed"


def test_immutable() -> None:
    log = TransactionLog(1, "op", "r", LogStatus.Started)
    with pytest.raises(AttributeError):
        log.op_name = "other"  # type: ignore[misc]


GOOD = {"timestamp": 1, "op_name": "op", "request_id": "r", "status": LogStatus.Started}


@pytest.mark.parametrize(
    ("field", "value", "exc", "words"),
    [
        ("op_name", "", ValidationError, "empty"),
        ("op_name", 5, InvalidTypeError, "op_name must be a str"),
        ("op_name", None, InvalidTypeError, "op_name must be a str"),
        ("op_name", "x" * 201, ValidationError, "201 bytes"),
        ("op_name", "é" * 101, ValidationError, "202 bytes"),
        ("op_name", "\ud800", ValidationError, "UTF-8"),
        ("request_id", "", ValidationError, "empty"),
        ("request_id", b"r", InvalidTypeError, "request_id must be a str"),
        ("request_id", "r" * 257, ValidationError, "limit is 256"),
        ("timestamp", 1.5, InvalidTypeError, "timestamp must be an int"),
        ("timestamp", "1", InvalidTypeError, "timestamp must be an int"),
        ("timestamp", True, InvalidTypeError, "timestamp must be an int"),
        ("timestamp", -1, ValidationError, "-1 is outside"),
        ("timestamp", 2**63, ValidationError, "is outside 0 … 2**63-1"),
        ("status", "Completed", InvalidTypeError, "LogStatus"),
        ("status", None, InvalidTypeError, "LogStatus"),
        ("duration_us", -1, ValidationError, "duration_us -1 is outside 0 … 2**63-1"),
        ("duration_us", 2**63, ValidationError, "is outside 0 … 2**63-1"),
        ("duration_us", 1.0, InvalidTypeError, "duration_us must be an int or None"),
        ("error", "e" * (16 * 1024 + 1), ValidationError, "16385 bytes"),
        ("error", "é" * (8 * 1024) + "e", ValidationError, "16385 bytes"),
    ],
)
def test_bad_fields_are_refused_with_a_clear_message(
    field: str, value: object, exc: type, words: str
) -> None:
    with pytest.raises(exc, match=words.replace("*", r"\*")) as info:
        TransactionLog(**{**GOOD, field: value})  # type: ignore[arg-type]
    assert isinstance(info.value, JournalError)
    assert isinstance(info.value, (ValueError, TypeError))


def test_limits_are_inclusive() -> None:
    TransactionLog(2**63 - 1, "x" * 200, "r" * 256, LogStatus.Completed)
    TransactionLog(0, "é" * 100, "r", LogStatus.Completed)
    TransactionLog(0, "op", "r", LogStatus.Failed, duration_us=0, error="e" * 16 * 1024)
    TransactionLog(0, "op", "r", LogStatus.Failed, duration_us=2**63 - 1, error="é" * 8 * 1024)


def test_error_text_is_cut_to_the_16_kib_limit() -> None:
    from krepis.kernel._kernel import error_text

    for text in ("x" * 100_000, "é" * 50_000):
        cut = error_text(ValueError(text))
        assert cut.startswith("ValueError: ") and cut.endswith("…")
        assert len(cut.encode()) <= 16 * 1024
        assert len(cut.encode()) > 16 * 1024 - 8  # cut at the limit, not well before it
        TransactionLog(0, "op", "r", LogStatus.Failed, error=cut)  # and it fits an entry
    assert error_text(ValueError("short")) == "ValueError: short"
    assert error_text(ValueError()) == "ValueError"
