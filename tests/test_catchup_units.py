"""Catching up with the commit log (``storage/lmdb/_catchup.py``): what a process makes of the
records other processes appended since it last looked.

The other process is played by a second :class:`CommitLog` on the same files, writing records
exactly as a writer does (placed, written, then the head in ``commit.state`` moved past them),
while the store is open here; real writers in child processes are in tests/test_commitlog.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from krepis import CorruptStorageError, LogStatus, StorageError, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage
from krepis.storage.lmdb._apply import APPLY_SECONDS
from krepis.storage.lmdb._catchup import _pointer, catch_up
from krepis.storage.lmdb._commitlog import BARRIER, BATCH, CommitLog, encode_payload, record_size


def _log(i: int, op: str = "op") -> TransactionLog:
    return TransactionLog(1_700_000_000_000 + i, op, f"r{i}", LogStatus.Completed)


class Other:
    """Another process's writer: records appended one after the other, from where this
    process's tail ends when it is made."""

    def __init__(self, store: Path, mine: LmdbStorage) -> None:
        self.log = CommitLog(str(store), os.open(store / "commit.log", os.O_RDWR),
                             os.open(store / "commit.state", os.O_RDWR))
        tail = mine._shared.tail
        self.end, self.link, self.next_seq = tail.end, tail.link, tail.next_seq

    def close(self) -> None:
        self.log.close()

    def append(self, logs: list[TransactionLog], names: list[bytes], *, first_seq: int | None = None,
               kind: int = BATCH, move_head: bool = True, payload: bytes | None = None) -> tuple[int, int]:
        """Append one record; (its position, its end)."""
        if payload is None:
            payload = b"" if kind == BARRIER else encode_payload([([encode_log(x) for x in logs], names)])
        size = record_size(len(payload))
        at = self.log.place(self.end, size)
        first = self.next_seq if first_seq is None else first_seq
        raw, crc = CommitLog.encode(kind, at, self.end, first, self.link, payload)
        self.log.write(at, raw)
        if move_head:
            self.log.write_head(at + size)
        self.end, self.link, self.next_seq = at + size, crc, first + len(logs)
        return at, at + size


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, LmdbStorage, Other]]:
    path = tmp_path / "s"
    mine = LmdbStorage(path)
    mine.write_batch([WriteRequest([(_log(0), encode_log(_log(0)))], [b"op"])])
    other = Other(path, mine)
    try:
        yield path, mine, other
    finally:
        other.close()
        mine.close()


def test_records_another_process_appended_are_read_in_order(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    _path, mine, other = store
    other.append([_log(1), _log(2, "other")], [b"op", b"op"])
    other.append([_log(3)], [b"op"])
    assert mine.entry_count() == 4 and mine.next_seq() == 4
    assert mine.get_count(b"op") == 4
    got = mine.get_entry(2)
    assert got is not None and (got.request_id, got.op_name, got.seq) == ("r2", "other", 2)
    assert mine.op_names() == ["op", "other"]
    tail = mine._shared.tail
    assert [r.first_seq for r in tail.records][-2:] == [1, 3]


def test_a_head_being_written_is_read_again_and_then_left_for_the_next_read(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    """The head's two copies disagree while another process writes it: nothing past the tail is
    read (the records there may not be complete), and nothing fails; the next read finds them."""
    _path, mine, other = store
    _at, end = other.append([_log(1)], [b"op"], move_head=False)
    state = other.log._state
    assert state is not None
    state[0:8] = end.to_bytes(8, "little")  # the first copy written, not yet the second
    assert mine.entry_count() == 1
    other.log.write_head(end)
    assert mine.entry_count() == 2


def test_a_record_missing_below_the_head_is_damage_named_with_its_position(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    path, mine, other = store
    position, end = other.append([_log(1)], [b"op"])
    with open(path / "commit.log", "r+b") as f:  # one byte of its payload changed
        f.seek(other.log.start + position % other.log.ring + 50)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptStorageError) as info:
        mine.entry_count()
    assert str(info.value) == (f"storage at {path}: commit.log has no valid record at position {position}, "
                               f"though other processes wrote up to {end}: the log was damaged while in use")
    assert info.value.path == str(path)


def test_a_record_that_does_not_continue_the_sequence_is_refused_naming_it(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    path, mine, other = store
    at, _end = other.append([_log(1)], [b"op"], first_seq=5)
    with pytest.raises(CorruptStorageError) as info:
        mine.entry_count()
    assert str(info.value) == (f"storage at {path}: the commit.log record at position {at} begins at seq 5, "
                               "where 1 was expected")
    assert info.value.path == str(path)


def test_a_record_whose_payload_is_not_an_entry_is_refused_naming_it(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    path, mine, other = store
    at, _end = other.append([], [], payload=encode_payload([([b'{"timestamp":1}'], [b"op"])]))
    with pytest.raises(CorruptStorageError) as info:
        mine.entry_count()
    assert str(info.value).startswith(f"storage at {path}: the commit.log record at position {at} is "
                                      "malformed (an entry does not decode: ")
    assert info.value.path == str(path)


# -- a change outside the log whose process died (``_store._outside_log``) -----------------------

_DIE = r"""
import os, sys
from krepis.storage.lmdb import LmdbStorage, _commitlog, _store

when = sys.argv[2]
announced = []
write_pending = _commitlog.CommitLog.write_pending
def announce(self, end):
    if end:
        announced.append(end)
    write_pending(self, end)
_commitlog.CommitLog.write_pending = announce
read_pointer = _store.read_log_pointer
def pointer(*args):
    if announced and when == "before-commit":
        os._exit(9)  # inside the LMDB transaction: it is never committed
    return read_pointer(*args)
_store.read_log_pointer = pointer
write = _commitlog.CommitLog.write
def write_record(self, at, raw):
    if announced and when == "after-commit":
        os._exit(9)  # committed in LMDB; neither the barrier, the head nor the announcement written
    write(self, at, raw)
_commitlog.CommitLog.write = write_record
LmdbStorage(sys.argv[1]).clear()
raise SystemExit(0 if when == "never" else "the clear returned")
"""

_WRITE = r"""
import sys
from krepis import LogStatus, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage

log = TransactionLog(1_700_000_000_999, "child", "rc", LogStatus.Completed)
store = LmdbStorage(sys.argv[1])
store.write_batch([WriteRequest([(log, encode_log(log))], [b"child"])])
store.close()
"""


def _clear_and_die(path: Path, when: str) -> None:
    died = subprocess.run([sys.executable, "-c", _DIE, str(path), when], capture_output=True, text=True)
    assert died.returncode == 9, died.stderr


def test_a_change_outside_the_log_committed_by_a_process_that_died_is_read_from_lmdb(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    """The process died after LMDB committed its clear and before it wrote the barrier record,
    moved the head or withdrew its announcement: a reader starts again from LMDB's pointer (the
    clear is seen) and leaves the announcement; the next writer moves the head there and
    withdraws it."""
    path, mine, other = store
    head = other.log.read_head()
    _clear_and_die(path, "after-commit")
    pending = other.log.read_pending()
    assert pending > head and other.log.read_head() == head
    with mine._shared.mu:
        pointer = _pointer(mine._shared)[0]
    assert pointer.position == pending  # LMDB's pointer is past the barrier never written
    assert mine.entry_count() == 0 and mine.get_count(b"op") == 0
    assert other.log.read_pending() == pending  # a reader withdraws nothing: it holds no append lock
    shared = mine._shared
    with shared.appending():
        catch_up(shared, appending=True)
    assert (other.log.read_pending(), other.log.read_head()) == (0, pending)
    mine.write_batch([WriteRequest([(_log(5), encode_log(_log(5)))], [b"op"])])
    assert mine.entry_count() == 1 and mine.get_count(b"op") == 1
    assert mine.get_entry(1) is not None and mine.get_entry(0) is None


def test_a_change_outside_the_log_its_process_died_before_committing_changed_nothing(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    path, mine, other = store
    head = other.log.read_head()
    _clear_and_die(path, "before-commit")
    pending = other.log.read_pending()
    assert pending > head
    assert mine.entry_count() == 1 and mine.get_count(b"op") == 1
    assert other.log.read_pending() == pending
    shared = mine._shared
    with shared.appending():
        catch_up(shared, appending=True)
    assert (other.log.read_pending(), other.log.read_head()) == (0, head)  # the head stays
    mine.write_batch([WriteRequest([(_log(1), encode_log(_log(1)))], [b"op"])])
    assert mine.entry_count() == 2 and mine.get_count(b"op") == 2


def test_a_reader_behind_an_outside_change_nobody_logged_starts_again_from_lmdb(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    """Another process withdrew the dead process's announcement and wrote after it: where this
    reader's tail ends there is no record (the barrier was never written), but LMDB's pointer is
    past it, so the reader starts again from there instead of calling the log damaged."""
    path, mine, other = store
    _clear_and_die(path, "after-commit")
    wrote = subprocess.run([sys.executable, "-c", _WRITE, str(path)], capture_output=True, text=True)
    assert wrote.returncode == 0, wrote.stderr
    assert other.log.read_pending() == 0
    assert mine.entry_count() == 1
    got = mine.get_entry(1)
    assert got is not None and got.request_id == "rc"
    assert mine.get_count(b"op") == 0 and mine.get_count(b"child") == 1


def test_a_record_missing_where_lmdb_has_applied_everything_is_damage(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    """LMDB's pointer at this process's tail (nothing to start again from): a record missing
    below the head is damage, named — not a loop."""
    path, mine, other = store
    mine.checkpoint()
    position, end = other.append([_log(1)], [b"op"])
    with open(path / "commit.log", "r+b") as f:
        f.seek(other.log.start + position % other.log.ring + 50)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptStorageError, match=f"no valid record at position {position}, though other "
                       f"processes wrote up to {end}"):
        mine.entry_count()


def test_a_record_of_several_requests_is_read_whole(store: tuple[Path, LmdbStorage, Other]) -> None:
    """One record holds every request of a group commit: all their entries and increments."""
    _path, mine, other = store
    logs = [_log(1), _log(2, "b"), _log(3)]
    payload = encode_payload([([encode_log(logs[0])], [b"op"]),
                              ([encode_log(x) for x in logs[1:]], [b"b", b"op", b"op"])])
    other.append(logs, [], payload=payload)
    assert mine.entry_count() == 4
    assert (mine.get_count(b"op"), mine.get_count(b"b")) == (4, 1)
    assert [mine.get_entry(i).request_id for i in range(4)] == ["r0", "r1", "r2", "r3"]  # type: ignore[union-attr]


def test_lmdb_failing_while_the_pointer_is_read_is_named(store: tuple[Path, LmdbStorage, Other]) -> None:
    path, mine, other = store
    other.log.write_pending(1 << 40)  # an announcement: the pointer is read
    shared = mine._shared

    class Failing:
        def __init__(self, env: object) -> None:
            self.env = env

        def begin(self, **_kw: object) -> object:
            raise lmdb.ReadersFullError("MDB_READERS_FULL")

    env, shared.env = shared.env, Failing(shared.env)  # type: ignore[assignment]
    try:
        with shared.mu, pytest.raises(StorageError) as info:
            catch_up(shared)
    finally:
        shared.env = env
        other.log.write_pending(0)
    assert str(info.value) == (f"storage at {path} failed while reading the commit-log pointer: "
                               "MDB_READERS_FULL")
    assert info.value.path == str(path)


def test_records_after_a_start_again_from_lmdb_are_read_in_the_same_look(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    """After starting again from LMDB's pointer (no record where the tail ended), the records
    other processes appended from there on are read at once, not left for a later look."""
    path, mine, other = store
    _clear_and_die(path, "after-commit")
    with mine._shared.mu:
        pointer, seq = _pointer(mine._shared)
    other.end, other.link, other.next_seq = pointer.position, pointer.link, seq
    other.log.write_pending(0)  # withdrawn, as the next writer does
    other.append([_log(7)], [b"op"])
    assert mine.entry_count() == 1
    got = mine.get_entry(seq)
    assert got is not None and got.request_id == "r7"


def test_records_after_a_barrier_are_read_in_the_same_look(store: tuple[Path, LmdbStorage, Other]) -> None:
    """A barrier (a change another process made in LMDB itself, here a whole clear) restarts the
    tail; the records appended after it are read in the same look."""
    path, mine, other = store
    cleared = subprocess.run([sys.executable, "-c", _DIE, str(path), "never"], capture_output=True, text=True)
    assert cleared.returncode == 0, cleared.stderr
    with mine._shared.mu:
        pointer, seq = _pointer(mine._shared)
    assert other.log.read_head() == pointer.position  # the barrier is in the log, the head past it
    other.end, other.link, other.next_seq = pointer.position, pointer.link, seq
    other.append([_log(1)], [b"op"])
    assert mine.entry_count() == 1 and mine.get_count(b"op") == 1


def test_records_of_other_processes_found_on_an_empty_tail_are_applied_in_time(
        store: tuple[Path, LmdbStorage, Other]) -> None:
    """A writing process's applier brings LMDB up to the records it found from other processes
    once the oldest has waited its time (``APPLY_SECONDS``), not only when woken: the catch-up
    starts that clock when the tail was empty."""
    _path, mine, other = store
    mine.checkpoint()  # the tail is empty; the applier thread runs (this process wrote)
    _at, end = other.append([_log(1)], [b"op"])
    assert mine.entry_count() == 2  # found, in the tail
    deadline = time.monotonic() + 20 * APPLY_SECONDS
    while time.monotonic() < deadline:
        with mine._shared.mu:
            if _pointer(mine._shared)[0].position == end:
                return
        time.sleep(APPLY_SECONDS / 10)
    raise AssertionError(f"LMDB not brought up to {end} after {20 * APPLY_SECONDS} s")
