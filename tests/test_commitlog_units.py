"""The commit log's parts on a real file (version 2, docs/storage-format.md): the superblock's two
copies, where records go in the ring, which bytes count as a record and as the next one in the
chain, what counts as evidence that the log was durable, and ``commit.state``.

The stores' use of these parts is tested in tests/test_commitlog.py, against damage in
tests/test_commitlog_damage.py and against lost writes in tests/test_powerloss.py.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import CorruptStorageError
from krepis.storage.lmdb import _commitlog
from krepis.storage.lmdb._commitlog import (
    BARRIER,
    BATCH,
    CommitLog,
    decode_payload,
    encode_payload,
    read_state,
    record_size,
    seed_link,
)

SMALL = 64 << 10
LOG_ID = bytes(range(16))


def _create(path: Path, monkeypatch: pytest.MonkeyPatch, ring: int = SMALL, position: int = 0) -> CommitLog:
    monkeypatch.setattr(_commitlog, "RING_SIZE", ring)
    path.mkdir(exist_ok=True)
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        CommitLog.create(dir_fd, str(path), LOG_ID, position)
        log = CommitLog(str(path), os.open(path / "commit.log", os.O_RDWR))
        log.reset_state(dir_fd, position)
    finally:
        os.close(dir_fd)
    return log


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CommitLog]:
    opened = _create(tmp_path / "log", monkeypatch)
    yield opened
    opened.close()


def _append(log: CommitLog, position: int, link: int, payload: bytes, *, durable: int = 0,
            first_seq: int = 0, kind: int = BATCH) -> tuple[int, int, int]:
    """Write a record as a store does: placed, then written. (where, next free position, crc)"""
    size = record_size(len(payload))
    at = log.place(position, size)
    raw, crc = CommitLog.encode(kind, at, durable, first_seq, link, payload)
    log.write(at, raw)
    return at, at + size, crc


def test_a_new_log_is_its_superblock_twice_and_nothing_else(log: CommitLog, tmp_path: Path) -> None:
    raw = (tmp_path / "log" / "commit.log").read_bytes()
    assert len(raw) == 4096 and raw[:2048] == raw[2048:4096].rstrip(b"\0").ljust(2048, b"\0")
    magic, version, log_id, start, ring = struct.unpack_from("<8sI4x16sQQ", raw)
    assert (magic, version, log_id, start, ring) == (b"KRPSCLOG", 2, LOG_ID, 4096, SMALL)
    assert struct.unpack_from("<I", raw, 48)[0] == zlib.crc32(raw[:48])
    mode = os.stat(tmp_path / "log" / "commit.log").st_mode
    assert stat.S_IMODE(mode) == 0o600 and not (tmp_path / "log" / "commit.log.new").exists()
    assert list(log.chain(0, seed_link(LOG_ID))) == []


def test_create_replaces_a_leftover_new_file_and_can_leave_the_rename_to_the_caller(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_commitlog, "RING_SIZE", SMALL)
    (tmp_path / "commit.log.new").write_bytes(b"left by a crash")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        CommitLog.create(dir_fd, str(tmp_path), LOG_ID, 0, rename=False)
    finally:
        os.close(dir_fd)
    assert not (tmp_path / "commit.log").exists()
    assert (tmp_path / "commit.log.new").read_bytes()[:8] == b"KRPSCLOG"


def test_records_chain_in_order_and_start_the_next_lap_rather_than_straddle(log: CommitLog) -> None:
    payload = b"p" * 1000
    position, link = SMALL - 1500, seed_link(LOG_ID)  # near the end of lap 0
    written = []
    for i in range(3):
        at, position, link = _append(log, position, link, payload, first_seq=i)
        written.append(at)
    assert written[0] == SMALL - 1500
    assert written[1] == SMALL  # it would not fit before the ring's end: lap 1 begins with it
    assert written[2] == SMALL + record_size(len(payload))
    got = list(log.chain(SMALL - 1500, seed_link(LOG_ID)))
    assert [r.position for r in got] == written
    assert [r.first_seq for r in got] == [0, 1, 2]
    assert got[1].link == got[0].crc and got[2].link == got[1].crc


def test_a_record_is_taken_only_where_it_says_it_is_and_after_the_record_it_names(log: CommitLog) -> None:
    link = seed_link(LOG_ID)
    at, end, crc = _append(log, 0, link, b"payload")
    assert log.read(at, link) is not None and log.read(at, None) is not None
    assert log.read(at, link ^ 1) is None  # follows another record: not the chain's next
    assert log.read(at + SMALL, link) is None  # the same bytes one lap later are not that record
    assert log.read(end, crc) is None  # nothing there yet


@pytest.mark.parametrize(("field", "offset"), [("magic", 0), ("length", 4), ("position", 8), ("durable", 16),
                                               ("first_seq", 24), ("link", 32), ("kind", 36),
                                               ("payload", 40), ("crc", 47)])
def test_any_damaged_byte_makes_it_no_record(log: CommitLog, field: str, offset: int) -> None:
    link = seed_link(LOG_ID)
    at, _end, _crc = _append(log, 0, link, b"payload")
    raw = bytearray(os.pread(log.fd, 1, log.start + at + offset))
    os.pwrite(log.fd, bytes([raw[0] ^ 0x40]), log.start + at + offset)
    assert log.read(at, link) is None, field


def test_a_record_of_an_unknown_kind_or_running_past_the_ring_is_no_record(log: CommitLog) -> None:
    link = seed_link(LOG_ID)
    raw, _crc = CommitLog.encode(7, 0, 0, 0, link, b"x")
    log.write(0, raw)
    assert log.read(0, link) is None
    head = struct.pack("<IIQQQIB3x", 0x3243524B, SMALL, 0, 0, 0, link, BATCH)  # longer than the ring
    log.write(8, head + struct.pack("<I", zlib.crc32(head)))
    assert log.read(8, link) is None


def test_a_damaged_length_is_not_read_into_memory(log: CommitLog) -> None:
    import tracemalloc

    link = seed_link(LOG_ID)
    head = struct.pack("<IIQQQIB3x", 0x3243524B, 2**32 - 1, 0, 0, 0, link, BATCH)
    log.write(0, head)
    tracemalloc.start()
    try:
        assert log.read(0, link) is None
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_payloads_round_trip_and_malformed_ones_are_refused() -> None:
    requests = [([b"a", b"bb"], [b"op"]), ([], [b"x", b"y"]), ([b"c"], [])]
    payload = encode_payload(requests)
    assert decode_payload(payload) == [(list(e), list(i)) for e, i in requests]
    for broken, reason in ((payload[:-1], "payload ends early"), (payload + b"\0", "trailing bytes"),
                           (b"\xff\xff\xff\xff", "payload ends early")):
        with pytest.raises(ValueError, match=reason):
            decode_payload(broken)


def test_evidence_of_durability_comes_from_the_marker_and_from_records_after_the_point(
        log: CommitLog) -> None:
    link = seed_link(LOG_ID)
    at0, end0, crc0 = _append(log, 0, link, b"a", durable=0)
    at1, end1, crc1 = _append(log, end0, crc0, b"b", durable=end0)
    _at2, end2, _crc2 = _append(log, end1, crc1, b"c", durable=end1)
    assert log.durable_evidence(end2) == (0, 0)  # nothing after the end, and the marker says 0
    log.write_marker(end2)
    assert log.durable_evidence(end2)[0] == end2
    log.write_marker(0)
    assert log.durable_evidence(at1) == (end1, 1)  # the record after at1 says at1…end1 was durable
    assert log.durable_evidence(at0) == (end1, 2)
    # a record of a later lap counts; the same position one lap earlier does not
    _append(log, SMALL + 4096, 12345, b"later", durable=SMALL + 4000)
    assert log.durable_evidence(end2)[0] == SMALL + 4000
    assert log.durable_evidence(2 * SMALL)[0] == 0


def test_one_valid_superblock_is_enough_and_two_that_differ_are_refused(
        log: CommitLog, tmp_path: Path) -> None:
    path = tmp_path / "log" / "commit.log"
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0xFF  # copy 0 damaged
    path.write_bytes(bytes(raw))
    assert CommitLog(str(tmp_path / "log"), os.open(path, os.O_RDWR)).log_id == LOG_ID
    other = bytearray(raw[2048:2048 + 52])
    other[20] ^= 0x01  # a different log id, with a valid checksum
    other[48:52] = struct.pack("<I", zlib.crc32(bytes(other[:48])))
    raw[0:52] = other
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStorageError, match=r"the two superblocks of commit\.log differ"):
        CommitLog(str(tmp_path / "log"), os.open(path, os.O_RDWR))


def test_a_version_1_log_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "commit.log").write_bytes(b"KRPSCLOG\x01\x00\x00\x00" + bytes(5000))
    with pytest.raises(CorruptStorageError, match=r"commit\.log is of version 1 \(krepis storage format 3\)"):
        CommitLog(str(tmp_path), os.open(tmp_path / "commit.log", os.O_RDWR))


def test_the_ring_grows_a_chunk_at_a_time_up_to_its_size(log: CommitLog, tmp_path: Path) -> None:
    path = tmp_path / "log" / "commit.log"
    _at, end, crc = _append(log, 0, seed_link(LOG_ID), b"x")
    assert path.stat().st_size == 64 << 10  # up to the chunk boundary (chunks of the file's offsets)
    _append(log, SMALL - 100, crc, b"y" * 50)  # the ring's last bytes: the file grows to its end
    assert path.stat().st_size == 4096 + SMALL and log.ring == SMALL
    assert end > 0


def test_commit_state_holds_the_head_and_the_marker(log: CommitLog, tmp_path: Path) -> None:
    log.write_head(1234)
    log.write_marker(999)
    assert log.read_head() == 1234 and log.read_marker() == 999 and log.state_belongs()
    fd = os.open(tmp_path / "log" / "commit.state", os.O_RDONLY)
    try:
        assert read_state(fd) == (LOG_ID, 1234, 999)
    finally:
        os.close(fd)
    os.pwrite(os.open(tmp_path / "log" / "commit.state", os.O_RDWR), b"\xff", 3)  # a torn head
    assert log.read_head() == -1
    os.pwrite(os.open(tmp_path / "log" / "commit.state", os.O_RDWR), b"\xff", 64 + 30)  # a damaged marker
    assert log.read_marker() == 0 and not log.state_belongs()


def test_a_barrier_record_has_no_payload(log: CommitLog) -> None:
    link = seed_link(LOG_ID)
    at, _end, _crc = _append(log, 0, link, b"", kind=BARRIER, first_seq=7)
    record = log.read(at, link)
    assert record is not None and record.kind == BARRIER and record.first_seq == 7 and record.payload == b""
