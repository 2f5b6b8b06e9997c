"""The binary entry encoding of LMDB stores (format 2): exact round trips at every boundary, and
every kind of malformed value refused with its reason."""

from __future__ import annotations

import struct

import pytest

from krepis import LogStatus, TransactionLog
from krepis.storage._codec import decode_value, encode_value, rid_hash

NAMES = {0: "op", 7: "ö"}
HDR = struct.Struct("<BQI")
UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def value(flags: int, rest: bytes = b"\x00r", ts: int = 5, op: int = 0) -> bytes:
    return HDR.pack(flags, ts, op) + rest


@pytest.mark.parametrize("log", [
    TransactionLog(0, "op", "r", LogStatus.Started),
    TransactionLog(2**63 - 1, "ö", "é" * 128, LogStatus.Failed, duration_us=2**63 - 1, error="x"),
    TransactionLog(1, "op", UUID, LogStatus.Completed, duration_us=2**32 - 1),
    TransactionLog(1, "op", UUID, LogStatus.Completed, duration_us=2**32),
    TransactionLog(1, "op", UUID.upper(), LogStatus.Completed, duration_us=0),
    TransactionLog(1, "op", UUID + "0", LogStatus.Completed),
    TransactionLog(1, "op", UUID[:-1], LogStatus.Completed),
    TransactionLog(1, "op", "r" * 256, LogStatus.Completed, error="é\x00\n"),
])
def test_round_trip(log: TransactionLog) -> None:
    op_id = 7 if log.op_name == "ö" else 0
    raw = encode_value(log, op_id)
    assert decode_value(raw, 42, NAMES) == log
    assert decode_value(raw, 42, NAMES).seq == 42


def test_sizes_follow_the_documented_layout() -> None:
    base = TransactionLog(1, "op", UUID, LogStatus.Completed)
    assert len(encode_value(base, 0)) == 13 + 16  # a canonical uuid is stored as its 16 bytes
    assert encode_value(base, 0)[0] == 2 | 4
    other = TransactionLog(1, "op", UUID.upper(), LogStatus.Completed)
    assert len(encode_value(other, 0)) == 13 + 1 + 36  # not canonical: length byte + text
    d32 = TransactionLog(1, "op", "r", LogStatus.Started, duration_us=2**32 - 1)
    d64 = TransactionLog(1, "op", "r", LogStatus.Started, duration_us=2**32)
    assert encode_value(d32, 0)[0] == 1 | 8 and len(encode_value(d32, 0)) == 13 + 2 + 4
    assert encode_value(d64, 0)[0] == 1 | 16 and len(encode_value(d64, 0)) == 13 + 2 + 8
    err = TransactionLog(1, "op", "r", LogStatus.Failed, error="é")
    assert encode_value(err, 0) == HDR.pack(3 | 32, 1, 0) + b"\x00r" + "é".encode()
    assert len(rid_hash(b"r")) == 8 and rid_hash(b"r") != rid_hash(b"s")


@pytest.mark.parametrize(("raw", "reason"), [
    (value(0), "bad header (flags 0x0)"),                      # no status
    (value(2 | 64), "bad header (flags 0x42)"),                 # an unknown flag
    (value(2, ts=2**63), "bad header (flags 0x2)"),            # a timestamp beyond 2**63-1
    (HDR.pack(2, 5, 0), "truncated request id"),   # ends right after the header
    (value(2, b"\x05abc"), "truncated request id"),
    (value(2 | 4, b"\x01" * 15), "truncated request id"),
    (value(2 | 8 | 16, b"\x00r" + b"\x00" * 12), "two duration encodings"),
    (value(2 | 16, b"\x00r" + struct.pack("<Q", 2**63)), "duration out of range"),
    (value(2 | 32, b"\x00r"), "empty error text"),
    (value(2, b"\x00rxyz"), "3 trailing bytes"),
])
def test_malformed_values_are_refused_with_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_value(raw, 1, NAMES)
    assert str(info.value) == reason  # exactly: a store's damage report quotes it


def test_an_unknown_op_id_and_bad_utf8_are_errors_too() -> None:
    with pytest.raises(KeyError):
        decode_value(value(2, op=99), 1, NAMES)
    with pytest.raises(UnicodeDecodeError):
        decode_value(value(2 | 32, b"\x00r\xff"), 1, NAMES)
