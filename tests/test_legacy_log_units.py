"""The format-3 commit log reader (``krepis.storage.lmdb._legacy_log``), on commit.log files
built byte by byte here: every refusal of the superblock with its exact text, which checkpoint
slot is taken, and which records are read after it (in order, across the ring's end, up to the
first missing or damaged one)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import CorruptStorageError
from krepis.storage.lmdb._legacy_log import RING_SIZE, LegacyLog, Slot

SUPER = struct.Struct("<8sIIQQ")
SLOT = struct.Struct("<8sQQI")
REC = struct.Struct("<IIQQ")
REC_MAGIC = 0x4C43524B
PAGE = 4096


def crc(*parts: bytes) -> bytes:
    value = 0
    for part in parts:
        value = zlib.crc32(part, value)
    return struct.pack("<I", value)


def slot_size(page: int) -> int:
    return -(-(SLOT.size + 2 * page + 4) // 4096) * 4096


def superblock(page: int = PAGE, *, version: int = 1, start: int | None = None, ring: int = RING_SIZE,
               magic: bytes = b"KRPSCLOG") -> bytes:
    raw = SUPER.pack(magic, version, page, 4096 + 2 * slot_size(page) if start is None else start, ring)
    return raw + crc(raw)


def metas(page: int = PAGE, fill: int = 7) -> bytes:
    return bytes([fill]) * (2 * page)


def slot(txnid: int, tail: int, page: int = PAGE, *, body: bytes | None = None,
         magic: bytes = b"KRPSSLOT", length: int | None = None) -> bytes:
    pages = metas(page, txnid % 251) if body is None else body
    raw = SLOT.pack(magic, txnid, tail, len(pages) if length is None else length) + pages
    return raw + crc(raw)


def record(txnid: int, position: int, payload: bytes) -> bytes:
    head = REC.pack(REC_MAGIC, len(payload), txnid, position)
    return head + payload + crc(head, payload)


class LogFile:
    """A commit.log under construction: pieces written at their offsets."""

    def __init__(self, root: Path, page: int = PAGE) -> None:
        self.root, self.page = root, page
        self.path = root / "commit.log"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.start = 4096 + 2 * slot_size(page)

    def put(self, offset: int, data: bytes) -> LogFile:
        os.pwrite(self.fd, data, offset)
        return self

    def slot(self, index: int, data: bytes) -> LogFile:
        return self.put(4096 + index * slot_size(self.page), data)

    def record(self, position: int, data: bytes) -> LogFile:
        return self.put(self.start + position % RING_SIZE, data)

    def open(self) -> LegacyLog:
        return LegacyLog(str(self.root), self.fd)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogFile]:
    made = LogFile(tmp_path)
    made.put(0, superblock())
    yield made
    os.close(made.fd)


def refused(made: LogFile) -> str:
    with pytest.raises(CorruptStorageError) as info:
        made.open()
    assert info.value.path == str(made.root)
    return str(info.value).removeprefix(f"storage at {made.root}: ")


# --- the superblock ------------------------------------------------------------------------------

def test_a_sound_superblock_is_read(log: LogFile) -> None:
    opened = log.open()
    assert (opened.path, opened.fd, opened.page_size, opened.start, opened.ring) == (
        str(log.root), log.fd, PAGE, 4096 + 2 * 12288, RING_SIZE)
    assert opened.slot_size == 12288


@pytest.mark.parametrize("size", [0, SUPER.size, SUPER.size + 3])
def test_a_truncated_superblock_is_refused(log: LogFile, size: int) -> None:
    os.ftruncate(log.fd, size)
    assert refused(log) == "commit.log is truncated (no superblock)"


@pytest.mark.parametrize("damage", ["magic", "checksum", "a byte"])
def test_a_foreign_or_damaged_superblock_is_refused(log: LogFile, damage: str) -> None:
    raw = bytearray(superblock())
    if damage == "magic":
        raw[:] = superblock(magic=b"KRPSCLOX")
    elif damage == "checksum":
        raw[-1] ^= 1
    else:
        raw[12] ^= 1  # the page size, under the checksum
    log.put(0, bytes(raw))
    assert refused(log) == "commit.log is not a krepis commit log or its superblock is damaged"


@pytest.mark.parametrize("version", [0, 2])
def test_another_version_is_refused_naming_both(log: LogFile, version: int) -> None:
    log.put(0, superblock(version=version))
    assert refused(log) == f"commit.log has version {version}; this krepis reads version 1"


@pytest.mark.parametrize("page", [256, 511, 3000, 1 << 17, 0])
def test_a_page_size_no_lmdb_store_has_is_refused(log: LogFile, page: int) -> None:
    log.put(0, superblock(page, start=0))
    assert refused(log) == f"the superblock of commit.log names a page size of {page} bytes"


@pytest.mark.parametrize("page", [512, 1 << 16])
def test_the_smallest_and_largest_page_sizes_are_read(tmp_path: Path, page: int) -> None:
    made = LogFile(tmp_path, page).put(0, superblock(page))
    opened = made.open()
    assert (opened.page_size, opened.slot_size, opened.start) == (page, slot_size(page),
                                                                 4096 + 2 * slot_size(page))


@pytest.mark.parametrize(("start", "ring"), [(4096 + 2 * 12288 + 1, RING_SIZE), (4096, RING_SIZE),
                                             (4096 + 2 * 12288, RING_SIZE // 2),
                                             (4096 + 2 * 12288, RING_SIZE + 1)])
def test_a_ring_anywhere_else_is_refused(log: LogFile, start: int, ring: int) -> None:
    log.put(0, superblock(start=start, ring=ring))
    assert refused(log) == (f"the superblock of commit.log places the ring at {start} with {ring} "
                            f"bytes; version 1 has it at {4096 + 2 * 12288} with {RING_SIZE}")


# --- checkpoint slots ----------------------------------------------------------------------------

def test_no_valid_slot_is_refused(log: LogFile) -> None:
    with pytest.raises(CorruptStorageError) as info:
        log.open().checkpoint()
    assert str(info.value) == (f"storage at {log.root}: both checkpoint slots of commit.log are "
                               "damaged; the store cannot be recovered safely. Restore it from a backup")
    assert info.value.path == str(log.root)


@pytest.mark.parametrize(("txn0", "txn1", "newest"), [(5, 6, 1), (9, 4, 0), (3, None, 0), (None, 8, 1)])
def test_the_newest_valid_slot_is_the_checkpoint(log: LogFile, txn0: int | None, txn1: int | None,
                                                 newest: int) -> None:
    for index, txnid in enumerate((txn0, txn1)):
        if txnid is not None:
            log.slot(index, slot(txnid, 100 * txnid))
    txnid = (txn0, txn1)[newest]
    assert txnid is not None
    assert log.open().checkpoint() == Slot(txnid, 100 * txnid, metas(PAGE, txnid % 251), newest)


@pytest.mark.parametrize("damage", ["magic", "length", "checksum", "meta byte", "truncated body",
                                    "truncated header", "truncated within the header"])
def test_a_damaged_slot_is_passed_over_for_the_other(log: LogFile, damage: str) -> None:
    good, bad = slot(5, 500), slot(9, 900)
    if damage == "magic":
        bad = slot(9, 900, magic=b"KRPSSLOX")
    elif damage == "length":
        bad = slot(9, 900, length=2 * PAGE - 1)
    elif damage == "checksum":
        bad = bad[:-1] + bytes([bad[-1] ^ 1])
    elif damage == "meta byte":
        bad = bad[:SLOT.size + 5] + b"\x00" + bad[SLOT.size + 6:]
    log.slot(0, good)
    if damage.startswith("truncated"):  # slot 1 is the last thing in the file, cut short
        log.slot(1, bad)
        cut = {"truncated body": len(bad) - 1, "truncated header": SLOT.size + 2,
               "truncated within the header": SLOT.size - 2}[damage]
        os.ftruncate(log.fd, 4096 + 12288 + cut)
    else:
        log.slot(1, bad)
    assert log.open().checkpoint().txnid == 5


def test_a_slot_for_a_smaller_page_size_is_read_at_its_own_places(tmp_path: Path) -> None:
    made = LogFile(tmp_path, 512).put(0, superblock(512))
    made.slot(1, slot(4, 40, 512))
    taken = made.open().checkpoint()
    assert (taken.txnid, taken.tail, len(taken.metas), taken.index) == (4, 40, 1024, 1)


# --- records ---------------------------------------------------------------------------------------

def _chain(made: LogFile, first_txn: int, position: int,
           payloads: list[bytes]) -> list[tuple[int, int, bytes, int]]:
    out = []
    for n, payload in enumerate(payloads):
        rec = record(first_txn + n, position, payload)
        made.record(position, rec)
        out.append((first_txn + n, position, payload, position + len(rec)))
        position += len(rec)
    return out


def test_records_after_the_checkpoint_are_read_in_order(log: LogFile) -> None:
    want = _chain(log, 11, 640, [b"one", b"", b"three" * 100])
    assert list(log.open().records(Slot(10, 640, b""))) == want


def test_reading_stops_at_the_first_missing_or_damaged_record(log: LogFile) -> None:
    want = _chain(log, 11, 0, [b"a", b"b", b"c"])
    third = want[2][1]
    log.record(third + REC.size, b"\xff")  # the third record's first payload byte
    assert list(log.open().records(Slot(10, 0, b""))) == want[:2]


@pytest.mark.parametrize("damage", ["magic", "txnid", "position", "checksum", "length past the file"])
def test_a_record_that_is_not_the_next_one_ends_the_reading(log: LogFile, damage: str) -> None:
    head = {"magic": REC.pack(REC_MAGIC ^ 1, 3, 11, 64), "txnid": REC.pack(REC_MAGIC, 3, 12, 64),
            "position": REC.pack(REC_MAGIC, 3, 11, 65), "checksum": REC.pack(REC_MAGIC, 3, 11, 64),
            "length past the file": REC.pack(REC_MAGIC, 1000, 11, 64)}[damage]
    tail = crc(REC.pack(REC_MAGIC, 3, 11, 64), b"xyz")
    if damage == "checksum":
        tail = bytes([tail[0] ^ 1]) + tail[1:]
    log.record(64, head + b"xyz" + tail)
    os.ftruncate(log.fd, log.start + 64 + REC.size + 3 + 4)
    assert list(log.open().records(Slot(10, 64, b""))) == []


def test_a_record_that_does_not_fit_before_the_rings_end_starts_the_next_lap(log: LogFile) -> None:
    near_end = RING_SIZE - REC.size - 10  # a record of 7 bytes or more does not fit
    first = _chain(log, 11, near_end - 200, [b"p" * (200 - REC.size - 4)])
    assert first[0][3] == near_end
    lapped = _chain(log, 12, RING_SIZE, [b"q" * 7, b"r"])  # at the start of the ring, next lap
    assert list(log.open().records(Slot(10, near_end - 200, b""))) == first + lapped


def test_a_record_ending_exactly_at_the_rings_end_is_read_there(log: LogFile) -> None:
    payload = b"s" * 6  # REC.size + 6 + 4 bytes: up to the ring's last byte
    at = RING_SIZE - REC.size - len(payload) - 4
    want = _chain(log, 11, at, [payload])
    assert want[0][3] == RING_SIZE
    assert list(log.open().records(Slot(10, at, b""))) == want


def test_a_record_crossing_the_rings_end_is_not_read(log: LogFile) -> None:
    at = RING_SIZE - REC.size - 5
    log.record(at, record(11, at, b"12345678"))  # would end 7 bytes past the ring
    assert list(log.open().records(Slot(10, at, b""))) == []


def test_nothing_after_the_checkpoint_reads_nothing_and_ends(log: LogFile) -> None:
    assert list(log.open().records(Slot(10, 4096, b""))) == []
    # a record of the same transaction at the next lap is not taken either way
    log.record(RING_SIZE, record(12, RING_SIZE, b"late"))
    assert list(log.open().records(Slot(10, 0, b""))) == []


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_a_record_whose_checksum_the_file_cuts_short_ends_the_reading(log: LogFile, cut: int) -> None:
    want = _chain(log, 11, 64, [b"whole", b"cut"])
    os.ftruncate(log.fd, log.start + want[1][3] - cut)  # the second record's checksum, cut
    assert list(log.open().records(Slot(10, 64, b""))) == want[:1]
