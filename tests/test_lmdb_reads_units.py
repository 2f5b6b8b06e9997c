"""The LMDB store's reads of its own tables (``storage/lmdb/_reads``) with every entry applied to
LMDB (none left in the commit log's tail): the index scans' filters, bounds, cursors and merges,
and the damage they meet named word for word with the store's path."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import CorruptStorageError, LogStatus, TransactionLog
from krepis._model import encode_log, make_log
from krepis.storage import Query, WriteRequest
from rawlmdb import edit
from test_storage_lmdb import _AppliedAtOnce

S, C, F = LogStatus.Started, LogStatus.Completed, LogStatus.Failed


def _log(ts: int, op: str, rid: str, status: LogStatus, n: int) -> TransactionLog:
    return TransactionLog(ts, op, rid, status, duration_us=n)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[_AppliedAtOnce]:
    """60 entries applied to LMDB: timestamps 0…59 (entry n at ts n), ops a/b/c in turn, request
    ids r0…r4 in turn, statuses Started/Completed/Failed every third."""
    s = _AppliedAtOnce(tmp_path / "store")
    logs = [_log(n, "abc"[n % 3], f"r{n % 5}", (S, C, F)[(n // 3) % 3], n) for n in range(60)]
    s.write_batch([WriteRequest([(log, encode_log(log))], [log.op_name.encode()]) for log in logs])
    try:
        yield s
    finally:
        s.close()


def _ns(logs: list[TransactionLog]) -> list[int | None]:
    return [log.duration_us for log in logs]


def _want(pred, *, desc: bool = True) -> list[int]:  # type: ignore[no-untyped-def]
    found = [n for n in range(60) if pred(n)]
    return found[::-1] if desc else found


def _all(store: _AppliedAtOnce, query: Query, page: int) -> list[int | None]:
    out: list[TransactionLog] = []
    after = None
    while True:
        got = store.scan(query, after=after, limit=page)
        out += got
        if len(got) < page:
            return _ns(out)
        after = got[-1]


def test_time_scans_by_every_filter_in_pages_both_ways(store: _AppliedAtOnce) -> None:
    status = lambda n: (S, C, F)[(n // 3) % 3]  # noqa: E731
    cases = [
        (Query(), lambda n: True),
        (Query(since=10, until=20), lambda n: 10 <= n < 20),
        (Query(since=10), lambda n: n >= 10),
        (Query(until=7), lambda n: n < 7),
        (Query(statuses=(S, F)), lambda n: status(n) in (S, F)),
        (Query(statuses=(C,), since=5, until=40), lambda n: status(n) == C and 5 <= n < 40),
        (Query(op_names=("b", "never-journaled", "c")), lambda n: n % 3 in (1, 2)),
        (Query(op_names=("never-journaled", "a"), statuses=(F,)), lambda n: n % 3 == 0 and status(n) == F),
        (Query(op_names=("a",), since=12, until=31), lambda n: n % 3 == 0 and 12 <= n < 31),
        (Query(request_id="r2"), lambda n: n % 5 == 2),
        (Query(request_id="r2", statuses=(S, C)), lambda n: n % 5 == 2 and status(n) in (S, C)),
        (Query(request_id="r3", op_names=("a", "c")), lambda n: n % 5 == 3 and n % 3 in (0, 2)),
        (Query(request_id="r1", since=20, until=50), lambda n: n % 5 == 1 and 20 <= n < 50),
        (Query(request_id="nobody"), lambda n: False),
        (Query(op_names=("never-journaled",)), lambda n: False),
    ]
    for query, pred in cases:
        for desc in (True, False):
            q = Query(since=query.since, until=query.until, statuses=query.statuses, op_names=query.op_names,
                      request_id=query.request_id, newest_first=desc)
            want = _want(pred, desc=desc)
            for page in (1, 2, 7, 100):
                assert _all(store, q, page) == want, (query, desc, page)
            assert _ns(store.scan(q, after=None, limit=3)) == want[:3], (query, desc)


def test_append_scans_page_from_a_cursor_both_ways(store: _AppliedAtOnce) -> None:
    for desc in (True, False):
        q = Query(order="append", newest_first=desc)
        want = list(range(59, -1, -1)) if desc else list(range(60))
        for page in (1, 4, 60, 61):
            assert _all(store, q, page) == want, (desc, page)
        assert _ns(store.scan(q, after=None, limit=5)) == want[:5]
    odd = Query(order="append", op_names=("b",), newest_first=False)
    assert _all(store, odd, 3) == list(range(1, 60, 3))
    beyond = store.scan(Query(order="append"), after=None, limit=1)[0]  # newest first from the end
    assert beyond.seq == 59
    last = store.scan(Query(order="append", newest_first=False), after=beyond, limit=5)
    assert last == []  # nothing after the last entry
    first = store.scan(Query(order="append", newest_first=False), after=None, limit=1)[0]
    assert store.scan(Query(order="append"), after=first, limit=5) == []  # nothing before the first


def test_a_counter_of_the_wrong_length_is_named_with_the_store(tmp_path: Path) -> None:
    s = _AppliedAtOnce(tmp_path / "store")
    log = _log(1, "op", "r", C, 1)
    s.write_batch([WriteRequest([(log, encode_log(log))], [b"op"])])
    s.close()
    edit(tmp_path / "store", lambda txn, db: txn.put(b"op_count:op", b"\1\2\3", db=db(b"stats")))
    s = _AppliedAtOnce(tmp_path / "store")
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.get_count(b"op")
        assert str(info.value) == f"storage at {s.location}: counter 'op' holds 3 bytes, not 8"
        assert info.value.path == s.location
    finally:
        s.close()


def test_a_malformed_checkpoint_record_is_named_with_the_store(tmp_path: Path) -> None:
    s = _AppliedAtOnce(tmp_path / "store")
    s.close()
    edit(tmp_path / "store", lambda txn, db: txn.put(b"\0" * 5, b"note", db=db(b"checkpoints")))
    s = _AppliedAtOnce(tmp_path / "store")
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.checkpoints()
        assert str(info.value).startswith(f"storage at {s.location}: malformed checkpoint record (")
        assert info.value.path == s.location
    finally:
        s.close()


def test_an_index_row_of_a_missing_entry_is_named_with_the_store(store: _AppliedAtOnce) -> None:
    location = store.location
    store.close()
    edit(location, lambda txn, db: txn.delete((7).to_bytes(8, "big"), db=db(b"entries")))
    s = _AppliedAtOnce(location)
    try:
        for query in (Query(), Query(request_id="r2"), Query(op_names=("b",)), Query(statuses=(F,))):
            with pytest.raises(CorruptStorageError) as info:
                s.scan(query, after=None, limit=100)
            assert str(info.value) == f"storage at {location}: an index names entry 7, which is missing"
            assert info.value.path == location
    finally:
        s.close()


# --- damage in LMDB itself, each named word for word with the store's path -----------------------

def _small(tmp_path: Path, n: int = 3) -> Path:
    """A store of ``n`` entries (op "a", request ids r0…, timestamps 0…) applied to LMDB, closed."""
    s = _AppliedAtOnce(tmp_path / "store")
    logs = [_log(i, "a", f"r{i}", C, i) for i in range(n)]
    s.write_batch([WriteRequest([(log, encode_log(log))], [b"a"]) for log in logs])
    s.close()
    return tmp_path / "store"


def _refused(location: Path, read, message: str) -> None:  # type: ignore[no-untyped-def]
    """``read(store)`` on the store at ``location`` raises CorruptStorageError ``message`` with its path."""
    s = _AppliedAtOnce(location)
    try:
        with pytest.raises(CorruptStorageError) as info:
            read(s)
        assert str(info.value) == f"storage at {location}: {message}"
        assert info.value.path == str(location)
    finally:
        s.close()


def _entry(txn, db, seq: int) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(txn.get(seq.to_bytes(8, "big"), db=db(b"entries")))


def _put_entry(txn, db, seq: int, value: bytes) -> None:  # type: ignore[no-untyped-def]
    txn.put(seq.to_bytes(8, "big"), value, db=db(b"entries"))


def test_a_counter_whose_name_is_not_utf8_is_named_with_replacement_characters(tmp_path: Path) -> None:
    store = _small(tmp_path)
    edit(store, lambda txn, db: txn.put(b"op_count:\xffx", b"\1\2\3", db=db(b"stats")))
    for read in (lambda s: s.get_counts(), lambda s: s.get_count(b"\xffx")):
        _refused(store, read, "counter '\ufffdx' holds 3 bytes, not 8")


@pytest.mark.parametrize(("change", "reason"), [
    (lambda v: b"\x00" + v[1:], "ValueError: bad header (flags 0x0)"),
    (lambda v: v[:9] + (77).to_bytes(4, "little") + v[13:], "KeyError: 77"),  # an op id the table lacks
], ids=["bad header", "unknown op id"])
def test_an_entry_that_does_not_decode_is_named_with_its_reason(tmp_path: Path, change, reason: str) -> None:  # type: ignore[no-untyped-def]
    store = _small(tmp_path)
    edit(store, lambda txn, db: _put_entry(txn, db, 1, change(_entry(txn, db, 1))))
    for read in (lambda s: s.get_entry(1), lambda s: s.scan(Query(), after=None, limit=10),
                 lambda s: s.verify()):
        _refused(store, read, f"entry 1 is not a valid TransactionLog ({reason})")


def test_an_op_name_that_is_not_utf8_is_named_as_the_entry_that_uses_it(tmp_path: Path) -> None:
    store = _small(tmp_path)
    edit(store, lambda txn, db: txn.put(b"i" + (0).to_bytes(4, "big"), b"\xff", db=db(b"ops")))
    _refused(store, lambda s: s.get_entry(2),
             "entry 2 is not a valid TransactionLog (UnicodeDecodeError: 'utf-8' codec can't decode byte "
             "0xff in position 0: invalid start byte)")


def test_op_ids_use_all_four_bytes_and_keys_of_other_kinds_in_the_op_table_are_passed_over(
        tmp_path: Path) -> None:
    """An op id of 2**24 or more is read from all four bytes of its key; a key of another kind
    sorting before the ``i`` keys (``a``) does not stop the names from being read."""
    store = _small(tmp_path)
    big = 1 << 24 | 5

    def change(txn, db) -> None:  # type: ignore[no-untyped-def]
        ops = db(b"ops")
        txn.put(b"i" + big.to_bytes(4, "big"), b"big", db=ops)
        txn.put(b"n" + b"big", big.to_bytes(4, "little"), db=ops)
        txn.put(b"a-key-of-another-kind", b"", db=ops)
        value = _entry(txn, db, 1)
        _put_entry(txn, db, 1, value[:9] + big.to_bytes(4, "little") + value[13:])

    edit(store, change)
    s = _AppliedAtOnce(store)
    try:
        got = s.get_entry(1)
        assert got is not None and got.op_name == "big"
        assert s.get_entry(0) is not None and s.get_entry(0).op_name == "a"  # type: ignore[union-attr]
    finally:
        s.close()


@pytest.mark.parametrize(("kind", "name"), [(b"t", "time"), (b"s", "status"), (b"o", "op"),
                                            (b"r", "request id")])
def test_verify_names_the_index_missing_an_entrys_row(tmp_path: Path, kind: bytes, name: str) -> None:
    store = _small(tmp_path)

    def change(txn, db) -> None:  # type: ignore[no-untyped-def]
        index = db(b"index", dupsort=True, dupfixed=True)
        row = (1).to_bytes(8, "big") * 2  # ts_seq of entry 1 (timestamp 1, seq 1)
        cur = txn.cursor(db=index)
        assert cur.set_range(kind)
        while not cur.set_key_dup(cur.key(), row):
            assert cur.next_nodup() and cur.key()[:1] == kind
        assert cur.delete()

    edit(store, change)
    _refused(store, lambda s: s.verify(), f"entry 1 has no row in the {name} index")


def test_verify_names_an_index_key_of_no_known_kind_cut_at_20_bytes(tmp_path: Path) -> None:
    store = _small(tmp_path)
    edit(store, lambda txn, db: txn.put(b"x" * 19 + b"yz", b"\0" * 16,
                                        db=db(b"index", dupsort=True, dupfixed=True)))
    _refused(store, lambda s: s.verify(), "unknown index key b'xxxxxxxxxxxxxxxxxxxy'")


# --- cursors outside the scan's window or past the store's end ---------------------------------

def _at(seq: int, ts: int) -> TransactionLog:
    return make_log(ts, "a", "r", C, None, None, seq)


def test_a_cursor_outside_a_time_window_does_not_widen_it(store: _AppliedAtOnce) -> None:
    # newest first resuming below a cursor above `until`: `until` still bounds the page
    got = store.scan(Query(until=20, newest_first=True), after=_at(50, 50), limit=100)
    assert _ns(got) == list(range(19, -1, -1))
    # oldest first resuming above a cursor below `since`: `since` still bounds it
    got = store.scan(Query(since=40, newest_first=False), after=_at(5, 5), limit=100)
    assert _ns(got) == list(range(40, 60))
    # and inside the window the cursor does bound it
    assert _ns(store.scan(Query(until=20), after=_at(10, 10), limit=100)) == list(range(9, -1, -1))
    assert _ns(store.scan(Query(since=40, newest_first=False), after=_at(50, 50), limit=100)) == \
        list(range(51, 60))


def test_an_append_order_cursor_past_the_last_entry_resumes_below_it(store: _AppliedAtOnce) -> None:
    for cursor in (60, 100, 2**64 - 1, 2**64):
        got = store.scan(Query(order="append"), after=_at(cursor, 0), limit=100)
        assert _ns(got) == list(range(59, -1, -1)), cursor
        assert store.scan(Query(order="append", newest_first=False), after=_at(cursor, 0), limit=5) == []


# --- the live mark (archiving): malformed, or of another epoch ----------------------------------

def test_a_malformed_live_record_is_named_with_the_store(tmp_path: Path) -> None:
    store = _small(tmp_path)
    edit(store, lambda txn, db: txn.put(b"live", b"\0" * 15, db=db(b"meta")))
    for read in (lambda s: s.live_first_seq(), lambda s: s.verify()):
        _refused(store, read, "malformed live record")


def test_a_live_record_of_another_epoch_marks_nothing_archived(tmp_path: Path) -> None:
    """docs/storage-format.md: ``live`` of an earlier epoch means nothing of this log was
    archived, whatever seq it names."""
    s = _AppliedAtOnce(tmp_path / "store")
    logs = [_log(i, "a", f"r{i}", C, i) for i in range(8)]
    try:
        s.write_batch([WriteRequest([(log, encode_log(log))], []) for log in logs[:3]])
        s.clear()  # epoch 1, from seq 3
        s.write_batch([WriteRequest([(log, encode_log(log))], []) for log in logs[3:]])
        assert s.live_first_seq() == 3
    finally:
        s.close()
    edit(tmp_path / "store", lambda txn, db: txn.put(b"live", struct.pack("<QQ", 0, 6), db=db(b"meta")))
    s = _AppliedAtOnce(tmp_path / "store")
    try:
        assert s.live_first_seq() == 3
        assert s.verify().entries == 5
        assert [log.seq for log in s.scan(Query(order="append"), after=None, limit=10)] == [7, 6, 5, 4, 3]
    finally:
        s.close()


@pytest.mark.parametrize(("record", "found"), [
    (None, "no record"),
    (b"\0\0\0", "a record of 000000"),  # malformed (3 bytes), though it reads as the right id
    ((1).to_bytes(4, "little"), "a record of 01000000"),  # another op's id
], ids=["missing", "malformed", "another id"])
def test_verify_names_an_op_table_record_that_does_not_give_an_entrys_op_its_id(
        tmp_path: Path, record: bytes | None, found: str) -> None:
    """The op table's ``n`` record of every op an entry uses must hold that entry's op id: a
    later write of the op looks its id up there (and, without a record, would give the name a
    second id)."""
    s = _AppliedAtOnce(tmp_path / "store")
    logs = [_log(0, "a", "r0", C, 0), _log(1, "b", "r1", C, 1), _log(2, "a", "r2", C, 2)]
    s.write_batch([WriteRequest([(log, encode_log(log))], []) for log in logs])
    s.close()
    store = tmp_path / "store"
    if record is None:
        edit(store, lambda txn, db: txn.delete(b"na", db=db(b"ops")))
    else:
        edit(store, lambda txn, db: txn.put(b"na", record, db=db(b"ops")))
    _refused(store, lambda s: s.verify(),
             f"the op table holds {found} for op 'a', which entry 0 uses as op id 0")
