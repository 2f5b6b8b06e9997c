"""Catching up with the commit log (``storage/lmdb/_catchup.py``): what a process makes of the
records other processes appended since it last looked.

The other process is played by a second :class:`CommitLog` on the same files, writing records
exactly as a writer does (placed, written, then the head in ``commit.state`` moved past them),
while the store is open here; real writers in child processes are in tests/test_commitlog.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import CorruptStorageError, LogStatus, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage
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
