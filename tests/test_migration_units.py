"""The row checks every migration applies (``krepis.storage._migration``): a format-1 entry is
taken only if a write would accept it, and a counter's name only if it is an op name; each
refusal is a ``ValueError`` with an exact text (the migration quotes it, naming the row)."""

from __future__ import annotations

import json

import pytest

from krepis import LogStatus, TransactionLog
from krepis.storage._migration import counter_name, format1_entry

ENTRY = {"timestamp": 5, "op_name": "op", "request_id": "r", "status": "Completed"}


def _refused(raw: bytes | str) -> str:
    with pytest.raises(ValueError) as info:
        format1_entry(raw)
    assert type(info.value) is ValueError
    return str(info.value)


@pytest.mark.parametrize("raw", [json.dumps(ENTRY), json.dumps(ENTRY).encode(),
                                 ' { "status" : "Completed", "request_id": "r", "op_name": "op", '
                                 '"timestamp": 5 } '])
def test_an_entry_in_any_spelling_is_read(raw: str | bytes) -> None:
    assert format1_entry(raw) == TransactionLog(5, "op", "r", LogStatus.Completed)


def test_every_field_is_carried() -> None:
    full = {**ENTRY, "status": "Failed", "duration_us": 7, "error": "boom"}
    assert format1_entry(json.dumps(full)) == TransactionLog(5, "op", "r", LogStatus.Failed, 7, "boom")
    for status in ("Started", "Completed", "Failed"):
        assert format1_entry(json.dumps({**ENTRY, "status": status})).status == LogStatus(status)


@pytest.mark.parametrize(("raw", "why"), [
    (b"\x7b\xff", "it is not valid UTF-8 (byte 1)"),
    ("{", "it is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
          "(char 1))"),
    ('{"timestamp": NaN}', "it is not valid JSON (NaN is not a JSON number)"),
    ('{"timestamp": -Infinity}', "it is not valid JSON (-Infinity is not a JSON number)"),
    ("[" * 100_000, "it is not JSON (nested too deeply)"),
    ('{"op_name": "a", "op_name": "b"}', "it is not valid JSON (field 'op_name' appears twice)"),
    ("[1]", "it is a JSON array, not an object"), ('"s"', "it is a JSON string, not an object"),
    ("1", "it is a JSON number, not an object"), ("1.5", "it is a JSON number, not an object"),
    ("true", "it is a JSON boolean, not an object"), ("null", "it is a JSON null, not an object"),
    (json.dumps({**ENTRY, "x": 1, "y": 2, "z": 3, "w": 4}),
     "it has the field(s) 'w', 'x', 'y', which a TransactionLog does not have (they would be lost)"),
    (json.dumps({**ENTRY, "k" * 100: 1}),
     "it has the field(s) " + repr("k" * 100)[:60] + ", which a TransactionLog does not have (they "
     "would be lost)"),
    ('{"timestamp": 1}', "it has no op_name, request_id, status"),
    ('{"status": "Completed", "request_id": "r"}', "it has no timestamp, op_name"),
    (json.dumps({**ENTRY, "status": "Done"}), "its status 'Done' is not Started, Completed or Failed"),
    (json.dumps({**ENTRY, "status": 2}), "its status 2 is not Started, Completed or Failed"),
    (json.dumps({**ENTRY, "status": "x" * 100}),
     f"its status {repr('x' * 100)[:60]} is not Started, Completed or Failed"),
    (json.dumps({**ENTRY, "timestamp": -1}), "timestamp -1 is outside 0 … 2**63-1 (Unix milliseconds)"),
])
def test_a_row_a_write_would_refuse_is_refused_saying_why(raw: bytes | str, why: str) -> None:
    assert _refused(raw) == why


@pytest.mark.parametrize(("raw", "name"), [(b"op", "op"), ("op", "op"), ("é" * 100, "é" * 100)])
def test_a_counter_name_that_is_an_op_name_is_read(raw: bytes | str, name: str) -> None:
    assert counter_name(raw) == name


@pytest.mark.parametrize(("raw", "why"), [
    (b"a\xff", "its name b'a\\xff' is not valid UTF-8 (byte 1)"),
    (b"\xff" * 100, "its name " + repr(b"\xff" * 100)[:60] + " is not valid UTF-8 (byte 0)"),
    (b"", "its name must not be empty (1–200 bytes of UTF-8)"),
    ("a\0b", "its name 'a\\x00b' contains a NUL character (\\x00), which no storage engine accepts in "
             "names and ids"),
    ("x" * 201, f"its name '{'x' * 60}…' is 201 bytes of UTF-8; the limit is 200"),
    ("op_name\0", "its name 'op_name\\x00' contains a NUL character (\\x00), which no storage engine "
                  "accepts in names and ids"),  # only the first "op_name" is the field's
])
def test_a_counter_name_that_is_no_op_name_is_refused_saying_why(raw: bytes | str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        counter_name(raw)
    assert type(info.value) is ValueError
    assert str(info.value) == why
