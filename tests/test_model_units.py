"""The data model (``krepis._model``) one function at a time: the exact messages of every refusal
(users read them), the shortening of long values in them, the plain strings kept from ``str``
subclasses, the canonical bytes of an entry (what its leaf hash is made of), the decoders' checks
and the kernel's small records."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from krepis import InvalidTypeError, LogStatus, TransactionLog, ValidationError
from krepis._model import (
    KernelContext,
    SovereignStats,
    check_limit,
    check_op_name,
    check_text,
    check_timestamp,
    decode_log,
    decode_logs,
    encode_log,
    make_log,
    now_ms,
)


class Sneaky(str):
    """A str subclass that would re-encode or re-measure itself if krepis called its methods."""

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return b"sneaky"

    def __len__(self) -> int:
        return 1

    def __str__(self) -> str:
        return "sneaky"


def test_now_ms_is_whole_milliseconds_of_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_234_567_890_123_999_999)
    assert now_ms() == 1_234_567_890_123
    assert type(now_ms()) is int


def test_now_stamps_with_the_clock_and_keeps_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 7_000_000_000)
    log = TransactionLog.now("op", "r", LogStatus.Failed, duration_us=5, error="e")
    assert log == TransactionLog(7000, "op", "r", LogStatus.Failed, 5, "e")
    assert (log.timestamp, log.duration_us, log.error, log.seq) == (7000, 5, "e", None)
    plain = TransactionLog.now("op", "r", LogStatus.Started)
    assert (plain.duration_us, plain.error) == (None, None)


def test_status_prints_as_its_value() -> None:
    assert [str(s) for s in LogStatus] == ["Started", "Completed", "Failed"]
    assert f"{LogStatus.Failed}" == "Failed"


# -- check_text: the exact messages and the shortening of long values ---------------------------

def test_check_text_returns_the_utf8_bytes() -> None:
    assert check_text("f", "abc", 3) == b"abc"
    assert check_text("f", "é", 2) == "é".encode()
    assert check_text("f", "a\0b", 3, nul=True) == b"a\0b"
    assert check_text("f", "é\0", 3, nul=True) == "é\0".encode()


def test_check_text_wrong_type_message() -> None:
    with pytest.raises(InvalidTypeError) as info:
        check_text("what", 12, 5)
    assert str(info.value) == "what must be a str, got int 12"
    with pytest.raises(InvalidTypeError) as info:
        check_text("what", b"x" * 200, 5)
    assert str(info.value) == "what must be a str, got bytes " + repr(b"x" * 200)[:80]


def test_check_text_empty_message() -> None:
    with pytest.raises(ValidationError) as info:
        check_text("what", "", 7)
    assert str(info.value) == "what must not be empty (1–7 bytes of UTF-8)"
    with pytest.raises(ValidationError, match="must not be empty"):
        check_text("what", "", 7, nul=True)


def test_check_text_too_long_message_shortens_the_value() -> None:
    with pytest.raises(ValidationError) as info:
        check_text("what", "a" * 61, 60)
    assert str(info.value) == f"what '{'a' * 60}…' is 61 bytes of UTF-8; the limit is 60"
    with pytest.raises(ValidationError) as info:
        check_text("what", "é" * 60, 100)  # 60 characters: shown whole, though 120 bytes
    assert str(info.value) == f"what '{'é' * 60}' is 120 bytes of UTF-8; the limit is 100"
    with pytest.raises(ValidationError) as info:
        check_text("what", "é" * 61, 100)
    assert str(info.value) == f"what '{'é' * 60}…' is 122 bytes of UTF-8; the limit is 100"


def test_check_text_limit_is_inclusive_in_bytes() -> None:
    assert check_text("f", "é" * 3, 6) == "é".encode() * 3
    with pytest.raises(ValidationError, match="is 8 bytes of UTF-8; the limit is 7"):
        check_text("f", "é" * 4, 7)
    with pytest.raises(ValidationError, match="is 4 bytes of UTF-8; the limit is 3"):
        check_text("f", "abcd", 3)


def test_check_text_nul_message_and_nul_allowed() -> None:
    with pytest.raises(ValidationError) as info:
        check_text("what", "a\0b", 10)
    assert str(info.value) == ("what 'a\\x00b' contains a NUL character (\\x00), which no storage "
                               "engine accepts in names and ids")
    with pytest.raises(ValidationError, match="NUL"):
        check_text("what", "é\0", 10)
    with pytest.raises(ValidationError, match="NUL"):
        check_text("what", Sneaky("a\0"), 10)


def test_check_text_surrogate_message() -> None:
    with pytest.raises(ValidationError) as info:
        check_text("what", "a\ud800", 10)
    assert str(info.value) == "what 'a\\ud800' is not valid UTF-8: surrogates not allowed"


def test_check_text_measures_a_subclass_as_its_plain_string() -> None:
    assert check_text("f", Sneaky("plain"), 10) == b"plain"
    with pytest.raises(ValidationError, match="is 5 bytes of UTF-8; the limit is 4"):
        check_text("f", Sneaky("plain"), 4)
    with pytest.raises(ValidationError, match="must not be empty"):
        check_text("f", Sneaky(""), 4)


def test_check_op_name_uses_its_limit_and_name() -> None:
    assert check_op_name("x" * 200) == b"x" * 200
    with pytest.raises(ValidationError) as info:
        check_op_name("x" * 201)
    assert str(info.value) == f"op_name '{'x' * 60}…' is 201 bytes of UTF-8; the limit is 200"


def test_check_timestamp_messages_and_bounds() -> None:
    assert check_timestamp(0) == 0
    assert check_timestamp(2**63 - 1) == 2**63 - 1
    with pytest.raises(InvalidTypeError) as info:
        check_timestamp(True)
    assert str(info.value) == "timestamp must be an int (Unix milliseconds), got bool True"
    with pytest.raises(ValidationError) as info:
        check_timestamp(-1)
    assert str(info.value) == "timestamp -1 is outside 0 … 2**63-1 (Unix milliseconds)"
    with pytest.raises(ValidationError, match=r"^timestamp 9223372036854775808 is outside"):
        check_timestamp(2**63)


def test_check_limit_messages_and_bounds() -> None:
    assert check_limit(0) == 0
    assert check_limit(5, "n") == 5
    with pytest.raises(InvalidTypeError) as info:
        check_limit("3")
    assert str(info.value) == "limit must be an int, got str '3'"
    with pytest.raises(InvalidTypeError) as info:
        check_limit(False, "n")
    assert str(info.value) == "n must be an int, got bool False"
    with pytest.raises(ValidationError) as info:
        check_limit(-1)
    assert str(info.value) == "limit must be >= 0, got -1"
    with pytest.raises(ValidationError) as info:
        check_limit(-2, "n")
    assert str(info.value) == "n must be >= 0, got -2"


# -- TransactionLog's validation -------------------------------------------------------------

def test_entry_messages_name_the_field() -> None:
    cases: list[tuple[dict[str, object], type, str]] = [
        ({"timestamp": 1.5}, InvalidTypeError,
         "timestamp must be an int (Unix milliseconds), got float 1.5"),
        ({"timestamp": -3}, ValidationError, "timestamp -3 is outside 0 … 2**63-1 (Unix milliseconds)"),
        ({"op_name": 3}, InvalidTypeError, "op_name must be a str, got int 3"),
        ({"op_name": ""}, ValidationError, "op_name must not be empty (1–200 bytes of UTF-8)"),
        ({"op_name": "a\0"}, ValidationError,
         "op_name 'a\\x00' contains a NUL character (\\x00), which no storage engine accepts in "
         "names and ids"),
        ({"request_id": ""}, ValidationError, "request_id must not be empty (1–256 bytes of UTF-8)"),
        ({"request_id": 4}, InvalidTypeError, "request_id must be a str, got int 4"),
        ({"request_id": "é" * 129}, ValidationError,
         f"request_id '{'é' * 60}…' is 258 bytes of UTF-8; the limit is 256"),
        ({"request_id": "a\0"}, ValidationError,
         "request_id 'a\\x00' contains a NUL character (\\x00), which no storage engine accepts in "
         "names and ids"),
        ({"status": "Completed"}, InvalidTypeError,
         "status must be a LogStatus (Started, Completed or Failed), got str 'Completed'; "
         "use e.g. LogStatus.Completed"),
        ({"duration_us": True}, InvalidTypeError, "duration_us must be an int or None, got bool"),
        ({"duration_us": -1}, ValidationError, "duration_us -1 is outside 0 … 2**63-1"),
        ({"duration_us": 2**63}, ValidationError, "duration_us 9223372036854775808 is outside 0 … 2**63-1"),
        ({"error": ""}, ValidationError, "error must not be empty (1–16384 bytes of UTF-8)"),
        ({"error": 7}, InvalidTypeError, "error must be a str, got int 7"),
        ({"error": "e" * 16385}, ValidationError,
         f"error '{'e' * 60}…' is 16385 bytes of UTF-8; the limit is 16384"),
    ]
    for change, exc, message in cases:
        fields: dict[str, object] = {"timestamp": 1, "op_name": "op", "request_id": "r",
                                     "status": LogStatus.Started, **change}
        with pytest.raises(exc) as info:
            TransactionLog(**fields)  # type: ignore[arg-type]
        assert str(info.value) == message, change


def test_entry_bounds_are_inclusive_on_every_route() -> None:
    # non-ASCII names take the full check; ASCII ones the quick one: both accept the limits
    for op, rid in [("x" * 200, "r" * 256), ("é" * 100, "é" * 128), ("a", "b")]:
        log = TransactionLog(0, op, rid, LogStatus.Completed, 0, "e")
        assert (log.op_name, log.request_id) == (op, rid)
    TransactionLog(2**63 - 1, "op", "r", LogStatus.Completed, 2**63 - 1)
    for op in ("x" * 201, "é" * 101):
        with pytest.raises(ValidationError, match="the limit is 200"):
            TransactionLog(0, op, "r", LogStatus.Completed)
    for rid in ("r" * 257, "é" * 128 + "r"):
        with pytest.raises(ValidationError, match="the limit is 256"):
            TransactionLog(0, "op", rid, LogStatus.Completed)


def test_error_may_hold_nul_and_non_ascii() -> None:
    log = TransactionLog(0, "op", "r", LogStatus.Failed, error="a\0é")
    assert log.error == "a\0é"
    assert json.loads(encode_log(log))["error"] == "a\0é"
    assert encode_log(log).endswith(b',"error":"a\\u0000\xc3\xa9"}')


def test_entry_keeps_the_plain_string_of_a_subclass() -> None:
    log = TransactionLog(0, Sneaky("op"), Sneaky("rid"), LogStatus.Failed,  # type: ignore[arg-type]
                         error=Sneaky("err"))
    for value, plain in ((log.op_name, "op"), (log.request_id, "rid"), (log.error, "err")):
        assert type(value) is str and value == plain
    assert log.to_json() == ('{"timestamp":0,"op_name":"op","request_id":"rid","status":"Failed",'
                             '"error":"err"}')


def test_entry_keeps_plain_strings_as_they_are() -> None:
    op, rid, err = "é-op", "é-rid", "é-err"
    log = TransactionLog(0, op, rid, LogStatus.Failed, error=err)
    assert log.op_name is op and log.request_id is rid and log.error is err


def test_status_and_duration_are_checked_after_the_names() -> None:
    with pytest.raises(InvalidTypeError, match=r"^status must be a LogStatus"):
        TransactionLog(0, "op", "r", None)  # type: ignore[arg-type]
    log = TransactionLog(0, "op", "r", LogStatus.Started, None, None)
    assert (log.duration_us, log.error) == (None, None)


# -- the canonical bytes ---------------------------------------------------------------------

def test_encode_log_exact_bytes() -> None:
    log = TransactionLog(2**63 - 1, 'o"p', "r\\é", LogStatus.Failed, 0, "line\nend")
    assert encode_log(log) == ('{"timestamp":9223372036854775807,"op_name":"o\\"p","request_id":"r\\\\é",'
                               '"status":"Failed","duration_us":0,"error":"line\\nend"}').encode()
    assert log.to_json() == encode_log(log).decode()
    assert encode_log(TransactionLog(0, "é", "r", LogStatus.Started)) == (
        '{"timestamp":0,"op_name":"é","request_id":"r","status":"Started"}'.encode())


def test_to_dict_has_the_stored_keys_only_when_set() -> None:
    assert TransactionLog(3, "op", "r", LogStatus.Completed).to_dict() == {
        "timestamp": 3, "op_name": "op", "request_id": "r", "status": "Completed"}
    full = TransactionLog(3, "op", "r", LogStatus.Failed, 0, "e", seq=9).to_dict()
    assert full == {"timestamp": 3, "op_name": "op", "request_id": "r", "status": "Failed",
                    "duration_us": 0, "error": "e"}
    assert type(full["status"]) is str
    assert json.loads(TransactionLog(3, "op", "r", LogStatus.Failed, 0, "e").to_json()) == full


# -- decoding --------------------------------------------------------------------------------

def test_decode_log_round_trips_every_field_with_no_seq() -> None:
    log = TransactionLog(4, "é", "r\n", LogStatus.Failed, 12, "x\0")
    back = decode_log(encode_log(log))
    assert back == log and back.seq is None
    assert (back.duration_us, back.error, back.status) == (12, "x\0", LogStatus.Failed)
    short = decode_log(b'{"timestamp":1,"op_name":"o","request_id":"r","status":"Started"}')
    assert (short.duration_us, short.error, short.seq) == (None, None, None)


@pytest.mark.parametrize("raw", [
    b'{"timestamp":"1","op_name":"o","request_id":"r","status":"Started"}',
    b'{"timestamp":1,"op_name":2,"request_id":"r","status":"Started"}',
    b'{"timestamp":1,"op_name":"o","request_id":null,"status":"Started"}',
])
def test_decode_log_refuses_a_field_of_the_wrong_type(raw: bytes) -> None:
    with pytest.raises(TypeError, match=r"^a field has the wrong type$"):
        decode_log(raw)
    with pytest.raises(TypeError):
        decode_logs([raw])


def test_decode_log_refuses_an_unknown_status_or_missing_field() -> None:
    with pytest.raises(KeyError):
        decode_log(b'{"timestamp":1,"op_name":"o","request_id":"r","status":"Done"}')
    with pytest.raises(KeyError):
        decode_log(b'{"timestamp":1,"op_name":"o","status":"Started"}')


def test_decode_logs_parses_many_in_order() -> None:
    logs = [TransactionLog(i, f"op{i}", "r", LogStatus.Completed, i or None) for i in range(3)]
    back = decode_logs([encode_log(log) for log in logs])
    assert back == logs and [b.seq for b in back] == [None] * 3
    assert decode_logs([]) == []
    assert decode_logs([encode_log(logs[1])]) == [logs[1]]


def test_make_log_sets_every_field_as_given() -> None:
    log = make_log(5, "op", "r", LogStatus.Failed, 7, "e", 42)
    assert (log.timestamp, log.op_name, log.request_id, log.status, log.duration_us, log.error,
            log.seq) == (5, "op", "r", LogStatus.Failed, 7, "e", 42)
    assert make_log(5, "op", "r", LogStatus.Started, None, None, None).seq is None


# -- the kernel's records --------------------------------------------------------------------

def test_stats_start_at_zero() -> None:
    assert SovereignStats() == SovereignStats(js_ops_called=0, contexts_created=0)


def test_kernel_context_defaults_and_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 9_000_000)
    ctx = KernelContext()
    assert str(uuid.UUID(ctx.request_id)) == ctx.request_id
    assert len(ctx.trace_id) == 32 and int(ctx.trace_id, 16) >= 0
    assert (ctx.tenant_id, ctx.priority, ctx.is_turbo_mode, ctx.timestamp, ctx.metadata) == (
        "default", 0, False, 9, {})
    meta = {"k": 1}
    full = KernelContext("rid", "t", 2, True, "tr", 5, meta)
    out = full.to_dict()
    assert out == {"request_id": "rid", "tenant_id": "t", "priority": 2, "is_turbo_mode": True,
                   "trace_id": "tr", "timestamp": 5, "metadata": {"k": 1}}
    assert out["metadata"] is not meta
