"""LMDB following the commit log (``storage/lmdb/_apply.py``), step by step: records applied in
one LMDB transaction (entries, index rows, tree nodes, op names, counters, the log pointer), each
refusal of a record that does not continue the store by its text, op ids handed out, the tail
brought into LMDB up to a position, and the background applier's rules (woken, enough entries,
the oldest waited long enough; a damaged log stops it, a passing error is kept and cleared).

Real stores on disk. The records applied by hand are real ``TailRecord`` values (entries in
canonical form); those the store's own write path appended wait in its tail with the background
applier kept from starting, so each test decides when LMDB applies them.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import lmdb
import pytest

from krepis import CorruptStorageError, LogStatus, StorageError, TransactionLog
from krepis._model import encode_log
from krepis.storage import Query, WriteRequest
from krepis.storage.lmdb import LmdbStorage, _store
from krepis.storage.lmdb import _apply as apply_module
from krepis.storage.lmdb._apply import (
    APPLY_ENTRIES,
    APPLY_SECONDS,
    applier,
    apply_records,
    apply_tail,
    new_op,
)
from krepis.storage.lmdb._commitlog import BARRIER, BATCH
from krepis.storage.lmdb._state import LogPointer, Shared, read_log_pointer
from krepis.storage.lmdb._tail import TailRecord
from krepis.tlog._merkle import append_leaf, root_from_frontier


def _log(i: int, op: str = "op", status: LogStatus = LogStatus.Completed, *, ts: int | None = None,
         rid: str | None = None) -> TransactionLog:
    return TransactionLog(1_700_000_000_000 + i if ts is None else ts, op, rid or f"r{i}", status)


def _entries(logs: list[TransactionLog]) -> list[tuple[TransactionLog, bytes]]:
    return [(x, encode_log(x)) for x in logs]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LmdbStorage]:
    """A store whose writes wait in its tail: no background applier starts."""
    monkeypatch.setattr(_store, "start_applier", lambda shared: None)
    store = LmdbStorage(tmp_path / "s")
    try:
        yield store
    finally:
        store.close()


def _in_txn(shared: Shared, body: Callable[[Any, LogPointer], Any], *, commit: bool = True) -> Any:
    with shared.writer_lock():
        txn = shared.env.begin(write=True)
        try:
            result = body(txn, read_log_pointer(txn, shared.meta, shared.path))
        except BaseException:
            txn.abort()
            raise
        if commit:
            txn.commit()
        else:
            txn.abort()
    return result


def _apply(shared: Shared, records: list[TailRecord], *,
           commit: bool = True) -> tuple[LogPointer, dict[str, int]]:
    return _in_txn(shared, lambda txn, pointer: apply_records(shared, txn, records, pointer),  # type: ignore[no-any-return]
                   commit=commit)


def _pointer(shared: Shared) -> LogPointer:
    with shared.env.begin() as txn:
        return read_log_pointer(txn, shared.meta, shared.path)


def _raw(shared: Shared, db: bytes, key: bytes) -> bytes | None:
    with shared.env.begin() as txn:
        value = txn.get(key, db=shared.dbs[db])
        return None if value is None else bytes(value)


def _record(at: int, first_seq: int, logs: list[TransactionLog], increments: list[bytes] | None = None, *,
            kind: int = BATCH, size: int = 512, crc: int | None = None) -> TailRecord:
    return TailRecord(at, at + size, at + 1 if crc is None else crc, kind, first_seq, _entries(logs),
                      increments or [])


# -- apply_records ---------------------------------------------------------------------------

def test_records_are_applied_with_their_rows_tree_counters_and_pointer(store: LmdbStorage) -> None:
    shared = store._shared
    start = _pointer(shared)
    first = [_log(i, f"op{i % 2}", LogStatus.Completed if i % 3 else LogStatus.Failed) for i in range(200)]
    second = [_log(200 + i, "op2", LogStatus.Started) for i in range(100)]
    records = [_record(start.position, 0, first, [b"a", b"b", b"a"], crc=111),
               _record(start.position + 512, 200, second, [b"a"], crc=222)]
    after, new_ops = _apply(shared, records)
    assert (after.log_id, after.position, after.link) == (start.log_id, start.position + 1024, 222)
    assert _pointer(shared).pack() == after.pack()
    assert new_ops == {"op0": 0, "op1": 1, "op2": 2}
    # what the store reads back: entries with their seqs and op names, counters, the tree
    logs = first + second
    for seq in (0, 1, 150, 299):
        got = store.get_entry(seq)
        assert got is not None and got.seq == seq
        assert (got.timestamp, got.op_name, got.request_id, got.status) == \
            (logs[seq].timestamp, logs[seq].op_name, logs[seq].request_id, logs[seq].status)
    assert store.get_entry(300) is None and store.entry_count() == 300 and store.next_seq() == 300
    assert store.get_counts() == {"a": 3, "b": 1}
    size = 0
    frontier: list[bytes] = []
    for x in logs:
        size = append_leaf(frontier, size, sha256(b"\x00" + encode_log(x)).digest())
    head = store.tree_head()
    assert (head.size, head.root) == (300, root_from_frontier(frontier))
    assert store.tree_node(8, 0) is not None and store.tree_node(8, 1) is None  # 256 leaves complete one
    report = store.verify()  # every index row and tree node checked against the entries
    assert (report.entries, report.tree_size) == (300, 300)
    # the index rows answer queries by op, status, request id and time
    by_op = store.scan(Query(op_names=("op2",), newest_first=False), after=None, limit=1000)
    assert [x.seq for x in by_op] == list(range(200, 300))
    failed = store.scan(Query(statuses=(LogStatus.Failed,), newest_first=False), after=None, limit=1000)
    assert [x.seq for x in failed] == [i for i in range(200) if i % 3 == 0]
    assert [x.seq for x in store.scan(Query(request_id="r250"), after=None, limit=10)] == [250]


def test_counters_add_to_what_lmdb_holds(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    _in_txn(shared, lambda txn, p: txn.put(b"op_count:a", struct.pack("<Q", 40), db=shared.dbs[b"stats"]))
    _apply(shared, [_record(at, 0, [_log(0)], [b"a", b"a", b"new"])])
    assert _raw(shared, b"stats", b"op_count:a") == struct.pack("<Q", 42)
    assert _raw(shared, b"stats", b"op_count:new") == struct.pack("<Q", 1)


def test_a_counter_may_reach_the_largest_u64_but_never_pass_it(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    stats = shared.dbs[b"stats"]
    _in_txn(shared, lambda txn, p: txn.put(b"op_count:a", struct.pack("<Q", 2**64 - 2), db=stats))
    _apply(shared, [_record(at, 0, [_log(0)], [b"a"])])
    assert _raw(shared, b"stats", b"op_count:a") == struct.pack("<Q", 2**64 - 1)
    before = _pointer(shared).pack()
    with pytest.raises(CorruptStorageError) as info:
        _apply(shared, [_record(at + 512, 1, [_log(1)], [b"a"])])
    assert str(info.value) == f"storage at {shared.path}: the commit log takes counter 'a' past 2**64-1"
    assert info.value.path == shared.path
    assert _pointer(shared).pack() == before
    _in_txn(shared, lambda txn, p: txn.put(b"op_count:\xffz", struct.pack("<Q", 2**64 - 1), db=stats))
    with pytest.raises(CorruptStorageError) as info:
        _apply(shared, [_record(at + 512, 1, [_log(1)], [b"\xffz"])])
    assert str(info.value) == f"storage at {shared.path}: the commit log takes counter '\ufffdz' past 2**64-1"


@pytest.mark.parametrize("size", [0, 7, 9])
def test_a_counter_of_another_size_is_refused_naming_it(store: LmdbStorage, size: int) -> None:
    shared = store._shared
    at = _pointer(shared).position
    stats = shared.dbs[b"stats"]
    _in_txn(shared, lambda txn, p: txn.put(b"op_count:\xffx", b"\x01" * size, db=stats))
    with pytest.raises(CorruptStorageError) as info:
        _apply(shared, [_record(at, 0, [_log(0)], [b"\xffx"])])
    assert str(info.value) == f"storage at {shared.path}: counter '\ufffdx' holds {size} bytes, not 8"
    assert info.value.path == shared.path


def test_a_record_that_does_not_continue_the_pointer_is_refused(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    for wrong in (at + 8, at + 512):
        with pytest.raises(CorruptStorageError) as info:
            _apply(shared, [_record(wrong, 0, [_log(0)])])
        assert str(info.value) == (f"storage at {shared.path}: the commit log's record at {wrong} does not "
                                   f"continue position {at}")
        assert info.value.path == shared.path
    with pytest.raises(CorruptStorageError,
                       match=f"record at {at + 1024} does not continue position {at + 512}"):
        _apply(shared, [_record(at, 0, [_log(0)]), _record(at + 1024, 1, [_log(1)])])
    assert _pointer(shared).position == at


def test_a_record_may_start_the_next_lap_of_the_ring(store: LmdbStorage) -> None:
    shared = store._shared
    ring = shared.log.ring
    start = _pointer(shared).position
    near_end = ring - 1000 - start  # a record that ends 1,000 bytes before the ring's end
    _apply(shared, [_record(start, 0, [_log(0)], size=near_end)])
    assert _pointer(shared).position == ring - 1000
    with pytest.raises(CorruptStorageError,
                       match=f"record at {ring + 8} does not continue position {ring - 1000}"):
        _apply(shared, [_record(ring + 8, 1, [_log(1)])])
    with pytest.raises(CorruptStorageError, match=f"record at {ring - 992} does not continue"):
        _apply(shared, [_record(ring - 992, 1, [_log(1)])])
    _apply(shared, [_record(ring, 1, [_log(1)])])  # the next lap begins at the ring's size
    assert _pointer(shared).position == ring + 512
    _apply(shared, [_record(ring + 512, 2, [_log(2)], size=ring - 512)])  # ends exactly at a lap's end
    with pytest.raises(CorruptStorageError,
                       match=f"record at {3 * ring} does not continue position {2 * ring}"):
        _apply(shared, [_record(3 * ring, 3, [_log(3)])])  # no lap skipped: the next is where it ends
    assert store.entry_count() == 3


def test_a_barrier_in_the_log_is_refused_as_a_change_lmdb_does_not_have(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    with pytest.raises(CorruptStorageError) as info:
        _apply(shared, [_record(at, 0, [_log(0)]), _record(at + 512, 1, [], kind=BARRIER)])
    assert str(info.value) == (
        f"storage at {shared.path}: the commit log holds, at position {at + 512}, a change made outside the "
        "log (a clear, an archive or a checkpoint) that data.mdb does not have: data.mdb is older than its "
        "commit log. Restore the store with krepis restore")
    assert info.value.path == shared.path


def test_a_record_must_begin_at_the_stores_next_seq(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    for first_seq in (1, 5):
        with pytest.raises(CorruptStorageError) as info:
            _apply(shared, [_record(at, first_seq, [_log(0)])])
        assert str(info.value) == (f"storage at {shared.path}: the commit log's record at {at} begins at seq "
                                   f"{first_seq}; the store is at seq 0")
        assert info.value.path == shared.path
    with pytest.raises(CorruptStorageError,
                       match=f"record at {at + 512} begins at seq 2; the store is at seq 3"):
        _apply(shared, [_record(at, 0, [_log(0), _log(1), _log(2)]), _record(at + 512, 2, [_log(3)])])
    _apply(shared, [_record(at, 0, [_log(0), _log(1), _log(2)]), _record(at + 512, 3, [_log(3)])])
    assert store.next_seq() == 4


def test_a_record_of_no_entries_moves_the_pointer_only(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    _apply(shared, [_record(at, 0, [], [b"c"], crc=77)])
    pointer = _pointer(shared)
    assert (pointer.position, pointer.link) == (at + 512, 77)
    assert store.entry_count() == 0 and store.get_counts() == {"c": 1}


def test_records_after_a_clear_extend_the_new_tree(store: LmdbStorage) -> None:
    """After a clear the tree starts again at the store's seq (its first seq is no longer 0):
    records applied then extend that tree, of the entries since the clear only."""
    shared = store._shared

    def cleared(txn: Any, pointer: LogPointer) -> None:  # as a clear at seq 5 leaves it: epoch 1
        txn.put(b"seq", struct.pack("<Q", 5), db=shared.meta)
        txn.put(b"tree", struct.pack("<QQ", 5, 1), db=shared.meta)

    _in_txn(shared, cleared)
    at = _pointer(shared).position
    logs = [_log(10 + i) for i in range(6)]
    _apply(shared, [_record(at, 5, logs[:4]), _record(at + 512, 9, logs[4:])])
    frontier: list[bytes] = []
    size = 0
    for x in logs:
        size = append_leaf(frontier, size, sha256(b"\x00" + encode_log(x)).digest())
    head = store.tree_head()
    assert (head.size, head.root) == (6, root_from_frontier(frontier))
    assert store.next_seq() == 11 and store.verify().tree_size == 6


# -- put_entries -----------------------------------------------------------------------------

def test_a_sequence_number_already_used_is_refused(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    _in_txn(shared, lambda txn, p: txn.put(struct.pack(">Q", 3), b"x", db=shared.dbs[b"entries"]))
    with pytest.raises(CorruptStorageError) as info:
        _apply(shared, [_record(at, 0, [_log(i) for i in range(5)])])
    assert str(info.value) == (f"storage at {shared.path}: a sequence number from 0 on is already used; the "
                               "meta sequence is behind the entries")
    assert info.value.path == shared.path


def test_entries_older_than_the_newest_go_into_the_time_index_in_place(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    _apply(shared, [_record(at, 0, [_log(100), _log(200)])])
    _apply(shared, [_record(at + 512, 2, [_log(150), _log(50), _log(300)])])
    by_time = store.scan(Query(newest_first=False), after=None, limit=100)
    assert [x.seq for x in by_time] == [3, 0, 2, 1, 4]
    assert store.verify().entries == 5


# -- new_op ----------------------------------------------------------------------------------

def test_new_op_hands_out_the_next_id_and_records_it(store: LmdbStorage) -> None:
    shared = store._shared
    meta, ops = shared.meta, shared.dbs[b"ops"]
    _in_txn(shared, lambda txn, p: txn.put(b"next_op", struct.pack("<Q", 0x01020304), db=meta))
    new: dict[str, int] = {}
    assert _in_txn(shared, lambda txn, p: new_op(shared, txn, "déjà", new)) == 0x01020304
    assert new == {"déjà": 0x01020304}
    assert "déjà" not in shared.op_ids  # (the caller caches it once the transaction committed)
    assert _raw(shared, b"ops", "ndéjà".encode()) == bytes.fromhex("04030201")
    assert _raw(shared, b"ops", b"i" + bytes.fromhex("01020304")) == "déjà".encode()
    assert _raw(shared, b"meta", b"next_op") == struct.pack("<Q", 0x01020305)
    assert ops is not None


def test_new_op_takes_an_id_another_process_interned(store: LmdbStorage) -> None:
    shared = store._shared
    ops = shared.dbs[b"ops"]
    _in_txn(shared, lambda txn, p: txn.put(b"nother", (7).to_bytes(4, "little"), db=ops))
    new: dict[str, int] = {}
    assert _in_txn(shared, lambda txn, p: new_op(shared, txn, "other", new)) == 7
    assert new == {} and shared.op_ids["other"] == 7 and shared.op_names[7] == "other"
    assert _raw(shared, b"meta", b"next_op") == struct.pack("<Q", 0)


@pytest.mark.parametrize("size", [0, 3, 5, 8])
def test_a_malformed_op_table_entry_is_refused(store: LmdbStorage, size: int) -> None:
    shared = store._shared
    _in_txn(shared, lambda txn, p: txn.put(b"nbad", b"\x01" * size, db=shared.dbs[b"ops"]))
    with pytest.raises(CorruptStorageError) as info:
        _in_txn(shared, lambda txn, p: new_op(shared, txn, "bad", {}))
    assert str(info.value) == f"storage at {shared.path}: malformed op table entry for 'bad'"
    assert info.value.path == shared.path


@pytest.mark.parametrize("raw", [None, b"", b"\x01" * 7, b"\x01" * 9])
def test_a_malformed_next_op_record_is_refused(store: LmdbStorage, raw: bytes | None) -> None:
    shared = store._shared

    def damage(txn: Any, p: LogPointer) -> None:
        if raw is None:
            txn.delete(b"next_op", db=shared.meta)
        else:
            txn.put(b"next_op", raw, db=shared.meta)

    _in_txn(shared, damage)
    with pytest.raises(CorruptStorageError) as info:
        _in_txn(shared, lambda txn, p: new_op(shared, txn, "x", {}))
    assert str(info.value) == f"storage at {shared.path}: malformed next_op record"
    assert info.value.path == shared.path


def test_op_ids_end_at_2_to_the_32(store: LmdbStorage) -> None:
    shared = store._shared
    _in_txn(shared, lambda txn, p: txn.put(b"next_op", struct.pack("<Q", 2**32 - 1), db=shared.meta))
    assert _in_txn(shared, lambda txn, p: new_op(shared, txn, "last", {})) == 2**32 - 1
    with pytest.raises(StorageError) as info:
        _in_txn(shared, lambda txn, p: new_op(shared, txn, "one more", {}))
    assert type(info.value) is StorageError
    assert str(info.value) == f"storage at {shared.path} holds 2**32 op names; no more fit"
    assert info.value.path == shared.path


def test_an_id_already_taken_is_refused(store: LmdbStorage) -> None:
    shared = store._shared
    _in_txn(shared, lambda txn, p: txn.put(b"i" + (0).to_bytes(4, "big"), b"someone", db=shared.dbs[b"ops"]))
    with pytest.raises(CorruptStorageError) as info:
        _in_txn(shared, lambda txn, p: new_op(shared, txn, "x", {}))
    assert str(info.value) == f"storage at {shared.path}: the next_op record names op id 0, which is taken"
    assert info.value.path == shared.path


def test_an_op_name_interned_earlier_in_the_same_batch_keeps_its_id(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    _after, new_ops = _apply(shared, [_record(at, 0, [_log(0, "x"), _log(1, "y"), _log(2, "x")])])
    assert new_ops == {"x": 0, "y": 1}
    assert [store.get_entry(i).op_name for i in range(3)] == ["x", "y", "x"]  # type: ignore[union-attr]
    shared.op_ids.update({"x": 0, "y": 1})
    _after, new_ops = _apply(shared, [_record(at + 512, 3, [_log(3, "y"), _log(4, "z")])])
    assert new_ops == {"z": 2}
    assert _raw(shared, b"meta", b"next_op") == struct.pack("<Q", 3)


def test_op_ids_are_cached_only_once_their_transaction_commits(store: LmdbStorage) -> None:
    """A batch that names a new op twice and is then refused (a counter past 2**64-1): the
    transaction is aborted, and no id it handed out is in this process's caches."""
    shared = store._shared
    at = _pointer(shared).position
    stats = shared.dbs[b"stats"]
    _in_txn(shared, lambda txn, p: txn.put(b"op_count:full", struct.pack("<Q", 2**64 - 1), db=stats))
    with pytest.raises(CorruptStorageError, match="past 2"):
        _apply(shared, [_record(at, 0, [_log(0, "x"), _log(1, "y"), _log(2, "x")], [b"full"])])
    assert shared.op_ids == {} and shared.op_names == {}
    assert _raw(shared, b"ops", b"nx") is None


# -- apply_tail ------------------------------------------------------------------------------

def _write(store: LmdbStorage, logs: list[TransactionLog], names: list[bytes] | None = None) -> None:
    store.write_batch([WriteRequest(_entries(logs), names or [])])


def test_apply_tail_brings_lmdb_up_to_the_tail(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0, "a"), _log(1, "b")], [b"a"])
    _write(store, [_log(2, "a")], [b"a"])
    end = shared.tail.end
    assert shared.first_unapplied > 0 and len(shared.tail.records) == 2
    with shared.writer_lock():
        assert apply_tail(shared) == 3
    pointer = _pointer(shared)
    assert pointer.position == end == shared.floor and pointer.link == shared.tail.link
    assert shared.tail.records == [] and shared.tail.base == end and shared.first_unapplied == 0.0
    assert shared.op_ids == {"a": 0, "b": 1} and shared.op_names == {0: "a", 1: "b"}
    assert _raw(shared, b"stats", b"op_count:a") == struct.pack("<Q", 2)
    with shared.writer_lock():
        assert apply_tail(shared) == 0  # nothing left
    assert _pointer(shared).pack() == pointer.pack()


def test_apply_tail_stops_before_a_position(store: LmdbStorage) -> None:
    shared = store._shared
    for i in range(4):
        _write(store, [_log(2 * i), _log(2 * i + 1)])
    records = list(shared.tail.records)
    waited = shared.first_unapplied
    with shared.writer_lock():
        assert apply_tail(shared, records[2].position) == 4
    assert _pointer(shared).position == records[2].position == shared.floor
    assert shared.tail.records == records[2:] and shared.first_unapplied == waited  # still waiting
    with shared.writer_lock():
        assert apply_tail(shared, records[2].position + 1) == 2  # (a record that starts before it)
        assert apply_tail(shared, records[2].position) == 0
    assert shared.tail.records == records[3:]
    with shared.writer_lock():
        assert apply_tail(shared, None) == 2
    assert store.verify().entries == 8


def test_apply_tail_with_mu_held_by_the_caller(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0)])
    with shared.writer_lock(), shared.mu:
        assert apply_tail(shared, locked=True) == 1
    assert shared.tail.records == []


def test_apply_tail_takes_mu_unless_the_caller_holds_it(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0)])
    done = threading.Event()

    def apply() -> None:
        with shared.writer_lock():
            apply_tail(shared)
        done.set()

    thread = threading.Thread(target=apply)
    with shared.mu:  # (this process's appends and reads of the tail hold it)
        thread.start()
        assert not done.wait(0.3)  # waits for it
    thread.join(10)
    assert done.is_set() and shared.tail.records == []


def test_a_pointer_behind_what_this_process_saw_applied_is_refused(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0)])
    _write(store, [_log(1)])
    pointer = _pointer(shared)
    second = shared.tail.records[1].position
    shared.tail.drop_before(second)  # as if applied, while LMDB's pointer stayed where it was
    with pytest.raises(CorruptStorageError) as info, shared.writer_lock():
        apply_tail(shared)
    assert str(info.value) == (f"storage at {shared.path}: LMDB's commit-log pointer ({pointer.position}) is "
                               f"behind what this process has seen applied ({second})")
    assert info.value.path == shared.path
    assert _pointer(shared).pack() == pointer.pack()


def test_an_lmdb_error_while_applying_is_wrapped_naming_what_was_done(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    shared.tail.add(_record(at, 0, [_log(0)], [b"c" * 600]))  # a counter key LMDB cannot hold
    with pytest.raises(StorageError) as info, shared.writer_lock():
        apply_tail(shared, doing="testing the wrap")
    assert str(info.value).startswith(f"storage at {shared.path} failed while testing the wrap: ")
    assert info.value.path == shared.path
    assert _pointer(shared).position == at
    shared.tail.reset(at, shared.tail.link, 0)


def test_a_corrupt_record_is_raised_as_it_is_and_nothing_applied(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    shared.tail.add(_record(at, 0, [_log(0)]))
    shared.tail.add(_record(at + 512, 5, [_log(1)]))
    with pytest.raises(CorruptStorageError, match=r"begins at seq 5; the store is at seq 1$"), \
            shared.writer_lock():
        apply_tail(shared)
    assert _pointer(shared).position == at and store.entry_count() == 2  # (the tail's, not LMDB's)
    shared.tail.reset(at, shared.tail.link, 0)
    assert store.entry_count() == 0


def test_lmdb_cannot_begin_a_write(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0)])

    class Refusing:
        def __init__(self, env: lmdb.Environment) -> None:
            self.env = env

        def begin(self, **kwargs: Any) -> Any:
            if kwargs.get("write"):
                raise lmdb.ReadonlyError("injected")
            return self.env.begin(**kwargs)

    real = shared.env
    shared.env = Refusing(real)  # type: ignore[assignment]
    try:
        with pytest.raises(StorageError) as info, shared.writer_lock():
            apply_tail(shared)
        assert str(info.value) == f"storage at {shared.path} failed while applying the commit log: injected"
    finally:
        shared.env = real


# -- the background applier ------------------------------------------------------------------

class Running:
    """``applier(shared)`` in a thread of the test's own, stopped at the end."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.thread = threading.Thread(target=applier, args=(shared,), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shared.closing = True
        self.shared.wake.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.shared.closing = False
        self.shared.wake.clear()

    def until(self, done: Callable[[], bool], seconds: float = 10.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(0.01)
        return done()


def test_the_applier_applies_when_woken(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0)])
    shared.first_unapplied = time.monotonic() + 3600  # (the time rule cannot fire)
    with Running(shared) as running:
        shared.wake.set()
        assert running.until(lambda: not shared.tail.records)
    assert _pointer(shared).position == shared.tail.end


def test_the_applier_keeps_running_while_nothing_waits(store: LmdbStorage) -> None:
    shared = store._shared
    with Running(shared) as running:
        shared.wake.set()
        assert running.until(lambda: not shared.wake.is_set())  # it woke, found nothing
        assert not running.until(lambda: not running.thread.is_alive(), seconds=2 * APPLY_SECONDS)
        _write(store, [_log(0)])
        shared.wake.set()
        assert running.until(lambda: not shared.tail.records)


def test_the_applier_applies_once_enough_entries_wait(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(i) for i in range(APPLY_ENTRIES)])
    shared.wake.clear()  # (the write woke it: this test is about the count alone)
    shared.first_unapplied = time.monotonic() + 3600
    with Running(shared) as running:
        assert running.until(lambda: not shared.tail.records)


def test_the_applier_applies_once_the_oldest_waited_long_enough(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0)])
    shared.first_unapplied = time.monotonic() - APPLY_SECONDS
    with Running(shared) as running:
        assert running.until(lambda: not shared.tail.records)
    assert shared.first_unapplied == 0.0


def test_the_applier_leaves_fewer_entries_that_have_not_waited(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(i) for i in range(APPLY_ENTRIES - 1)])
    shared.first_unapplied = time.monotonic() + 3600
    with Running(shared) as running:
        assert not running.until(lambda: not shared.tail.records, seconds=4 * APPLY_SECONDS)
        shared.first_unapplied = 0.0  # (never set: nothing to time)
        assert not running.until(lambda: not shared.tail.records, seconds=4 * APPLY_SECONDS)
    assert len(shared.tail.records) == 1


def test_the_applier_stops_when_the_store_closes(store: LmdbStorage) -> None:
    shared = store._shared
    _write(store, [_log(0)])
    shared.closing = True
    shared.wake.set()
    thread = threading.Thread(target=applier, args=(shared,), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and len(shared.tail.records) == 1
    shared.closing = False


def test_the_applier_stops_and_fails_the_store_on_a_damaged_log(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    shared.tail.add(_record(at, 3, [_log(0)]))
    thread = threading.Thread(target=applier, args=(shared,), daemon=True)
    thread.start()
    shared.wake.set()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(shared.failed, CorruptStorageError) and "begins at seq 3" in str(shared.failed)
    assert shared.apply_error is None
    shared.failed = None
    shared.tail.reset(at, shared.tail.link, 0)


def test_the_applier_keeps_a_passing_error_and_clears_it_once_it_applies(store: LmdbStorage) -> None:
    shared = store._shared
    at = _pointer(shared).position
    link = shared.tail.link
    shared.tail.add(_record(at, 0, [_log(0)], [b"c" * 600]))
    with Running(shared) as running:
        shared.wake.set()
        assert running.until(lambda: shared.apply_error is not None)
        assert isinstance(shared.apply_error, StorageError) and shared.failed is None
        assert running.thread.is_alive()  # tried again later
        with shared.mu:
            shared.tail.reset(at, link, 0)
        _write(store, [_log(1)])
        shared.wake.set()
        assert running.until(lambda: shared.apply_error is None and not shared.tail.records)
    assert store.entry_count() == 1


def test_the_applier_applies_what_was_there_when_it_began(store: LmdbStorage,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    shared = store._shared
    _write(store, [_log(0)])
    upto: list[int | None] = []
    real = apply_module.apply_tail

    def spy(shared: Shared, upto_: int | None = None, **kwargs: Any) -> int:
        upto.append(upto_)
        return real(shared, upto_, **kwargs)

    monkeypatch.setattr(apply_module, "apply_tail", spy)
    end = shared.tail.end
    with Running(shared) as running:
        shared.wake.set()
        assert running.until(lambda: not shared.tail.records)
    assert upto == [end]


def test_a_pointer_past_every_record_in_the_log_is_refused_not_waited_for(store: LmdbStorage) -> None:
    """LMDB's pointer names a position the log never reached (files put together by hand): the
    records it claims applied are nowhere to be read, so the applier refuses instead of looking
    again for ever (it used to spin, and ``close()`` hung in it)."""
    shared = store._shared
    _write(store, [_log(0)])
    end = shared.tail.end
    before = _pointer(shared)
    past = LogPointer(before.log_id, end + 4096, before.link)
    _in_txn(shared, lambda txn, _: txn.put(b"log", past.pack(), db=shared.meta))
    outcome: list[BaseException | int] = []

    def apply() -> None:
        try:
            with shared.writer_lock():
                outcome.append(apply_tail(shared))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=apply, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # still looking: put the pointer back so that it ends, then fail
        with shared.env.begin(write=True) as txn:  # (between its looks; it holds the writer lock)
            txn.put(b"log", before.pack(), db=shared.meta)
        thread.join(10)
        pytest.fail("apply_tail kept looking for records the log does not hold")
    [error] = outcome
    assert isinstance(error, CorruptStorageError)
    assert str(error) == (f"storage at {shared.path}: LMDB's commit-log pointer ({end + 4096}) is past the "
                          f"end of the records in commit.log ({end})")
    assert error.path == shared.path
    assert _pointer(shared).pack() == past.pack()  # nothing applied
    _in_txn(shared, lambda txn, _: txn.put(b"log", before.pack(), db=shared.meta))  # so the store closes


def test_a_stalled_pointer_is_refused_at_the_third_look_after_catching_up(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three looks, each after catching up, find the pointer past a tail that did not move: the
    third refuses (a head read while being written is allowed for twice)."""
    shared = store._shared
    _write(store, [_log(0)])
    end = shared.tail.end
    before = _pointer(shared)
    _in_txn(shared, lambda txn, _: txn.put(b"log", LogPointer(before.log_id, end + 4096, before.link).pack(),
                                           db=shared.meta))
    looks: list[int] = []
    real = apply_module.catch_up
    monkeypatch.setattr(apply_module, "catch_up", lambda s, **kw: (looks.append(s.tail.end), real(s, **kw)))
    with pytest.raises(CorruptStorageError), shared.writer_lock():
        apply_tail(shared)
    assert looks == [end, end, end]
    _in_txn(shared, lambda txn, _: txn.put(b"log", before.pack(), db=shared.meta))


def test_a_pointer_past_a_tail_that_catches_up_a_record_a_look_is_followed(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process applied four records this one had not read, and catching up reads one of
    them at each look (the log's head moving on as that process wrote): every look made progress,
    so however many looks it takes is no stall, and LMDB is found up to date."""
    shared = store._shared
    start, link, seq = shared.tail.end, shared.tail.link, shared.tail.next_seq
    for i in range(4):
        _write(store, [_log(i)])
    records = list(shared.tail.records)
    ends = [r.end for r in records]
    with shared.writer_lock():
        assert apply_tail(shared) == 4  # LMDB holds them: the pointer at the last one's end
    shared.tail.reset(start, link, seq)  # this process forgets having seen them
    heads = iter(ends)
    monkeypatch.setattr(shared.log, "read_head", lambda: next(heads, ends[-1]))
    with shared.writer_lock():
        assert apply_tail(shared) == 0  # nothing to apply: LMDB has them
    assert shared.tail.end == ends[-1] == _pointer(shared).position and shared.tail.records == []


def test_a_transaction_takes_records_until_it_holds_the_most_entries_then_the_next_begins(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records go into one LMDB transaction until their entries reach the most one may hold; the
    record that would pass it begins the next. Here the most is 4 and records of 3, 1 and 1
    entries wait: the first two fill one transaction, the third has one of its own."""
    shared = store._shared
    monkeypatch.setattr(apply_module, "_MAX_ENTRIES_PER_TXN", 4)
    _write(store, [_log(0), _log(1), _log(2)])
    _write(store, [_log(3)])
    _write(store, [_log(4)])
    calls: list[int] = []
    real = apply_module.apply_records
    monkeypatch.setattr(apply_module, "apply_records",
                        lambda s, txn, records, pointer: (calls.append(len(records)),
                                                          real(s, txn, records, pointer))[1])
    with shared.writer_lock():
        assert apply_tail(shared) == 5  # the entries of both transactions
    assert calls == [2, 1]
    assert store.verify().entries == 5
