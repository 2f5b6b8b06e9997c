"""The LMDB store's write path and its changes outside the commit log (``storage/lmdb/_store.py``):
where a store is, appends and their counters, group commit and its failures, op ids interned
ahead of LMDB, batches too large for the ring, clearing, settings and removing archived entries.

Real stores on disk; failures are injected by wrapping a stdlib call (``os.fdatasync``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import uuid
from hashlib import sha256
from pathlib import Path
from typing import Any

import lmdb
import pytest

import rawlmdb
from krepis import ClosedError, CorruptStorageError, LogStatus, StorageError, TransactionLog, ValidationError
from krepis._model import encode_log
from krepis.storage import Query, WriteRequest
from krepis.storage.lmdb import LmdbStorage, _env
from krepis.storage.lmdb._apply import APPLY_ENTRIES
from krepis.storage.lmdb._commitlog import encode_payload, read_state, record_size
from krepis.storage.lmdb._layout import _MAP_SIZE, _U64, COUNTER_PREFIX
from krepis.storage.lmdb._state import read_log_pointer


def _log(i: int, op: str = "op", rid: str | None = None, error: str | None = None,
         status: LogStatus = LogStatus.Completed) -> TransactionLog:
    return TransactionLog(1_700_000_000_000 + i, op, rid or f"r{i}", status, error=error)


def _req(*logs: TransactionLog, inc: tuple[bytes, ...] = (b"op",)) -> WriteRequest:
    return WriteRequest([(x, encode_log(x)) for x in logs], list(inc))


def _no_background_applier(s: LmdbStorage) -> None:
    """Keep LMDB behind the log (no applier thread is started): what LMDB holds changes only
    when the store itself applies the log."""
    done = threading.Thread(target=lambda: None)
    done.start()
    s._shared.applier = done


def _pointer_position(s: LmdbStorage) -> int:
    with s._shared.env.begin() as txn:
        return read_log_pointer(txn, s._shared.meta, s.location).position


def _state(path: str) -> tuple[bytes, int, int]:
    fd = os.open(os.path.join(path, "commit.state"), os.O_RDONLY)
    try:
        said = read_state(fd)
    finally:
        os.close(fd)
    assert said is not None
    return said


def _recording(calls: list[int], real: Any) -> Any:
    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)
    return fdatasync


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = LmdbStorage(tmp_path / "s")
    yield s
    s.close()


# -- where the store is ------------------------------------------------------------------------


def test_the_location_is_the_absolute_path_with_the_home_directory_expanded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = LmdbStorage("~/a")
    s.close()
    assert s.location == str(tmp_path / "a") and (tmp_path / "a" / "data.mdb").exists()
    monkeypatch.chdir(tmp_path)
    s = LmdbStorage(Path("b"))
    s.close()
    assert s.location == str(tmp_path / "b")


def test_a_closed_store_refuses_writes_and_a_second_close_does_nothing(store: LmdbStorage) -> None:
    shared = store._shared
    store.close()
    store.close()
    assert shared.refs == 0
    with pytest.raises(ClosedError, match="is closed"):
        store.write_batch([_req(_log(0))])
    with pytest.raises(ClosedError, match="is closed"):
        store.set_setting("archive", "/x")


def test_a_store_opened_before_fork_closes_nothing_of_the_parents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LmdbStorage(tmp_path / "s")
    shared = s._shared
    with monkeypatch.context() as m:
        m.setattr(_env, "_generation", _env.generation() + 1)  # as in a forked child
        with pytest.raises(ClosedError, match="opened in a parent process"):
            s.write_batch([_req(_log(0))])
        with pytest.raises(ClosedError, match="opened in a parent process"):
            s.set_setting("archive", "/x")
        s.close()
    assert shared.refs == 1 and _env.open_in_this_process(s.location)
    _env.release(shared)
    assert not _env.open_in_this_process(s.location)


# -- appends, counters, durability -----------------------------------------------------------------


def test_counters_count_within_a_batch_and_across_batches(store: LmdbStorage) -> None:
    assert store.write_batch([_req(_log(0), inc=(b"a", b"b", b"a")), _req(inc=(b"a",))]) == [[1, 1, 2], [3]]
    assert store.write_batch([_req(inc=(b"b", b"a"))]) == [[2, 4]]
    assert store.get_count(b"a") == 4 and store.get_count(b"b") == 2


def _set_counter(path: str, name: bytes, value: int) -> None:
    rawlmdb.edit(path, lambda txn, db: txn.put(COUNTER_PREFIX + name, _U64.pack(value), db=db(b"stats")))


@pytest.mark.parametrize("big", [False, True])
def test_a_counter_at_its_maximum_is_refused_naming_it(tmp_path: Path, big: bool) -> None:
    path = str(tmp_path / "s")
    LmdbStorage(path).close()
    _set_counter(path, b"c\xff", 2**64 - 3)
    s = LmdbStorage(path)
    try:
        # (big: a batch too large for the ring, written into LMDB directly)
        filler = [_log(i, error="x" * 16000) for i in range(150)] if big else []
        assert s.write_batch([_req(*filler, inc=(b"c\xff", b"c\xff"))]) == [[2**64 - 2, 2**64 - 1]]
        with pytest.raises(StorageError) as info:
            s.write_batch([_req(*filler, inc=(b"c\xff",))])
        assert str(info.value) == f"counter 'c\ufffd' at {path} would overflow 2**64-1"
        assert info.value.path == path
        assert s.get_count(b"c\xff") == 2**64 - 1 and s.entry_count() == len(filler)
    finally:
        s.close()


def test_the_first_write_starts_the_applier_and_marks_the_log_in_use(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    s = LmdbStorage(path, durable=False)
    s.write_batch([_req(_log(0))])
    s.close()
    s = LmdbStorage(path, durable=False)
    try:
        at_open = s._shared.durable
        assert not s._shared.wrote and s._shared.applier is None and at_open > 0
        s.write_batch([_req(_log(1))])
        assert s._shared.wrote and s._shared.applier is not None
        _log_id, head, durable = _state(path)
        assert head > at_open and durable == at_open  # the marker: where the log was durable at open
    finally:
        s.close()


def test_a_durable_write_is_flushed_and_marked_before_it_returns(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_batch([_req(_log(0))])  # (the first also makes the ring's length durable)
    flushed: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", _recording(flushed, real))
    store.write_batch([_req(_log(1))])
    log_fd = store._shared.log.fd
    assert flushed == [log_fd]
    assert store._shared.durable == store._shared.tail.end == _state(store.location)[2]
    store.sync()  # nothing new: no flush
    assert flushed == [log_fd]


def test_a_write_that_is_not_durable_is_flushed_by_sync(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    s = LmdbStorage(tmp_path / "s", durable=False)
    try:
        s.write_batch([_req(_log(0))])  # (the first makes the ring's length durable)
        flushed: list[int] = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", _recording(flushed, real))
        s.write_batch([_req(_log(1))])
        s.write_batch([_req(_log(2))])
        assert flushed == [] and s._shared.durable < s._shared.tail.end
        s.sync()
        assert flushed == [s._shared.log.fd] and s._shared.durable == s._shared.tail.end
        assert _state(s.location)[2] == s._shared.tail.end
    finally:
        s.close()


def test_a_failed_flush_is_named_and_every_later_write_refuses(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_batch([_req(_log(0))])

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", fail)
        with pytest.raises(StorageError) as info:
            store.write_batch([_req(_log(1))])
    loc = store.location
    assert str(info.value) == (f"storage at {loc}: flushing commit.log failed (Input/output error); the last "
                               "writes may not be durable, and this journal refuses further writes")
    assert info.value.path == loc
    assert store._shared.failed is info.value and not store._shared.flushing
    with pytest.raises(StorageError) as again:
        store.sync()  # (a flush now would succeed: the journal still refuses)
    assert again.value is info.value
    with pytest.raises(StorageError) as refused:
        store.write_batch([_req(_log(2))])
    assert str(refused.value).startswith(f"storage at {loc} refuses writes after an earlier failure")


def test_a_writer_waits_for_a_flush_in_progress_then_flushes_its_own_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LmdbStorage(tmp_path / "s")
    try:
        s.write_batch([_req(_log(0))])
        real = os.fdatasync
        entered, release = threading.Event(), threading.Event()
        calls: list[int] = []

        def fdatasync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 1:
                entered.set()
                release.wait(10)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        first = threading.Thread(target=s.write_batch, args=([_req(_log(1))],))
        first.start()
        assert entered.wait(10)  # the first writer is flushing
        done: list[list[list[int]]] = []
        second = threading.Thread(target=lambda: done.append(s.write_batch([_req(_log(2))])))
        second.start()
        while not s._shared.flush_cv._waiters:  # type: ignore[attr-defined]
            second.join(0.001)  # the second writer's record is in; it waits for that flush
        assert calls == [s._shared.log.fd]
        release.set()
        first.join(10)
        second.join(10)
        assert done == [[[3]]] and len(calls) == 2  # its record came after the first flush began
        assert s._shared.durable == s._shared.tail.end
    finally:
        s.close()


def test_a_thousand_entries_wake_the_applier_not_fewer(store: LmdbStorage) -> None:
    _no_background_applier(store)
    store.write_batch([_req(*[_log(i) for i in range(APPLY_ENTRIES - 1)])])
    assert not store._shared.wake.is_set()
    store.write_batch([_req(_log(APPLY_ENTRIES))])
    assert store._shared.wake.is_set()


def test_the_oldest_unapplied_record_is_timed_from_its_append(store: LmdbStorage) -> None:
    _no_background_applier(store)
    assert store._shared.first_unapplied == 0.0
    store.write_batch([_req(_log(0))])
    first = store._shared.first_unapplied
    assert first > 0
    store.write_batch([_req(_log(1))])
    assert store._shared.first_unapplied == first
    store.checkpoint()
    assert _pointer_position(store) == store._shared.tail.end  # LMDB holds the whole log
    store.write_batch([_req(_log(2))])
    assert store._shared.first_unapplied > first


def test_a_full_ring_is_applied_and_the_write_goes_on(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "s")
    try:
        _no_background_applier(s)
        big = "x" * 16000
        for n in range(6):  # 6 × ~1.5 MiB through a 4 MiB ring
            s.write_batch([_req(*[_log(n * 100 + i, error=big) for i in range(100)])])
        assert s.entry_count() == 600 and s.get_count(b"op") == 6
        assert _pointer_position(s) > 0  # LMDB was brought up to date to make room
    finally:
        s.close()
    s = LmdbStorage(tmp_path / "s")
    try:
        assert s.entry_count() == 600 and s.get_entry(599) == _log(599, error=big)
    finally:
        s.close()


def test_a_write_after_lmdb_failed_to_follow_applies_first(store: LmdbStorage) -> None:
    _no_background_applier(store)
    store.write_batch([_req(_log(0))])
    end = store._shared.tail.end
    assert _pointer_position(store) < end
    store._shared.apply_error = OSError(errno.ENOSPC, "No space left on device")  # the applier's last error
    store.write_batch([_req(_log(1))])
    assert _pointer_position(store) == end and store._shared.apply_error is None


# -- op ids, interned ahead of LMDB ---------------------------------------------------------------


def test_new_op_names_get_the_next_ids_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    s = LmdbStorage(path)
    _no_background_applier(s)
    s.write_batch([_req(_log(0, "a"), _log(1, "b"), _log(2, "a"))])
    s.write_batch([_req(_log(3, "c"))])
    s.close()
    s = LmdbStorage(path)
    try:
        assert s.op_names() == ["a", "b", "c"]
        s.write_batch([_req(_log(4, "b"), _log(5, "d"))])  # b known from LMDB, d the next
        assert s._shared.op_ids["b"] == 1 and s._shared.op_names[1] == "b"
        s.checkpoint()
        assert s.op_names() == ["a", "b", "c", "d"]
        assert [e.op_name for e in s.scan(Query(op_names=("b",)), after=None, limit=10)] == ["b", "b"]
    finally:
        s.close()


def test_the_last_op_id_is_given_and_none_past_it(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    LmdbStorage(path).close()
    rawlmdb.edit(path, lambda txn, db: txn.put(b"next_op", _U64.pack(2**32 - 2), db=db(b"meta")))
    s = LmdbStorage(path)
    try:
        _no_background_applier(s)
        s.write_batch([_req(_log(0, "a"))])  # id 2**32-2, not yet applied
        s.write_batch([_req(_log(1, "a"), _log(2, "b"))])  # b: 2**32-1 (a known name before it)
        with pytest.raises(StorageError) as info:
            s.write_batch([_req(_log(3, "c"))])
        assert str(info.value) == f"storage at {path} holds 2**32 op names; no more fit"
        assert info.value.path == path
        s.write_batch([_req(_log(3, "b"), _log(4, "a"))])  # names already given an id: no new ones
        with pytest.raises(StorageError, match=r"holds 2\*\*32 op names"):
            s.write_batch([_req(_log(5, "c"))])
        s.checkpoint()
        assert s.op_names() == ["a", "b"] and s.entry_count() == 5
    finally:
        s.close()


def test_a_next_op_record_naming_a_taken_id_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    s = LmdbStorage(path)
    s.write_batch([_req(_log(0, "a"), _log(1, "b"))])
    s.close()
    rawlmdb.edit(path, lambda txn, db: txn.put(b"next_op", _U64.pack(1), db=db(b"meta")))
    s = LmdbStorage(path)
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.write_batch([_req(_log(2, "a"), _log(3, "c"))])  # (a known name first: c is still checked)
        assert str(info.value) == f"storage at {path}: the next_op record names op id 1, which is taken"
        assert info.value.path == path
        s.write_batch([_req(_log(3, "a"))])  # a known name still writes
    finally:
        s.close()


@pytest.mark.parametrize("value", [None, b"\x00" * 7, b"\x00" * 9])
def test_a_damaged_next_op_record_is_named(tmp_path: Path, value: bytes | None) -> None:
    path = str(tmp_path / "s")
    LmdbStorage(path).close()

    def change(txn: Any, db: Any) -> None:
        if value is None:
            txn.delete(b"next_op", db=db(b"meta"))
        else:
            txn.put(b"next_op", value, db=db(b"meta"))

    rawlmdb.edit(path, change)
    s = LmdbStorage(path)
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.write_batch([_req(_log(0, "a"))])
        assert str(info.value) == f"storage at {path}: malformed next_op record"
        assert info.value.path == path and s.entry_count() == 0
    finally:
        s.close()


@pytest.mark.parametrize("value", [b"\x00" * 3, b"\x00" * 5])
def test_a_damaged_op_table_entry_is_named(tmp_path: Path, value: bytes) -> None:
    path = str(tmp_path / "s")
    s = LmdbStorage(path)
    s.write_batch([_req(_log(0, "a"))])
    s.close()
    rawlmdb.edit(path, lambda txn, db: txn.put(b"na", value, db=db(b"ops")))
    s = LmdbStorage(path)
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.write_batch([_req(_log(1, "a"))])
        assert str(info.value) == f"storage at {path}: malformed op table entry for 'a'"
        assert info.value.path == path
    finally:
        s.close()


# -- changes outside the log ------------------------------------------------------------------------


def test_a_change_outside_the_log_is_announced_while_it_commits(store: LmdbStorage) -> None:
    _no_background_applier(store)
    store.write_batch([_req(_log(0))])
    log = store._shared.log
    end = store._shared.tail.end
    seen: list[tuple[int, int]] = []

    def body(txn: Any) -> str:
        seen.append((log.read_pending(), read_log_pointer(txn, store._shared.meta, store.location).position))
        return "done"

    assert store._outside_log(body, "testing") == "done"
    (pending, applied), = seen
    after = store._shared.tail.end
    assert applied == end and pending == after == end + record_size(0)  # the log applied; the barrier's end
    assert log.read_pending() == 0 and log.read_head() == after
    assert _pointer_position(store) == after == store._shared.floor
    assert store._shared.first_unapplied == 0.0 and not store._shared.tail.records
    store.write_batch([_req(_log(1))])
    assert store.entry_count() == 2


def test_a_change_outside_the_log_that_fails_leaves_nothing(store: LmdbStorage) -> None:
    store.write_batch([_req(_log(0))])
    log = store._shared.log

    def body(txn: Any) -> None:
        txn.put(b"x", b"y", db=store._shared.meta)
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        store._outside_log(body, "testing")
    assert log.read_pending() == 0
    with store._shared.env.begin() as txn:
        assert txn.get(b"x", db=store._shared.meta) is None
    store.write_batch([_req(_log(1))])
    assert store.entry_count() == 2


@pytest.mark.parametrize("error", [lmdb.MapFullError("full"), OSError(errno.EIO, "Input/output error")])
def test_a_storage_error_outside_the_log_is_named_with_what_was_done(store: LmdbStorage,
                                                                     error: Exception) -> None:
    def body(txn: Any) -> None:
        raise error

    with pytest.raises(StorageError) as info:
        store._outside_log(body, "testing things")
    loc = store.location
    full = f"storage at {loc} is full (LMDB map size {_MAP_SIZE} bytes) while testing things"
    failed = f"storage at {loc} failed while testing things: {error}"
    assert str(info.value) == (failed if isinstance(error, OSError) else full)
    assert info.value.path == loc and store._shared.log.read_pending() == 0


def test_lmdb_applied_elsewhere_than_the_tail_is_refused(store: LmdbStorage) -> None:
    store.write_batch([_req(_log(0))])
    end = store._shared.tail.end

    def body(txn: Any) -> None:
        pointer = read_log_pointer(txn, store._shared.meta, store.location)
        pointer.position += 8
        txn.put(b"log", pointer.pack(), db=store._shared.meta)

    with pytest.raises(CorruptStorageError) as info:
        store._outside_log(body, "testing")
    assert str(info.value) == (f"storage at {store.location}: LMDB applied the log up to {end + 8}, "
                               f"not {end}")
    assert info.value.path == store.location and _pointer_position(store) == end


def test_a_change_outside_the_log_checks_the_lock_table_inside_its_transaction(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "s")
    try:
        s.write_batch([_req(_log(0))])
        os.unlink(tmp_path / "s" / "lock.mdb")
        with pytest.raises(StorageError, match=r"lock\.mdb"):
            s.set_setting("archive", "/srv/a")
        with s._shared.env.begin() as txn:
            assert txn.get(b"archive", db=s._shared.meta) is None
    finally:
        s.close()


def test_settings_are_stored_read_and_removed(store: LmdbStorage) -> None:
    assert store.get_setting("archive") is None
    store.set_setting("archive", "/srv/archive")
    assert store.get_setting("archive") == "/srv/archive"
    store.set_setting("archive", None)
    assert store.get_setting("archive") is None
    store.set_setting("archive", None)  # (nothing to remove)


# -- a batch too large for the ring -------------------------------------------------------------------


def test_a_batch_too_large_for_the_ring_is_written_into_lmdb_directly(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    s = LmdbStorage(path)
    big = "x" * 16000
    try:
        s.write_batch([_req(_log(0, "small"))])
        first = [_log(i, "big", error=big) for i in range(1, 151)]  # ~2.4 MiB: more than half the ring
        counts = s.write_batch([_req(*first[:75], inc=(b"n", b"op")), _req(*first[75:], inc=(b"n",))])
        assert counts == [[1, 2], [2]]
        assert _pointer_position(s) == s._shared.tail.end  # LMDB holds it; the log only a barrier
        assert s._shared.op_ids["big"] == 1 and s._shared.op_names[1] == "big"
        s.write_batch([_req(_log(151, "big"), inc=(b"n",))])
        assert s.get_count(b"n") == 3 and s.entry_count() == 152
        assert s.get_entry(150) == first[-1] and s.next_seq() == 152
    finally:
        s.close()
    s = LmdbStorage(path)
    try:
        assert sorted(s.op_names()) == ["big", "small"] and s.entry_count() == 152
        oldest = s.scan(Query(op_names=("big",), newest_first=False), after=None, limit=2)
        assert [e.seq for e in oldest] == [1, 2]
        assert s.verify().entries == 152
    finally:
        s.close()


# -- clearing ----------------------------------------------------------------------------------------


def test_clear_hands_the_trace_what_it_removed_and_starts_a_new_epoch(store: LmdbStorage) -> None:
    store.write_batch([_req(_log(0), _log(1), inc=(b"a", b"b")), _req(_log(2), inc=(b"a",))])
    told: list[tuple[int, int, int]] = []

    def trace(removed: int, counters: int, epoch: int) -> TransactionLog:
        told.append((removed, counters, epoch))
        return _log(99, "cleared")

    store.clear(trace)
    assert told == [(3, 2, 1)]
    assert store.entry_count() == 1 and store.get_entry(3) == _log(99, "cleared")
    assert store.get_counts() == {} and store.next_seq() == 4
    head = store.tree_head()
    assert (head.epoch, head.size, head.first_seq) == (1, 1, 3)
    assert head.root == sha256(b"\x00" + encode_log(_log(99, "cleared"))).digest()  # RFC 6962 leaf
    assert store.verify().entries == 1
    assert store._shared.op_names[store._shared.op_ids["cleared"]] == "cleared"
    store.write_batch([_req(_log(100, "cleared"))])
    store.clear()
    assert store.entry_count() == 0 and store.next_seq() == 5
    assert (store.tree_head().epoch, store.tree_head().size) == (2, 0)
    assert store.verify().entries == 0


# -- removing archived entries ----------------------------------------------------------------------


def _index_seqs(s: LmdbStorage) -> dict[bytes, list[int]]:
    """Per kind of index row (its key's first byte), the sequence numbers its rows name."""
    out: dict[bytes, list[int]] = {}
    with s._shared.env.begin() as txn:
        for key, value in txn.cursor(db=s._shared.dbs[b"index"]):
            out.setdefault(key[:1], []).append(int.from_bytes(value[8:16], "big"))
    return {k: sorted(v) for k, v in out.items()}


def test_dropping_a_prefix_removes_each_entry_and_every_index_row_of_it(store: LmdbStorage) -> None:
    statuses = [LogStatus.Completed, LogStatus.Failed, LogStatus.Started]
    logs = [_log(i, f"op{i % 2}", rid=str(uuid.UUID(int=i + 1)) if i % 2 else f"req-{i}" * (i + 1),
                 status=statuses[i % 3], error="e" if i < 2 else None)  # (bytes after the request id)
            for i in range(6)]
    store.write_batch([_req(x) for x in logs])
    store.checkpoint()
    assert store.drop_prefix(0, 0) == 0
    with store._shared.env.begin() as txn:
        assert txn.get(b"live", db=store._shared.meta) is None  # nothing removed: nothing recorded
    before = _index_seqs(store)
    assert store.drop_prefix(0, 4) == 4
    after = _index_seqs(store)
    assert {k: [s for s in v if s >= 4] for k, v in before.items()} == {k: after.get(k, []) for k in before}
    assert store.live_first_seq() == 4 and store.get_entry(3) is None and store.get_entry(4) == logs[4]
    assert store.drop_prefix(0, 4) == 0 and store.drop_prefix(0, 2) == 0
    assert store.drop_prefix(0, 6) == 2 and store.entry_count() == 0


def test_dropping_a_prefix_with_an_entry_missing_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    s = LmdbStorage(path)
    s.write_batch([_req(_log(i)) for i in range(4)])
    s.close()
    rawlmdb.edit(path, lambda txn, db: txn.delete((2).to_bytes(8, "big"), db=db(b"entries")))
    s = LmdbStorage(path)
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.drop_prefix(0, 4)
        assert str(info.value) == f"storage at {path}: entries 0…3 are not all there (3 found)"
        assert info.value.path == path and s.live_first_seq() == 0 and s.get_entry(0) == _log(0)
    finally:
        s.close()


@pytest.mark.parametrize(("damage", "why"), [
    (lambda raw: raw[:10], "unpack_from requires a buffer of at least 13 bytes"),
    (lambda raw: bytes([raw[0] & ~3]) + raw[1:], "bad header (flags 0x"),
    (lambda raw: bytes([raw[0] | 4]) + raw[1:20], "truncated request id"),
])
def test_dropping_a_prefix_over_a_damaged_entry_is_refused(tmp_path: Path, damage: Any, why: str) -> None:
    path = str(tmp_path / "s")
    s = LmdbStorage(path)
    s.write_batch([_req(_log(i)) for i in range(3)])
    s.close()

    def change(txn: Any, db: Any) -> None:
        key = (1).to_bytes(8, "big")
        txn.put(key, damage(txn.get(key, db=db(b"entries"))), db=db(b"entries"))

    rawlmdb.edit(path, change)
    s = LmdbStorage(path)
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.drop_prefix(0, 3)
        assert str(info.value).startswith(f"storage at {path}: entry 1 is not a valid TransactionLog (")
        assert why in str(info.value) and info.value.path == path
        assert s.live_first_seq() == 0 and s.get_entry(0) == _log(0)
    finally:
        s.close()


def _exactly(size: int, first: int) -> WriteRequest:
    """One request whose record in the log takes exactly ``size`` bytes."""
    logs = [_log(first + i, error="x" * 16000) for i in range(size // 16100)]

    def request(pad: int) -> tuple[WriteRequest, int]:
        req = _req(*logs, _log(first + len(logs), error="y" * pad))
        return req, len(encode_payload([([c for _, c in req.entries], req.increments)]))

    _req1, one = request(1)
    want = 1 + size - record_size(0) - one  # the payload for which the record has no padding
    for pad in (want, want - 1, want + 1):
        req, payload = request(pad)
        if record_size(payload) == size:
            return req
    raise AssertionError("no such request")


def test_records_of_half_the_ring_go_through_the_log_and_two_fill_it(store: LmdbStorage) -> None:
    _no_background_applier(store)
    ring = store._shared.log.ring
    assert store._shared.tail.end % ring == 0 and store._shared.floor == store._shared.tail.end
    start = store._shared.tail.end
    store.write_batch([_exactly(ring // 2, 0)])
    store.write_batch([_exactly(ring // 2, 1000)])
    assert store._shared.tail.end == start + ring  # both in the log, the ring exactly full
    assert _pointer_position(store) == start  # nothing applied to make room
    n = store.entry_count()
    store.write_batch([_req(_log(5000))])  # the next one waits for LMDB
    assert _pointer_position(store) == start + ring and store.entry_count() == n + 1


def test_a_failure_other_than_a_flush_does_not_stop_sync(store: LmdbStorage) -> None:
    store.write_batch([_req(_log(0))])
    store._shared.failed = StorageError("storage at x failed while applying the commit log", "x")
    store._shared.durable = 0  # (as if the last write were not flushed yet)
    store.sync()
    assert store._shared.durable == store._shared.tail.end


def test_a_malformed_setting_is_named(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    LmdbStorage(path).close()
    rawlmdb.edit(path, lambda txn, db: txn.put(b"archive", b"\xff", db=db(b"meta")))
    s = LmdbStorage(path)
    try:
        with pytest.raises(CorruptStorageError) as info:
            s.get_setting("archive")
        assert str(info.value).startswith(f"storage at {path}: the setting 'archive' is malformed (")
        assert info.value.path == path
    finally:
        s.close()


def test_an_lmdb_error_reading_a_setting_is_named(store: LmdbStorage) -> None:
    store._shared.env.close()  # (LMDB refuses every transaction from here)
    with pytest.raises(StorageError) as info:
        store.get_setting("archive")
    assert str(info.value).startswith(f"storage at {store.location} failed while reading a setting: ")
    assert info.value.path == store.location


def test_a_checkpoint_is_checked_against_the_tree_of_the_current_log(store: LmdbStorage) -> None:
    store.write_batch([_req(_log(i)) for i in range(3)])
    store.clear(lambda removed, counters, epoch: _log(99, "cleared"))  # log 1 starts at seq 3, size 1
    store.add_checkpoint(1, 1, "example.com/log", "note")
    with pytest.raises(ValidationError):
        store.add_checkpoint(1, 2, "example.com/log", "note")
    with pytest.raises(ValidationError):
        store.add_checkpoint(0, 1, "example.com/log", "note")
    assert store.checkpoints() == [(1, 1, "example.com/log", "note")]


def test_a_write_moves_the_shared_head_and_clears_an_abandoned_announcement(store: LmdbStorage) -> None:
    store.write_batch([_req(_log(0))])
    log = store._shared.log
    assert log.read_head() == store._shared.tail.end
    log.write_pending(store._shared.tail.end + 4096)  # a change outside the log whose process died
    store.write_batch([_req(_log(1))])
    assert log.read_pending() == 0 and log.read_head() == store._shared.tail.end
    assert store.entry_count() == 2


def test_a_record_that_cannot_be_written_is_named_and_not_acknowledged(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    store.write_batch([_req(_log(0))])

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", pwrite)
        with pytest.raises(StorageError) as info:
            store.write_batch([_req(_log(1), inc=(b"x",))])
    assert str(info.value) == (f"storage at {store.location} failed while writing: [Errno 28] No space "
                               "left on device")
    assert info.value.path == store.location
    assert store.entry_count() == 1 and store.get_count(b"x") == 0
    assert store.write_batch([_req(_log(2), inc=(b"x",))]) == [[1]]


def _writer_lock_fails(s: LmdbStorage, m: pytest.MonkeyPatch) -> None:
    data_fd = s._shared.files.data_fd
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if fd == data_fd and op == fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")
        real(fd, op)

    m.setattr(fcntl, "flock", flock)


def _after_an_apply_error(s: LmdbStorage) -> LmdbStorage:
    s._shared.apply_error = OSError(errno.ENOSPC, "No space left on device")  # the applier's last
    return s


@pytest.mark.parametrize(("doing", "call"), [
    ("clearing", lambda s: s.clear()),
    ("storing a checkpoint", lambda s: s.add_checkpoint(0, 1, "example.com/log", "note")),
    ("storing a setting", lambda s: s.set_setting("archive", "/srv/a")),
    ("removing archived entries", lambda s: s.drop_prefix(0, 1)),
    ("writing", lambda s: s.write_batch([_req(*[_log(i, error="x" * 16000) for i in range(150)])])),
    ("writing", lambda s: _after_an_apply_error(s).write_batch([_req(_log(1))])),
    ("applying the commit log", lambda s: s.checkpoint()),
])
def test_a_change_that_cannot_take_the_writer_lock_is_named_with_what_was_done(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch, doing: str, call: Any) -> None:
    _no_background_applier(store)
    store.write_batch([_req(_log(0))])
    with monkeypatch.context() as m:
        _writer_lock_fails(store, m)
        with pytest.raises(StorageError) as info:
            call(store)
    said = f"storage at {store.location} failed while {doing}: [Errno 37] No locks available"
    assert str(info.value) == said
    assert info.value.path == store.location and store.entry_count() == 1


def test_a_full_ring_that_cannot_be_applied_is_named(store: LmdbStorage,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _no_background_applier(store)
    ring = store._shared.log.ring
    store.write_batch([_exactly(ring // 2, 0)])
    store.write_batch([_exactly(ring // 2, 1000)])
    n = store.entry_count()
    with monkeypatch.context() as m:
        _writer_lock_fails(store, m)
        with pytest.raises(StorageError) as info:
            store.write_batch([_req(_log(5000))])
    said = f"storage at {store.location} failed while writing: [Errno 37] No locks available"
    assert str(info.value) == said and store.entry_count() == n


def test_a_batch_too_large_for_the_ring_after_a_clear_continues_the_new_tree(store: LmdbStorage) -> None:
    store.write_batch([_req(_log(i)) for i in range(3)])
    store.clear()  # log 1 starts at seq 3
    store.write_batch([_req(_log(3))])
    store.write_batch([_req(*[_log(i, error="x" * 16000) for i in range(4, 154)])])  # written through
    head = store.tree_head()
    assert (head.first_seq, head.size) == (3, 151) and store.verify().entries == 151


def test_a_store_opened_before_fork_applies_nothing_for_a_change(
        store: LmdbStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_background_applier(store)
    store.write_batch([_req(_log(0))])
    before = _pointer_position(store)
    assert before < store._shared.tail.end
    with monkeypatch.context() as m:
        m.setattr(_env, "_generation", _env.generation() + 1)  # as in a forked child
        for change in (lambda: store.set_setting("archive", "/srv/a"), store.clear,
                       lambda: store.drop_prefix(0, 1)):
            with pytest.raises(ClosedError, match="opened in a parent process"):
                change()
    assert _pointer_position(store) == before  # the parent's log was not applied from the child
