"""The commit log's parts on a real file: where records go in the ring, which bytes count as a
record, erasing one, and the flusher's promise (a ticket is covered by a flush that started
after it was requested; a failed flush fails every waiter and every later write).

The stores' recovery through these parts is tested in tests/test_commitlog.py and, against lost
writes, in tests/test_powerloss.py.
"""

from __future__ import annotations

import os
import struct
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import StorageError
from krepis.storage.lmdb import _commitlog
from krepis.storage.lmdb._commitlog import CommitLog, Flusher, Slot, decode_payload, encode_payload

PAGE = 4096
SMALL_RING = 64 << 10
_HEAD = struct.Struct("<IIQQ")  # the record header of docs/storage-format.md


def _open(path: Path, ring: int | None, monkeypatch: pytest.MonkeyPatch, cls: type[CommitLog] = CommitLog,
          txnid: int = 7, tail: int = 0) -> CommitLog:
    if ring is not None:
        monkeypatch.setattr(_commitlog, "RING_SIZE", ring)
    path.mkdir(exist_ok=True)
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        CommitLog.create(dir_fd, str(path), PAGE, Slot(txnid, tail, b"m" * (2 * PAGE)))
    finally:
        os.close(dir_fd)
    return cls(str(path), os.open(path / _commitlog.LOG, os.O_RDWR))


@pytest.fixture
def small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CommitLog]:
    log = _open(tmp_path / "small", SMALL_RING, monkeypatch)
    yield log
    os.close(log.fd)


@pytest.fixture
def full_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CommitLog]:
    log = _open(tmp_path / "full", None, monkeypatch)
    yield log
    os.close(log.fd)


def _append(log: CommitLog, position: int, txnid: int, payload: bytes) -> tuple[int, int]:
    """Write a record as the adapter does: placed, then written. (where, next free position)"""
    at = log.place(position, log.record_size(len(payload)))
    log.write(at, log.record(txnid, at, payload))
    return at, at + log.record_size(len(payload))


def _crafted(txnid: int, position: int, payload: bytes, magic: int = 0x4C43524B) -> bytes:
    """A record with a valid CRC whatever its fields say."""
    head = _HEAD.pack(magic, len(payload), txnid, position)
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def test_the_layout_of_a_new_log(full_size: CommitLog) -> None:
    log = full_size
    assert (log.page_size, log.ring, log.slot_size) == (PAGE, 8 << 20, 3 * 4096)
    assert log.start == 4096 + 2 * log.slot_size
    assert os.fstat(log.fd).st_size == log.start + (1 << 20)  # the ring's first MiB is allocated
    assert log.checkpoint() == Slot(7, 0, b"m" * (2 * PAGE), 0)
    assert list(log.records(log.checkpoint())) == []


def test_records_follow_in_order_and_start_the_next_lap_rather_than_straddle(small: CommitLog) -> None:
    position, txnid = SMALL_RING - 3000, 100  # the checkpoint's tail, near the end of lap 0
    tail = position
    written = []
    for size in (1000, 1500, 1200, 900, 40000):  # the third does not fit before the ring's end
        payload = bytes([size % 251]) * size
        at, after = _append(small, position, txnid + 1 + len(written), payload)
        written.append((txnid + 1 + len(written), at, payload, after))
        position = after
    assert written[2][1] == SMALL_RING  # moved to the start of lap 1
    assert [w[1] for w in written[:2]] == [tail, tail + 1028]
    assert list(small.records(Slot(txnid, tail, b""))) == written
    # from a checkpoint inside lap 1 the records of lap 1 alone follow
    assert list(small.records(Slot(written[2][0], written[3][1], b""))) == written[3:]


def test_a_record_fits_when_it_leaves_every_record_from_the_tail_intact(small: CommitLog) -> None:
    ring, tail = SMALL_RING, 5 * SMALL_RING + 300
    assert small.fits(tail, ring, tail)  # the whole ring, exactly
    assert not small.fits(tail, ring + 1, tail)
    assert small.fits(tail + ring - 20, 20, tail)  # ends where the tail's record starts
    assert not small.fits(tail + ring - 10, 20, tail)  # would overwrite it
    assert not small.fits(tail + ring, 20, tail)
    assert small.fits(tail + 1000, 20, tail)


def test_a_record_counts_only_with_its_own_txnid_position_magic_and_crc(small: CommitLog) -> None:
    assert _append(small, 200, 5, b"payload") == (200, 235)
    assert small._read_record(200, 5) == (b"payload", 200 + 24 + 7 + 4)
    assert small._read_record(200, 6) is None  # another transaction's record
    assert small._read_record(200 + SMALL_RING, 5) is None  # the same place, one lap later
    assert list(small.records(Slot(4, 200 + SMALL_RING, b""))) == []
    os.pwrite(small.fd, _crafted(5, 200, b"payload", magic=0x4C43524C), small.start + 200)
    assert small._read_record(200, 5) is None  # not a record, though its CRC matches
    os.pwrite(small.fd, _crafted(5, 200, b"payload")[:-1] + b"\0", small.start + 200)
    assert small._read_record(200, 5) is None  # a damaged CRC


def test_a_record_that_ends_exactly_at_the_ring_end_is_read(full_size: CommitLog) -> None:
    ring = full_size.ring
    payload = b"x" * 100
    at, after = _append(full_size, ring - full_size.record_size(100), 9, payload)
    assert (at, after) == (ring - 128, ring)  # it fits: not moved to the next lap
    assert os.fstat(full_size.fd).st_size == full_size.start + ring  # the file ends with it
    assert full_size._read_record(at, 9) == (payload, ring)
    assert [r[:2] for r in full_size.records(Slot(8, at, b""))] == [(9, at)]


def test_a_record_that_straddles_the_ring_end_is_not_a_record(small: CommitLog) -> None:
    # the file goes on past the ring (its space is allocated a MiB at a time): bytes there are
    # outside the ring even when a record's CRC covers them
    assert os.fstat(small.fd).st_size > small.start + SMALL_RING + 100
    position = SMALL_RING - (24 + 20 + 4)  # a record of 20 payload bytes ends at the ring end
    os.pwrite(small.fd, _crafted(3, position, b"p" * 20), small.start + position)
    assert small._read_record(position, 3) == (b"p" * 20, SMALL_RING)
    for over in (1, 8, 40):
        os.pwrite(small.fd, _crafted(3, position, b"p" * (20 + over)), small.start + position)
        assert small._read_record(position, 3) is None, over
    position = 100  # and from lap 0's start, a length that runs past the end
    os.pwrite(small.fd, _crafted(3, position, b"q" * SMALL_RING), small.start + position)
    assert small._read_record(position, 3) is None


def test_a_damaged_length_field_is_not_read_into_memory(small: CommitLog) -> None:
    os.pwrite(small.fd, _HEAD.pack(0x4C43524B, 0xFFFFFFF0, 3, 64), small.start + 64)
    tracemalloc.start()
    try:
        assert small._read_record(64, 3) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


def test_a_record_cut_short_by_the_file_end_is_not_a_record(full_size: CommitLog) -> None:
    ring = full_size.ring
    at, _after = _append(full_size, ring - full_size.record_size(50), 4, b"y" * 50)
    for cut in (1, 4, 30, 120):  # inside the CRC, the payload, the header
        os.ftruncate(full_size.fd, full_size.start + ring - cut)
        assert full_size._read_record(at, 4) is None, cut


def test_an_erased_record_ends_the_records_and_nothing_else_is_touched(
        small: CommitLog, tmp_path: Path) -> None:
    head = os.pread(small.fd, small.start, 0)
    position = 3 * SMALL_RING + 5000  # lap 3: its offset in the ring is 5000
    written = []
    for txnid in (11, 12, 13):
        at, position = _append(small, position, txnid, b"r%d" % txnid * 300)
        written.append(at)
    small.erase(written[1])
    assert [r[:2] for r in small.records(Slot(10, written[0], b""))] == [(11, written[0])]
    assert os.pread(small.fd, small.start, 0) == head  # superblock and slots as they were
    assert small._read_record(written[2], 13) is not None
    assert CommitLog(small.path, small.fd).checkpoint() == small.checkpoint()


def test_a_checkpoint_goes_to_the_older_slot_and_never_backwards(small: CommitLog) -> None:
    metas = b"n" * (2 * PAGE)
    assert small.write_checkpoint(7, 10, metas) is False  # not newer than the current one
    assert small.write_checkpoint(8, 10, metas) is True
    assert small.checkpoint() == Slot(8, 10, metas, 1)
    assert small.write_checkpoint(9, 20, metas) is True
    assert small.checkpoint() == Slot(9, 20, metas, 0)
    assert small._read_slot(1) == Slot(8, 10, metas, 1)  # the previous one is kept


def test_a_damaged_checkpoint_slot_is_passed_over(small: CommitLog) -> None:
    metas = b"n" * (2 * PAGE)
    assert small.write_checkpoint(8, 10, metas)  # slot 1 is now the newer one
    good = os.pread(small.fd, small.slot_size, 4096 + small.slot_size)
    body = 28 + 2 * PAGE

    def resealed(raw: bytes) -> bytes:  # the CRC made to match
        return raw[:body] + struct.pack("<I", zlib.crc32(raw[:body])) + raw[body + 4:]

    damages: dict[str, bytes | int] = {
        "magic": b"KRPSSLOX" + good[8:],
        "magic, CRC matching": resealed(b"KRPSSLOX" + good[8:]),
        "meta length": good[:24] + struct.pack("<I", 2 * PAGE - 1) + good[28:],
        "crc": good[:40] + bytes([good[40] ^ 1]) + good[41:],
        "file ends in the header": 26,  # a log whose file ends inside slot 1
        "file ends in the metas": 100,
        "file ends in the CRC": body + 2,
    }
    for what, damage in damages.items():
        if isinstance(damage, bytes):
            os.pwrite(small.fd, damage, 4096 + small.slot_size)
        else:
            os.ftruncate(small.fd, 4096 + small.slot_size + damage)
        assert small._read_slot(1) is None, what
        assert small.checkpoint() == Slot(7, 0, b"m" * (2 * PAGE), 0), what  # the older one
        os.pwrite(small.fd, good, 4096 + small.slot_size)
        assert small.checkpoint() == Slot(8, 10, metas, 1)


def test_a_new_log_replaces_a_leftover_and_is_private(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "new"
    store.mkdir()
    (store / "commit.log.new").write_bytes(b"left by a crash during creation")
    old = os.umask(0o377)  # the mode does not depend on the umask
    try:
        log = _open(store, SMALL_RING, monkeypatch)
    finally:
        os.umask(old)
    try:
        assert not (store / "commit.log.new").exists()
        assert os.stat(store / "commit.log").st_mode & 0o777 == 0o600
        assert log.checkpoint().txnid == 7
    finally:
        os.close(log.fd)


def test_the_ring_space_is_allocated_a_mib_at_a_time_up_to_the_ring_end(full_size: CommitLog) -> None:
    mib = 1 << 20
    first = os.fstat(full_size.fd).st_size
    assert first == full_size.start + mib
    position = first - full_size.start - 50  # a record crossing the allocated end by 78 bytes
    _append(full_size, position, 3, b"z" * 100)
    st = os.fstat(full_size.fd)
    assert st.st_size == 2 * mib  # up to the next MiB boundary of the file
    assert st.st_blocks * 512 >= 2 * mib - 4096  # written, not a hole: a later write needs no space
    assert full_size._read_record(position, 3) == (b"z" * 100, position + 128)
    # a record ending exactly at the allocated end allocates nothing more
    _append(full_size, 2 * mib - full_size.start - 128, 6, b"u" * 100)
    assert os.fstat(full_size.fd).st_size == 2 * mib
    # another process grew the file meanwhile: this one sees it and does not zero its record
    other = CommitLog(full_size.path, full_size.fd)
    _append(other, 2 * mib, 4, b"w" * 10)
    assert os.fstat(full_size.fd).st_size == 3 * mib
    _append(full_size, 2 * mib + 100, 5, b"v" * 10)
    assert os.fstat(full_size.fd).st_size == 3 * mib
    assert full_size._read_record(2 * mib, 4) == (b"w" * 10, 2 * mib + 38)


def test_payload_errors_say_what_is_wrong() -> None:
    raw = encode_payload([([b"entry"], [b"op"])])
    with pytest.raises(ValueError, match=r"^payload ends early$"):
        decode_payload(raw[:-1])
    with pytest.raises(ValueError, match=r"^payload has trailing bytes$"):
        decode_payload(raw + b"\0")


class _GatedLog(CommitLog):
    """A real commit log whose flushes are counted and can be held at their start."""

    def __init__(self, path: str, fd: int) -> None:
        super().__init__(path, fd)
        self.flushes = 0
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate.set()

    def flush(self) -> None:
        self.flushes += 1
        self.entered.release()
        self.gate.wait()
        super().flush()


@pytest.fixture
def gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_GatedLog]:
    log = _open(tmp_path / "gated", SMALL_RING, monkeypatch, cls=_GatedLog)
    assert isinstance(log, _GatedLog)
    yield log
    log.gate.set()
    os.close(log.fd)


# Threads that wait on a flusher are daemons: a broken flusher fails the test, not the exit.


def test_a_ticket_is_covered_only_by_a_flush_that_started_after_it(gated: _GatedLog) -> None:
    flusher = Flusher(gated, "test-flusher")
    try:
        gated.gate.clear()
        first = flusher.request()
        assert gated.flushes == 1  # an idle flusher's flush has started when request() returns
        second = flusher.request()  # while the first flush is running
        assert second != first
        waited = threading.Event()
        waiter = threading.Thread(target=lambda: (flusher.wait(second), waited.set()), daemon=True)
        waiter.start()
        assert not waited.wait(0.3)  # the running flush may have missed the second's write
        gated.gate.set()
        flusher.wait(first)
        waiter.join(10)
        assert waited.is_set() and gated.flushes == 2
        for _ in range(3):  # each later write has its own flush
            flusher.wait(flusher.request())
        assert gated.flushes == 5
    finally:
        flusher.stop()


def test_wait_returns_only_when_the_flush_has_completed(gated: _GatedLog) -> None:
    flusher = Flusher(gated, "test-flusher")
    try:
        gated.gate.clear()
        ticket = flusher.request()
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (flusher.wait(ticket), done.set()), daemon=True)
        waiter.start()
        assert not done.wait(0.3)
        gated.gate.set()
        waiter.join(10)
        assert done.is_set()
    finally:
        flusher.stop()


def test_a_failed_flush_fails_its_waiters_and_every_later_request(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    log = _open(tmp_path / "failing", SMALL_RING, monkeypatch)
    flusher = Flusher(log, "test-flusher")
    os.close(log.fd)  # the flush fails for real: fdatasync on a closed descriptor
    expected = (rf"^storage at {tmp_path / 'failing'}: flushing commit\.log failed \(\[Errno 9\] Bad file "
                r"descriptor\); the last writes may not be durable, and this journal refuses further writes$")
    ticket = flusher.request()
    with pytest.raises(StorageError, match=expected) as info:
        flusher.wait(ticket)
    assert info.value.path == str(tmp_path / "failing")
    assert flusher.request() == -1  # nothing is written after a failure
    with pytest.raises(StorageError, match=expected):
        flusher.wait(-1)
    flusher.stop()


def test_a_stopped_flusher_finishes_the_flushes_asked_for_and_takes_no_more(gated: _GatedLog) -> None:
    flusher = Flusher(gated, "test-flusher")
    gated.gate.clear()
    running = flusher.request()
    pending = flusher.request()  # asked for while the first flush runs: needs a flush of its own
    stopper = threading.Thread(target=flusher.stop, daemon=True)
    stopper.start()
    gated.gate.set()
    stopper.join(10)
    assert not stopper.is_alive()
    waiter = threading.Thread(target=lambda: (flusher.wait(running), flusher.wait(pending)), daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive()  # both were flushed before the flusher ended
    assert gated.flushes == 2
    assert flusher.request() == -1
    with pytest.raises(StorageError, match=r"flushing commit\.log failed \(the log is closed\)") as info:
        flusher.wait(-1)
    assert info.value.path == gated.path
