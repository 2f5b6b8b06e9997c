"""What one process holds of an open LMDB store (``storage/lmdb/_state.py``): the commit-log
pointer record and its layout, the sequence and tree records read back and checked (each refusal
by its exact text, naming the store), the state a ``Shared`` starts with, the append lock (this
process's ``mu`` and the log's cross-process ``flock``, released whatever fails) and the refusal
of writes after a failure of the write path.

Real LMDB on disk throughout: the records are written with LMDB itself, and the lock is tried
from a second descriptor of the real ``commit.log``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lmdb
import pytest

from krepis import CorruptStorageError, LogStatus, StorageError, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage
from krepis.storage.lmdb._commitlog import seed_link
from krepis.storage.lmdb._state import NO_LOG, LogPointer, Shared, read_log_pointer, read_seq
from krepis.tlog._merkle import append_leaf


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[tuple[lmdb.Environment, Any]]:
    """A bare LMDB environment with a ``meta`` database, to hold records by hand."""
    env = lmdb.open(str(tmp_path / "raw"), max_dbs=4, map_size=1 << 20)
    try:
        yield env, env.open_db(b"meta")
    finally:
        env.close()


def _put(env: lmdb.Environment, db: Any, **records: bytes) -> None:
    with env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key.encode(), value, db=db)


# -- the commit-log pointer ------------------------------------------------------------------

def test_a_pointer_packs_to_its_28_byte_layout() -> None:
    log_id = bytes(range(1, 17))
    pointer = LogPointer(log_id, 0x0102030405060708, 0xA1B2C3D4)
    assert (pointer.log_id, pointer.position, pointer.link) == (log_id, 0x0102030405060708, 0xA1B2C3D4)
    assert pointer.pack() == log_id + bytes.fromhex("0807060504030201") + bytes.fromhex("d4c3b2a1")
    assert len(pointer.pack()) == 28
    assert NO_LOG == bytes(16)
    with pytest.raises(AttributeError):
        pointer.other = 1  # type: ignore[attr-defined]  # (slots: one is made per write)


def test_a_fresh_pointer_is_at_the_start_of_its_log_linked_to_the_logs_seed() -> None:
    log_id = b"L" * 16
    pointer = LogPointer.fresh(log_id)
    assert (pointer.log_id, pointer.position, pointer.link) == (log_id, 0, seed_link(log_id))
    assert pointer.link != seed_link(b"M" * 16)


def test_reading_the_pointer_gives_back_what_was_packed(meta: tuple[lmdb.Environment, Any]) -> None:
    env, db = meta
    _put(env, db, log=LogPointer(b"\x07" * 16, 2**40 + 3, 2**32 - 1).pack())
    with env.begin() as txn:
        pointer = read_log_pointer(txn, db, "/the/store")
    assert type(pointer.log_id) is bytes
    assert (pointer.log_id, pointer.position, pointer.link) == (b"\x07" * 16, 2**40 + 3, 2**32 - 1)


def test_no_pointer_record_names_no_log(meta: tuple[lmdb.Environment, Any]) -> None:
    env, db = meta
    with env.begin() as txn:
        pointer = read_log_pointer(txn, db, "/the/store")
    assert (pointer.log_id, pointer.position, pointer.link) == (NO_LOG, 0, 0)


@pytest.mark.parametrize("size", [0, 16, 27, 29, 32])
def test_a_pointer_record_of_another_size_is_refused_naming_its_size(
        meta: tuple[lmdb.Environment, Any], size: int) -> None:
    env, db = meta
    _put(env, db, log=b"\x01" * size)
    with env.begin() as txn, pytest.raises(CorruptStorageError) as info:
        read_log_pointer(txn, db, "/the/store")
    assert str(info.value) == (f"storage at /the/store: malformed commit-log pointer record ({size} bytes, "
                               "not 28)")
    assert info.value.path == "/the/store"


# -- the sequence record ---------------------------------------------------------------------

def test_reading_the_sequence(meta: tuple[lmdb.Environment, Any]) -> None:
    env, db = meta
    _put(env, db, seq=struct.pack("<Q", 2**33 + 5))
    with env.begin() as txn:
        assert read_seq(txn, db, "/the/store") == 2**33 + 5


@pytest.mark.parametrize("raw", [None, b"", b"\x01" * 7, b"\x01" * 9, b"\x01" * 16])
def test_a_missing_or_malformed_sequence_is_refused(meta: tuple[lmdb.Environment, Any],
                                                    raw: bytes | None) -> None:
    env, db = meta
    if raw is not None:
        _put(env, db, seq=raw)
    with env.begin() as txn, pytest.raises(CorruptStorageError) as info:
        read_seq(txn, db, "/the/store")
    assert str(info.value) == "storage at /the/store: malformed sequence record"
    assert info.value.path == "/the/store"


# -- the tree record -------------------------------------------------------------------------

def _frontier(n: int) -> list[bytes]:
    frontier: list[bytes] = []
    for i in range(n):
        append_leaf(frontier, i, sha256(b"leaf %d" % i).digest(), None)
    return frontier


def _tree(first_seq: int, epoch: int, frontier: list[bytes]) -> bytes:
    return struct.pack("<QQ", first_seq, epoch) + b"".join(frontier)


def _read_tree(env: lmdb.Environment, db: Any) -> tuple[int, int, int, list[bytes]]:
    holder = SimpleNamespace(meta=db, path="/the/store")
    with env.begin() as txn:
        return Shared.read_tree(holder, txn)  # type: ignore[arg-type]


@pytest.mark.parametrize(("first_seq", "seq"), [(0, 0), (5, 5), (0, 1), (0, 3), (10, 17), (3, 11)])
def test_the_tree_record_is_read_with_its_frontier(meta: tuple[lmdb.Environment, Any], first_seq: int,
                                                   seq: int) -> None:
    env, db = meta
    frontier = _frontier(seq - first_seq)
    assert len(frontier) == (seq - first_seq).bit_count()
    _put(env, db, seq=struct.pack("<Q", seq), tree=_tree(first_seq, 9, frontier))
    assert _read_tree(env, db) == (seq, first_seq, 9, frontier)


def test_the_tree_is_read_after_the_sequence(meta: tuple[lmdb.Environment, Any]) -> None:
    env, db = meta
    _put(env, db, tree=_tree(0, 0, []))
    with pytest.raises(CorruptStorageError, match=r"^storage at /the/store: malformed sequence record$"):
        _read_tree(env, db)


@pytest.mark.parametrize("raw", [None, b"", b"\x00" * 15, b"\x00" * 17, b"\x00" * 47, b"\x00" * 49,
                                 b"\x00" * 64])
def test_a_missing_or_malformed_tree_record_is_refused(meta: tuple[lmdb.Environment, Any],
                                                       raw: bytes | None) -> None:
    env, db = meta
    _put(env, db, seq=struct.pack("<Q", 1))
    if raw is not None:
        _put(env, db, tree=raw)
    with pytest.raises(CorruptStorageError) as info:
        _read_tree(env, db)
    assert str(info.value) == "storage at /the/store: malformed sequence or tree record"
    assert info.value.path == "/the/store"


@pytest.mark.parametrize(("first_seq", "seq", "subtrees"), [
    (0, 3, 1), (0, 3, 3), (0, 0, 1), (0, 4, 0), (0, 4, 2),
    (5, 4, 1),  # the sequence before the tree's first seq: one subtree would match -1's one bit
    (5, 2, 2),  # -3 has two bits
    (2, 1, 0),
])
def test_a_frontier_that_does_not_match_the_sequence_is_refused(
        meta: tuple[lmdb.Environment, Any], first_seq: int, seq: int, subtrees: int) -> None:
    env, db = meta
    _put(env, db, seq=struct.pack("<Q", seq), tree=_tree(first_seq, 0, [b"\x11" * 32] * subtrees))
    with pytest.raises(CorruptStorageError) as info:
        _read_tree(env, db)
    assert str(info.value) == (f"storage at /the/store: the Merkle tree record ({subtrees} subtrees) does "
                               f"not match the sequence ({seq - first_seq} entries since seq {first_seq})")
    assert info.value.path == "/the/store"


def _log(i: int) -> TransactionLog:
    return TransactionLog(1_700_000_000_000 + i, "op", f"r{i}", LogStatus.Completed)


def test_a_stores_tree_record_is_read_through_its_shared_state(tmp_path: Path) -> None:
    store = LmdbStorage(tmp_path / "s")
    try:
        logs = [_log(i) for i in range(5)]
        store.write_batch([WriteRequest([(x, encode_log(x)) for x in logs], [b"op"])])
        shared = store._shared
        assert shared.meta is shared.dbs[b"meta"]
        leaves = [sha256(b"\x00" + encode_log(x)).digest() for x in logs]
        with shared.writer_lock():
            from krepis.storage.lmdb._apply import apply_tail

            apply_tail(shared)
        with shared.env.begin() as txn:
            seq, first_seq, epoch, frontier = shared.read_tree(txn)
        expected: list[bytes] = []
        for i, leaf in enumerate(leaves):
            append_leaf(expected, i, leaf, None)
        assert (seq, first_seq, epoch, frontier) == (5, 0, 0, expected)
    finally:
        store.close()


# -- the state one process holds ---------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStorage]:
    store = LmdbStorage(tmp_path / "s")
    try:
        yield store
    finally:
        store.close()


def test_a_new_shared_state_starts_at_the_pointer_with_nothing_pending(store: LmdbStorage) -> None:
    opened = store._shared
    pointer = LogPointer(b"P" * 16, 4096, 1234)
    shared = Shared(opened.env, opened.dbs, ("dev", "ino"), opened.files, opened.log, pointer, 77)
    assert shared.files is opened.files and shared.env is opened.env and shared.dbs is opened.dbs
    assert shared.meta is opened.dbs[b"meta"] and shared.log is opened.log
    assert shared.key == ("dev", "ino") and shared.path == opened.files.path == opened.path
    assert shared.refs == 0
    assert shared.op_ids == {} and shared.op_names == {}
    assert shared.op_ids is not shared.op_names
    tail = shared.tail
    assert (tail.base, tail.end, tail.link, tail.next_seq, tail.records) == (4096, 4096, 1234, 77, [])
    assert shared.floor == 4096 and shared.durable == 4096
    assert shared.failed is None and shared.apply_error is None
    assert shared.closing is False and shared.wrote is False and shared.flushing is False
    assert shared.applier is None and shared.first_unapplied == 0.0
    assert not shared.wake.is_set()
    assert shared.mu.acquire(blocking=False)  # a lock of its own, free
    assert not shared.mu.acquire(blocking=False)  # not reentrant
    shared.mu.release()
    assert opened.mu is not shared.mu and opened.flush_cv is not shared.flush_cv
    with shared.flush_cv:
        assert not shared.flush_cv.wait(0)  # a condition, free, that nobody notifies


def test_a_store_refuses_writes_after_a_failure_of_its_write_path_naming_it(store: LmdbStorage) -> None:
    shared = store._shared
    shared.refuse_if_failed()  # nothing failed: nothing said
    shared.failed = OSError(errno.EIO, "Input/output error")
    try:
        with pytest.raises(StorageError) as info:
            shared.refuse_if_failed()
        assert str(info.value) == (f"storage at {shared.path} refuses writes after an earlier failure of its "
                                   "write path ([Errno 5] Input/output error); close and reopen it")
        assert info.value.path == shared.path
        with pytest.raises(StorageError, match="refuses writes after an earlier failure"):
            store.write_batch([WriteRequest([(_log(0), encode_log(_log(0)))], [])])
    finally:
        shared.failed = None


# -- the append lock -------------------------------------------------------------------------

def _other_can_lock(path: str, how: int) -> bool:
    """Whether another open file description of ``commit.log`` gets the flock ``how`` now."""
    fd = os.open(os.path.join(path, "commit.log"), os.O_RDONLY)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_appending_holds_this_processs_lock_and_the_logs_exclusive_flock(store: LmdbStorage) -> None:
    shared = store._shared
    assert _other_can_lock(shared.path, fcntl.LOCK_SH)
    with shared.appending():
        assert shared.mu.locked()
        assert not _other_can_lock(shared.path, fcntl.LOCK_SH)  # exclusive: not even shared
        assert not _other_can_lock(shared.path, fcntl.LOCK_EX)
    assert not shared.mu.locked()
    assert _other_can_lock(shared.path, fcntl.LOCK_EX)


def test_appending_waits_for_another_process_holding_the_log(store: LmdbStorage) -> None:
    shared = store._shared
    fd = os.open(os.path.join(shared.path, "commit.log"), os.O_RDONLY)
    entered = threading.Event()

    def append() -> None:
        with shared.appending():
            entered.set()

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        thread = threading.Thread(target=append)
        thread.start()
        assert not entered.wait(0.2)  # (held off: the other's lock is not released)
        fcntl.flock(fd, fcntl.LOCK_UN)
        thread.join(10)
        assert entered.is_set() and not shared.mu.locked()
    finally:
        os.close(fd)


def test_a_failed_flock_releases_this_processs_lock(store: LmdbStorage,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    shared = store._shared
    real = fcntl.flock

    def failing(fd: int, how: int) -> None:
        if how == fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")
        real(fd, how)

    monkeypatch.setattr(fcntl, "flock", failing)
    with pytest.raises(OSError) as info:
        with shared.appending():
            pytest.fail("entered without the log's lock")
    assert info.value.errno == errno.ENOLCK
    assert not shared.mu.locked()
    monkeypatch.undo()
    with shared.appending():  # both locks free again
        assert shared.mu.locked()


def test_a_failed_unlock_still_releases_this_processs_lock(store: LmdbStorage,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shared = store._shared
    real = fcntl.flock
    calls: list[int] = []

    def failing(fd: int, how: int) -> None:
        calls.append(how)
        if how == fcntl.LOCK_UN:
            real(fd, how)
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd, how)

    monkeypatch.setattr(fcntl, "flock", failing)
    with pytest.raises(OSError) as info:
        with shared.appending():
            pass
    assert info.value.errno == errno.EBADF
    assert calls == [fcntl.LOCK_EX, fcntl.LOCK_UN]
    assert not shared.mu.locked()


def test_an_error_inside_appending_releases_both_locks(store: LmdbStorage) -> None:
    shared = store._shared
    with pytest.raises(RuntimeError):
        with shared.appending():
            raise RuntimeError("inside")
    assert not shared.mu.locked()
    assert _other_can_lock(shared.path, fcntl.LOCK_EX)
