"""The LMDB store's reads of its own tables (``storage/lmdb/_reads``) with every entry applied to
LMDB (none left in the commit log's tail): the index scans' filters, bounds, cursors and merges,
and the damage they meet named word for word with the store's path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import CorruptStorageError, LogStatus, TransactionLog
from krepis._model import encode_log
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
