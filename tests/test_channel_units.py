"""Unit tests of kernel/_channel: the frames, replies and errors of the wire between the host and
Deno, on real pipes (the edge cases test_plane_units.py does not pin)."""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from krepis import ScriptError
from krepis.kernel import _channel as wire
from krepis.kernel._outcome import MAX_ERROR_TEXT


def _unframe(frame: bytes) -> dict[str, Any]:
    magic, length = struct.unpack(">4sI", frame[:8])
    assert magic == b"KRP1" and length == len(frame) - 8
    decoded: dict[str, Any] = json.loads(frame[8:])
    return decoded


def _framed(body: bytes) -> bytes:
    return struct.pack(">4sI", b"KRP1", len(body)) + body


@pytest.fixture
def pipes() -> Iterator[tuple[int, int, int, int]]:
    """(script's stdout read end, its write end, script's stdin read end, its write end)."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    yield out_r, out_w, in_r, in_w
    for fd in (out_r, out_w, in_r, in_w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_a_channel_makes_both_ends_non_blocking(pipes: tuple[int, int, int, int]) -> None:
    out_r, _, _, in_w = pipes
    wire._Channel(out_r, in_w, None)
    assert not os.get_blocking(out_r) and not os.get_blocking(in_w)


def test_without_a_deadline_nothing_times_out(pipes: tuple[int, int, int, int]) -> None:
    out_r, out_w, in_r, in_w = pipes
    chan = wire._Channel(out_r, in_w, None)
    assert chan._remaining() is None
    os.write(out_w, _framed(b"{}") + _framed(b"[1]"))
    os.close(out_w)
    assert chan.frame() == b"{}"
    assert chan.frame() == b"[1]"
    assert chan.frame() is None
    chan.send(b"reply")
    assert os.read(in_r, 100) == b"reply"


def test_the_time_left_is_counted_down_and_none_left_is_a_timeout(
        pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    out_r, _, _, in_w = pipes
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    chan = wire._Channel(out_r, in_w, 102.5)
    assert chan._remaining() == 2.5
    now[0] = 102.0  # less than a second left is still time left
    assert chan._remaining() == 0.5
    now[0] = 102.5  # exactly at the deadline: no time is left
    with pytest.raises(TimeoutError):
        chan._remaining()
    now[0] = 103.0
    with pytest.raises(TimeoutError):
        chan._remaining()


def test_output_arriving_after_the_deadline_is_a_timeout_not_a_frame(
        pipes: tuple[int, int, int, int]) -> None:
    """A script that floods its output cannot keep the host reading past the deadline: data
    read once the deadline passed ends the wait."""
    out_r, out_w, _, in_w = pipes
    os.write(out_w, _framed(b"{}"))
    chan = wire._Channel(out_r, in_w, time.monotonic() - 1)
    with pytest.raises(TimeoutError):
        chan.frame()


def test_output_read_at_the_deadline_instant_is_a_frame_and_the_next_wait_times_out(
        pipes: tuple[int, int, int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline is the first instant with no time left to wait: what is already in the pipe
    at that instant is still read, a frame that needs more output is not waited for."""
    out_r, out_w, _, in_w = pipes
    monkeypatch.setattr(time, "monotonic", lambda: 50.0)
    os.write(out_w, _framed(b"{}") + _framed(b"[1,2]")[:5])
    chan = wire._Channel(out_r, in_w, 50.0)
    assert chan.frame() == b"{}"
    with pytest.raises(TimeoutError):
        chan.frame()


def test_a_wake_up_without_data_waits_again(pipes: tuple[int, int, int, int],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """select() may report a pipe readable when a read then finds nothing (a spurious wake-up):
    the channel waits again rather than taking a short buffer for a frame."""
    out_r, out_w, _, in_w = pipes
    real_select = select.select
    calls = []

    def flaky(r: list[int], w: list[int], x: list[int], timeout: float | None = None) -> Any:
        calls.append(timeout)
        if len(calls) == 1:
            return r, [], []  # readable, but nothing there yet
        os.write(out_w, _framed(b'{"a":1}'))
        return real_select(r, w, x, timeout)

    monkeypatch.setattr(select, "select", flaky)
    chan = wire._Channel(out_r, in_w, time.monotonic() + 30)
    assert chan.frame() == b'{"a":1}'
    assert len(calls) == 2


def test_a_stream_cut_inside_a_header_names_only_what_came(pipes: tuple[int, int, int, int]) -> None:
    out_r, out_w, _, in_w = pipes
    os.write(out_w, _framed(b"{}") + b"KRP1\x00")
    os.close(out_w)
    chan = wire._Channel(out_r, in_w, None)
    assert chan.frame() == b"{}"
    with pytest.raises(ScriptError) as caught:
        chan.frame()
    assert (caught.value.name, str(caught.value)) == (
        "ProtocolError", "the script's output ended inside a message: b'KRP1\\x00'")


def test_an_empty_frame_is_a_frame(pipes: tuple[int, int, int, int]) -> None:
    out_r, out_w, _, in_w = pipes
    os.write(out_w, _framed(b"") + _framed(b"x"))
    os.close(out_w)
    chan = wire._Channel(out_r, in_w, None)
    assert chan.frame() == b""
    assert chan.frame() == b"x"
    assert chan.frame() is None


def test_a_reply_to_a_count_is_the_same_frame_as_any_reply() -> None:
    for call_id, ok in ((1, 0), (7, -3), (2**40, 2**62), (0, 12345)):
        frame = wire.reply_frame(call_id, ok=ok)
        assert frame == wire._frame({"id": call_id, "ok": ok})
        assert _unframe(frame) == {"id": call_id, "ok": ok}


@pytest.mark.parametrize("ok", [True, False, None, 1.5, "s", [1, "x"], {"k": {"n": None}}])
def test_a_reply_keeps_its_json_type(ok: Any) -> None:
    decoded = _unframe(wire.reply_frame(4, ok=ok))
    assert decoded == {"id": 4, "ok": ok}
    assert type(decoded["ok"]) is type(ok)
    assert _unframe(wire.reply_frame(4)) == {"id": 4, "ok": None}


def test_a_reply_to_a_bool_id_is_json_true_not_a_number() -> None:
    assert _unframe(wire.reply_frame(True, ok=3)) == {"id": True, "ok": 3}
    assert wire.reply_frame(True, ok=3)[8:] == b'{"id":true,"ok":3}'


def test_a_reply_is_compact_utf8_json_and_refuses_what_json_cannot_hold() -> None:
    assert wire.reply_frame(1, ok={"a": "é", "b": [1, 2]})[8:] == '{"id":1,"ok":{"a":"é","b":[1,2]}}'.encode()
    with pytest.raises(ValueError):
        wire.reply_frame(1, ok=float("nan"))
    with pytest.raises(TypeError):
        wire.reply_frame(1, ok=object())


def test_an_error_reply_names_the_error_and_cuts_its_message() -> None:
    assert _unframe(wire.reply_frame(9, ok="ignored", error=KeyError("k"))) == {
        "id": 9, "error": {"name": "KeyError", "message": "'k'"}}
    long = wire.reply_frame(2, error=ValueError("é" * (MAX_ERROR_TEXT + 10)))
    assert _unframe(long)["error"] == {"name": "ValueError", "message": "é" * MAX_ERROR_TEXT}
    exact = wire.reply_frame(2, error=ValueError("x" * MAX_ERROR_TEXT))
    assert _unframe(exact)["error"]["message"] == "x" * MAX_ERROR_TEXT


def test_a_call_is_dispatched_with_its_name_args_and_encoder() -> None:
    seen: list[tuple[str, list[Any]]] = []

    def dispatch(name: str, args: list[Any], encode: Any) -> bytes:
        seen.append((name, args))
        frame: bytes = encode({"echo": args})
        return frame

    frame = wire.dispatch_frame({"id": 5, "op": "op_echo", "args": [1, "two"]}, dispatch)
    assert seen == [("op_echo", [1, "two"])]
    assert _unframe(frame) == {"id": 5, "ok": {"echo": [1, "two"]}}
    assert _unframe(wire.dispatch_frame({"id": 6, "op": "op_echo", "args": []}, dispatch)) == {
        "id": 6, "ok": {"echo": []}}


def test_an_op_that_raises_is_answered_with_its_error() -> None:
    def dispatch(name: str, args: list[Any], encode: Any) -> bytes:
        raise PermissionError(f"{name} refused {args[0]}")

    assert _unframe(wire.dispatch_frame({"id": 3, "op": "op_x", "args": ["/etc"]}, dispatch)) == {
        "id": 3, "error": {"name": "PermissionError", "message": "op_x refused /etc"}}


@pytest.mark.parametrize(("call_id", "shown"), [
    (True, "True"), (None, "None"), ("7", "'7'"), (1.0, "1.0"), ("x" * 100, "'" + "x" * 39),
])
def test_a_call_without_an_integer_id_is_a_protocol_error(call_id: Any, shown: str) -> None:
    def dispatch(name: str, args: list[Any], encode: Any) -> bytes:
        raise AssertionError("a call without an id reaches no op")

    with pytest.raises(ScriptError) as caught:
        wire.dispatch_frame({"id": call_id, "op": "op_x", "args": []}, dispatch)
    assert (caught.value.name, str(caught.value)) == (
        "ProtocolError", f"malformed op call: id {shown} is not an integer")


def test_a_missing_id_is_a_protocol_error() -> None:
    with pytest.raises(ScriptError, match=r"^malformed op call: id None is not an integer$"):
        wire.dispatch_frame({"op": "op_x", "args": []}, lambda *a: b"")


def test_a_message_is_a_json_object() -> None:
    assert wire.decode_message(b'{"id":1,"op":"x","args":["\xc3\xa9"]}') == {
        "id": 1, "op": "x", "args": ["é"]}


@pytest.mark.parametrize(("body", "detail"), [
    (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b'{"a":NaX}', "Expecting value: line 1 column 6 (char 5)"),
    (b'{"a":"\xff"}', "'utf-8' codec can't decode byte 0xff in position 6: invalid start byte"),
    (b"", "Expecting value: line 1 column 1 (char 0)"),
])
def test_a_malformed_message_is_named_with_the_parser_s_reason(body: bytes, detail: str) -> None:
    with pytest.raises(ScriptError) as caught:
        wire.decode_message(body)
    assert (caught.value.name, str(caught.value)) == (
        "ProtocolError", f"malformed message from the script: {detail}")


def test_a_message_nested_too_deep_is_refused_before_parsing() -> None:
    depth = wire._MAX_JSON_DEPTH
    assert wire.decode_message(b'{"a":' * depth + b"1" + b"}" * depth)
    body = b'{"a":' * (depth + 1) + b"1" + b"}" * (depth + 1)
    with pytest.raises(ScriptError) as caught:
        wire.decode_message(body)
    assert (caught.value.name, str(caught.value)) == (
        "ProtocolError", f"malformed message from the script: JSON nested deeper than {depth}")


@pytest.mark.parametrize(("body", "ok"), [
    (b"[" * 300 + b"{" * 213 + b"}" * 213 + b"]" * 300, False),   # both kinds count, together
    (b"[" * 300 + b"{" * 212 + b"}" * 212 + b"]" * 300, True),
    (b"[" + b"[]" * 600 + b"]", True),                             # closing brackets close
    (b"{" + b'"a":{},' * 600 + b'"b":{}}', True),
    (b"[" * 300 + b"[]" + b"[" * 250 + b"]" * 550, False),        # a close takes one level off
    (b"[" * 500 + b"[]" * 20 + b"[" * 13 + b"]" * 513, False),     # each close exactly one
    (b"[" * 500 + b"[]" * 20 + b"[" * 12 + b"]" * 512, True),
    (b'["\\\\"' + b"{" * 600 + b"]", False),                       # a string ends after \\
    (b'["\\\\\\"' + b"{" * 600 + b'"]', True),                      # \\\" escapes the quote
])
def test_the_nesting_scan(body: bytes, ok: bool) -> None:
    assert wire._json_depth_ok(body) is ok


def test_a_number_json_cannot_read_is_a_protocol_error() -> None:
    """A number of thousands of digits is refused by the parser: a named ProtocolError, whose
    reason (like every parser reason, under 200 characters) is shown whole."""
    with pytest.raises(ScriptError) as caught:
        wire.decode_message(b'{"a":' + b"9" * 5000 + b"}")
    assert caught.value.name == "ProtocolError"
    assert str(caught.value).startswith("malformed message from the script: Exceeds the limit (4300 digits)")
    assert str(caught.value).endswith("5000 digits; use sys.set_int_max_str_digits() to increase the limit")
