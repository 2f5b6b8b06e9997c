"""The tail (``storage/lmdb/_tail.py``): the commit log's records that LMDB has not applied yet, as
each process holds them in memory, so that reads combine an LMDB snapshot with them.

Pure data: no store is opened here. What the stores make of the tail is tested in
tests/test_commitlog.py (other processes' writes seen before LMDB applies them) and
tests/test_catchup_units.py.
"""

from __future__ import annotations

from hashlib import sha256

import pytest

from krepis import LogStatus, TransactionLog
from krepis._model import encode_log
from krepis.storage.lmdb._tail import Tail, TailRecord, decode_entries


def _entry(i: int, **fields: object) -> tuple[TransactionLog, bytes]:
    log = TransactionLog(1_700_000_000_000 + i, f"op{i % 2}", f"r{i}", LogStatus.Completed, **fields)  # type: ignore[arg-type]
    return log, encode_log(log)


def _record(position: int, end: int, first_seq: int, n: int, increments: list[bytes] | None = None,
            crc: int = 0) -> TailRecord:
    return TailRecord(position, end, crc or position + 7, 1, first_seq,
                      [_entry(first_seq + i) for i in range(n)], increments or [])


def test_a_record_numbers_its_entries_from_its_first_seq_and_keeps_every_field() -> None:
    entries = [_entry(0, duration_us=5), _entry(1, error="boom"), _entry(2)]
    record = TailRecord(64, 200, 9, 1, 40, entries, [b"op0"])
    assert record.next_seq == 43
    logs = record.logs()
    assert [log.seq for log in logs] == [40, 41, 42]
    for (original, _canonical), log in zip(entries, logs, strict=True):
        assert (log.timestamp, log.op_name, log.request_id, log.status, log.duration_us, log.error) == \
            (original.timestamp, original.op_name, original.request_id, original.status,
             original.duration_us, original.error)
    assert logs[0].duration_us == 5 and logs[1].error == "boom"
    assert record.logs() is logs  # built once


def test_a_record_of_no_entries_is_empty() -> None:
    record = TailRecord(0, 48, 1, 2, 7, [], [])
    assert record.next_seq == 7 and record.logs() == [] and record.leaves() == []


def test_a_records_leaves_are_the_merkle_leaf_hashes_of_the_canonical_bytes() -> None:
    entries = [_entry(i) for i in range(3)]
    record = TailRecord(0, 100, 1, 1, 0, entries, [])
    leaves = record.leaves()
    assert leaves == [sha256(b"\x00" + canonical).digest() for _log, canonical in entries]
    assert record.leaves() is leaves  # computed once


def test_decode_entries_takes_exactly_canonical_bytes() -> None:
    entries = [_entry(0, duration_us=1), _entry(1, error="e")]
    decoded = decode_entries([canonical for _log, canonical in entries])
    assert [canonical for _log, canonical in decoded] == [canonical for _log, canonical in entries]
    assert [log for log, _canonical in decoded] == [log for log, _canonical in entries]
    assert decode_entries([]) == []


@pytest.mark.parametrize(("raw", "message"), [
    (b" " + _entry(0)[1], "an entry is not in canonical form"),
    (_entry(0)[1].replace(b'"status":', b'"status": '), "an entry is not in canonical form"),
    (b"not json", "an entry does not decode: "),
    (b'{"timestamp":1}', "an entry does not decode: "),
    (b"[1, 2]", "an entry does not decode: "),
    (_entry(0)[1].replace(b"Completed", b"Done"), "an entry does not decode: "),
])
def test_decode_entries_refuses_anything_else_with_a_value_error(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_entries([_entry(1)[1], raw])
    assert str(info.value).startswith(message)
    if message.endswith(": "):
        assert len(str(info.value)) > len(message)  # the reason follows


def test_a_new_tail_is_empty_at_its_position() -> None:
    tail = Tail(4096, 77, 12)
    assert (tail.base, tail.end, tail.link, tail.next_seq, tail.entries) == (4096, 4096, 77, 12, 0)
    assert tail.records == [] and tail.counters == {} and tail.new_ops == set()
    assert tail.since(4096) == [] and tail.since(5000) == [] and tail.since(4095) is None
    assert tail.increments_since(0, b"op") == 0


def test_adding_records_moves_the_end_the_link_and_the_sequence() -> None:
    tail = Tail(0, 1, 0)
    first, second = _record(0, 100, 0, 2, crc=11), _record(100, 260, 2, 3, crc=22)
    tail.add(first)
    assert (tail.end, tail.link, tail.next_seq, tail.entries) == (100, 11, 2, 2)
    tail.add(second)
    assert (tail.base, tail.end, tail.link, tail.next_seq, tail.entries) == (0, 260, 22, 5, 5)
    assert tail.records == [first, second]


def test_known_counters_follow_the_records_and_unknown_ones_stay_unknown() -> None:
    tail = Tail(0, 1, 0)
    tail.counters[b"a"] = 10
    tail.add(_record(0, 100, 0, 1, [b"a", b"b", b"a"]))
    assert tail.counters == {b"a": 12}  # b was never looked up: its value is LMDB's plus the tail's
    tail.add(_record(100, 200, 1, 1, [b"a"]))
    assert tail.counters == {b"a": 13}


def test_increments_since_counts_a_name_in_the_records_from_a_position_on() -> None:
    tail = Tail(0, 1, 0)
    for i, names in enumerate([[b"a", b"a"], [b"b"], [b"a", b"b"]]):
        tail.add(_record(100 * i, 100 * (i + 1), i, 1, names))
    assert [tail.increments_since(p, b"a") for p in (0, 1, 100, 150, 200, 300)] == [3, 1, 1, 1, 1, 0]
    assert [tail.increments_since(p, b"b") for p in (0, 100, 101, 200, 201)] == [2, 2, 1, 1, 0]
    assert tail.increments_since(0, b"c") == 0


def test_since_gives_the_records_from_a_position_on_or_none_when_they_were_dropped() -> None:
    tail = Tail(0, 1, 0)
    records = [_record(100 * i, 100 * (i + 1), i, 1) for i in range(4)]
    for record in records:
        tail.add(record)
    assert tail.since(0) == records
    assert tail.since(100) == records[1:] and tail.since(99) == records[1:] and tail.since(101) == records[2:]
    assert tail.since(400) == []
    tail.drop_before(200)
    assert tail.since(200) == records[2:]
    assert tail.since(199) is None  # its LMDB snapshot is older than what the tail still holds


def test_dropping_forgets_the_records_before_a_position() -> None:
    tail = Tail(0, 1, 0)
    records = [_record(100 * i, 100 * (i + 1), 2 * i, 2) for i in range(4)]
    for record in records:
        tail.add(record)
    tail.drop_before(0)
    assert tail.records == records and tail.base == 0 and tail.entries == 8
    tail.drop_before(100)
    assert tail.records == records[1:] and tail.base == 100 and tail.entries == 6
    tail.drop_before(200)
    assert tail.records == records[2:] and tail.base == 200 and tail.entries == 4
    assert tail.increments_since(0, b"x") == 0 and tail.since(200) == records[2:]
    tail.drop_before(100)  # never back
    assert tail.records == records[2:] and tail.base == 200 and tail.end == 400 and tail.entries == 4
    tail.drop_before(400)
    assert tail.records == [] and tail.entries == 0 and (tail.base, tail.end) == (400, 400)
    assert tail.next_seq == 8 and tail.link == records[-1].crc


def test_dropping_past_the_end_moves_the_end_another_process_applied_to() -> None:
    tail = Tail(0, 1, 0)
    tail.add(_record(0, 100, 0, 1))
    tail.drop_before(300)
    assert (tail.base, tail.end, tail.records, tail.entries) == (300, 300, [], 0)
    assert tail.since(300) == [] and tail.since(299) is None


def test_reset_forgets_everything() -> None:
    tail = Tail(0, 1, 0)
    tail.add(_record(0, 100, 0, 3, [b"a"]))
    tail.counters[b"a"] = 4
    tail.new_ops.add("op")
    tail.reset(512, 99, 40)
    assert (tail.base, tail.end, tail.link, tail.next_seq, tail.entries) == (512, 512, 99, 40, 0)
    assert tail.records == [] and tail.counters == {} and tail.new_ops == set()
    assert tail.since(512) == [] and tail.since(511) is None and tail.increments_since(0, b"a") == 0


def test_records_and_tails_take_no_attributes_beyond_their_own() -> None:
    """(Slots: one record is made per write, and the tail is read under the store's lock on
    every read.)"""
    record = _record(0, 100, 0, 1)
    with pytest.raises(AttributeError):
        record.other = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        Tail(0, 1, 0).other = 1  # type: ignore[attr-defined]
