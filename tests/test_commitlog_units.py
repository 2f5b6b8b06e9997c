"""The commit log's parts on a real file (version 2, docs/storage-format.md): the superblock's two
copies, where records go in the ring, which bytes count as a record and as the next one in the
chain, what counts as evidence that the log was durable, and ``commit.state``.

The stores' use of these parts is tested in tests/test_commitlog.py, against damage in
tests/test_commitlog_damage.py and against lost writes in tests/test_powerloss.py.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import CorruptStorageError, StorageError
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


# -- the exact bytes and rules of each part (each case pins what a mutation run found unpinned) --

def _forge_superblock(path: Path, *, magic: bytes = b"KRPSCLOG", version: int = 2, start: int = 4096,
                      ring: int = SMALL, copies: tuple[int, ...] = (0, 2048)) -> Path:
    """A commit.log of one page whose superblock copies say these values, with valid CRCs."""
    body = struct.pack("<8sI4x16sQQ", magic, version, LOG_ID, start, ring)
    page = bytearray(4096)
    for at in copies:
        page[at:at + 52] = body + struct.pack("<I", zlib.crc32(body))
    path.mkdir(exist_ok=True)
    (path / "commit.log").write_bytes(bytes(page))
    return path


def _open(path: Path, state: bool = False) -> CommitLog:
    state_fd = os.open(path / "commit.state", os.O_RDWR) if state else -1
    return CommitLog(str(path), os.open(path / "commit.log", os.O_RDWR), state_fd)


def _placed(start: int, ring: int) -> str:
    return (f"the superblock of commit.log places the ring at {start} with {ring} bytes; version 2 has it "
            "at 4096, with a power of two of 65536 … 1073741824 bytes")


@pytest.mark.parametrize(("fields", "says"), [
    ({"magic": b"KRPSCLOX"}, "commit.log is not a krepis commit log"),
    ({"version": 3}, "commit.log has version 3; this krepis reads version 2"),
    ({"version": 1}, "commit.log has version 1; this krepis reads version 2"),
    ({"start": 8192}, _placed(8192, SMALL)),
    ({"ring": SMALL // 2}, _placed(4096, SMALL // 2)),
    ({"ring": 2 << 30}, _placed(4096, 2 << 30)),
    ({"ring": 3 * SMALL}, _placed(4096, 3 * SMALL)),
    ({"ring": SMALL + 8}, _placed(4096, SMALL + 8)),
], ids=["magic", "version-3", "version-1-with-a-checksum", "start", "ring-too-small", "ring-too-large",
        "ring-not-a-power-of-two", "ring-just-past-a-power-of-two"])
def test_a_superblock_with_a_valid_checksum_but_wrong_values_is_refused_naming_them(
        tmp_path: Path, fields: dict[str, object], says: str) -> None:
    path = _forge_superblock(tmp_path / "log", **fields)  # type: ignore[arg-type]
    with pytest.raises(CorruptStorageError) as info:
        _open(path)
    assert str(info.value) == f"storage at {path}: {says}"
    assert info.value.path == str(path)


@pytest.mark.parametrize("ring", [SMALL, 1 << 30], ids=["64KiB", "1GiB"])
def test_the_ring_sizes_at_both_bounds_are_accepted(tmp_path: Path, ring: int) -> None:
    log = _open(_forge_superblock(tmp_path / "log", ring=ring))
    try:
        assert (log.ring, log.start, log.log_id, log.file) == (ring, 4096, LOG_ID,
                                                               str(tmp_path / "log" / "commit.log"))
    finally:
        log.close()


def test_one_copy_alone_at_either_place_is_read(tmp_path: Path) -> None:
    for copies in ((0,), (2048,)):
        log = _open(_forge_superblock(tmp_path / "log", copies=copies))
        assert log.log_id == LOG_ID
        log.close()


@pytest.mark.parametrize(("content", "says"), [
    (b"", "commit.log is truncated (no superblock)"),
    (b"KRPSCLOG\x01\x00\x00", "commit.log is truncated (no superblock)"),
    (b"KRPSCLOG\x01\x00\x00\x00", "commit.log is of version 1 (krepis storage format 3), not 2"),
    (b"KRPSCLOG\x02\x00\x00\x00" + bytes(5000),
     "commit.log is not a krepis commit log or both copies of its superblock are damaged"),
    (b"KRPSCLOX\x01\x00\x00\x00" + bytes(5000),
     "commit.log is not a krepis commit log or both copies of its superblock are damaged"),
    (b"\x00" * 12, "commit.log is not a krepis commit log or both copies of its superblock are damaged"),
], ids=["empty", "11-bytes", "version-1-in-12-bytes", "version-2-damaged", "version-1-other-magic", "zeros"])
def test_a_log_without_a_valid_superblock_is_refused_with_the_exact_reason(
        tmp_path: Path, content: bytes, says: str) -> None:
    (tmp_path / "commit.log").write_bytes(content)
    with pytest.raises(CorruptStorageError) as info:
        _open(tmp_path)
    assert str(info.value) == f"storage at {tmp_path}: {says}"
    assert info.value.path == str(tmp_path)


def test_two_different_superblocks_are_refused_with_the_exact_message(tmp_path: Path) -> None:
    path = _forge_superblock(tmp_path / "log", copies=(0,))
    other = struct.pack("<8sI4x16sQQ", b"KRPSCLOG", 2, LOG_ID, 4096, 2 * SMALL)
    with open(path / "commit.log", "r+b") as f:
        f.seek(2048)
        f.write(other + struct.pack("<I", zlib.crc32(other)))
    with pytest.raises(CorruptStorageError) as info:
        _open(path)
    assert str(info.value) == (f"storage at {path}: the two superblocks of commit.log differ (both with a "
                               "valid checksum): the file was edited")
    assert info.value.path == str(path)


def test_the_seed_link_is_the_crc_of_its_tag_and_the_log_id() -> None:
    assert seed_link(LOG_ID) == zlib.crc32(b"KRPSLINK" + LOG_ID)  # (a format: every log's first link)


@pytest.mark.parametrize("ring", [SMALL // 2, 3 * SMALL, 2 << 30, SMALL + 8])
def test_a_log_is_never_created_with_a_ring_its_readers_refuse(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ring: int) -> None:
    monkeypatch.setattr(_commitlog, "RING_SIZE", ring)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError, match=rf"^ring size {ring}$"):
            CommitLog.create(dir_fd, str(tmp_path), LOG_ID, 0)
    finally:
        os.close(dir_fd)
    assert not (tmp_path / "commit.log").exists()


def test_a_log_with_the_largest_ring_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _create(tmp_path / "log", monkeypatch, ring=1 << 30)
    try:
        assert log.ring == 1 << 30 and (tmp_path / "log" / "commit.log").stat().st_size == 4096
    finally:
        log.close()


def test_create_makes_the_new_log_durable_then_renames_it_then_flushes_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash leaves the old log or the new one, whole: the superblock is flushed before the
    rename, and the rename is flushed before ``create`` returns (data.mdb names it next)."""
    monkeypatch.setattr(_commitlog, "RING_SIZE", SMALL)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_pwrite = os.fsync, os.rename, os.pwrite

    def name(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def fsync(fd: int) -> None:
        events.append(("fsync", name(fd)))
        real_fsync(fd)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        events.append(("pwrite", name(fd)))
        return real_pwrite(fd, data, offset)

    def rename(*args: object, **kwargs: object) -> None:
        events.append(("rename", ""))
        real_rename(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "rename", rename)
    for rename_it in (True, False):
        events.clear()
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            CommitLog.create(dir_fd, str(tmp_path), LOG_ID, 0, rename=rename_it)
        finally:
            os.close(dir_fd)
        new, directory = str(tmp_path / "commit.log.new"), str(tmp_path)
        assert events == [("pwrite", new), ("fsync", new)] + [("rename", "")] * rename_it + \
            [("fsync", directory)], events


def test_a_short_write_is_completed_and_a_write_that_makes_no_progress_is_a_full_disk(
        log: CommitLog, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    calls: list[tuple[int, int]] = []

    def short(fd: int, data: bytes, offset: int) -> int:  # at most 7 bytes a call
        calls.append((len(data), offset))
        return real(fd, bytes(data)[:7], offset)

    link = seed_link(LOG_ID)
    raw, _crc = CommitLog.encode(BATCH, 0, 0, 0, link, b"payload")
    log.write(0, b"\0" * len(raw))  # the file space exists: only the record's pwrite is short
    monkeypatch.setattr(os, "pwrite", short)
    log.write(0, raw)
    monkeypatch.setattr(os, "pwrite", real)
    assert calls[0] == (len(raw), 4096) and calls[1] == (len(raw) - 7, 4096 + 7) and len(calls) == 8
    record = log.read(0, link)
    assert record is not None and record.payload == b"payload"

    def stuck(fd: int, data: bytes, offset: int) -> int:
        return real(fd, bytes(data)[:3], offset) if offset == 4096 + 48 else 0

    monkeypatch.setattr(os, "pwrite", stuck)
    with pytest.raises(OSError) as info:
        log.write(48, raw)
    assert info.value.errno == errno.ENOSPC and info.value.strerror == os.strerror(errno.ENOSPC)


def test_decode_payload_says_exactly_what_is_wrong() -> None:
    payload = encode_payload([([b"a"], [b"op"])])
    for broken, reason in ((payload[:-1], "payload ends early"), (b"", "payload ends early"),
                           (payload + b"\0", "payload has trailing bytes")):
        with pytest.raises(ValueError) as info:
            decode_payload(broken)
        assert str(info.value) == reason
    assert decode_payload(encode_payload([])) == []
    assert encode_payload([([b"xy"], [b"n"])]) == (struct.pack("<II", 1, 1) + struct.pack("<I", 2) + b"xy"
                                                   + struct.pack("<I", 1) + struct.pack("<H", 1) + b"n")


def _state_file(path: Path, head: int = 0, durable: int = 0, log_id: bytes = LOG_ID) -> None:
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(CommitLog.create_state(dir_fd, log_id, head, durable, path=str(path)))
    finally:
        os.close(dir_fd)


def _read_state(path: Path) -> tuple[bytes, int, int] | None:
    fd = os.open(path / "commit.state", os.O_RDONLY)
    try:
        return read_state(fd)
    finally:
        os.close(fd)


def test_read_state_reads_a_state_file_down_to_its_marker_and_nothing_less(tmp_path: Path) -> None:
    _state_file(tmp_path, head=4321, durable=1234)
    assert _read_state(tmp_path) == (LOG_ID, 4321, 1234)
    raw = (tmp_path / "commit.state").read_bytes()
    assert raw[16:32] == struct.pack("<QQ", 0, 2**64 - 1)  # no change outside the log pending
    (tmp_path / "commit.state").write_bytes(raw[:100])  # the marker's last byte is the file's last
    assert _read_state(tmp_path) == (LOG_ID, 4321, 1234)
    (tmp_path / "commit.state").write_bytes(raw[:99])
    assert _read_state(tmp_path) is None
    torn = bytearray(raw)
    torn[3] ^= 1
    (tmp_path / "commit.state").write_bytes(bytes(torn))
    assert _read_state(tmp_path) == (LOG_ID, 0, 1234)  # a torn head reads as 0, the marker stands
    body = struct.pack("<8s16sQ", b"KRPSMARX", LOG_ID, 1234)  # another magic, with a valid CRC
    forged = bytearray(raw)
    forged[64:100] = body + struct.pack("<I", zlib.crc32(body))
    (tmp_path / "commit.state").write_bytes(bytes(forged))
    assert _read_state(tmp_path) is None


def test_commit_state_is_a_fresh_page_with_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    (tmp_path / "commit.state").write_bytes(b"\xff" * 8192)
    os.chmod(tmp_path / "commit.state", 0o644)
    _state_file(tmp_path, head=8, durable=8)
    assert stat.S_IMODE((tmp_path / "commit.state").stat().st_mode) == 0o600
    raw = (tmp_path / "commit.state").read_bytes()
    assert raw[:4096] == raw[:100] + bytes(3996)


@pytest.mark.parametrize("kind", ["fifo", "hard link", "symbolic link"])
def test_commit_state_that_is_not_a_plain_file_is_refused_naming_the_store(
        log: CommitLog, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "log"
    state = path / "commit.state"
    state.unlink()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x" * 4096)
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "hard link":
        os.link(target, state)
    else:
        state.symlink_to(target)
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError if kind == "symbolic link" else StorageError) as info:
            log.reset_state(dir_fd, 0)
    finally:
        os.close(dir_fd)
    if kind != "symbolic link":
        assert str(info.value) == (f"storage at {path}: commit.state is not a plain file with one link; "
                                   "refusing to use it")
        assert info.value.path == str(path)  # type: ignore[attr-defined]
    assert target.read_bytes() == b"x" * 4096


def test_without_commit_state_the_head_is_unknown_and_nothing_is_marked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _create(tmp_path / "log", monkeypatch).close()
    log = _open(tmp_path / "log")  # no state descriptor
    try:
        log.write_head(100)
        log.write_pending(100)
        log.write_marker(100)
        assert (log.read_head(), log.read_pending(), log.read_marker()) == (-1, 0, 0)
        assert not log.state_belongs()
    finally:
        log.close()


def test_a_truncated_commit_state_is_not_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _create(tmp_path / "log", monkeypatch, position=96).close()
    for size, head in ((4095, -1), (4096, 96)):
        os.truncate(tmp_path / "log" / "commit.state", size)
        log = _open(tmp_path / "log", state=True)
        try:
            assert log.read_head() == head and log.read_marker() == (0 if head < 0 else 96)
        finally:
            log.close()


def test_the_pending_change_reads_back_and_a_torn_one_reads_as_being_written(log: CommitLog,
                                                                             tmp_path: Path) -> None:
    assert log.read_pending() == 0
    log.write_pending(4104)
    assert log.read_pending() == 4104 and log.read_head() == 0
    fd = os.open(tmp_path / "log" / "commit.state", os.O_RDWR)
    try:
        os.pwrite(fd, b"\x01", 20)
    finally:
        os.close(fd)
    assert log.read_pending() == -1


def test_reset_state_puts_head_and_marker_at_the_same_place(log: CommitLog, tmp_path: Path) -> None:
    log.write_head(5)
    log.write_pending(7)
    dir_fd = os.open(tmp_path / "log", os.O_RDONLY | os.O_DIRECTORY)
    try:
        log.reset_state(dir_fd, 4096 + 8)
    finally:
        os.close(dir_fd)
    assert (log.read_head(), log.read_pending(), log.read_marker()) == (4104, 0, 4104) and log.state_belongs()


def test_a_marker_of_another_log_or_with_another_magic_does_not_belong(log: CommitLog,
                                                                        tmp_path: Path) -> None:
    path = tmp_path / "log" / "commit.state"
    log.write_marker(640)
    assert log.state_belongs() and log.read_marker() == 640
    for magic, log_id in ((b"KRPSMARK", bytes(16)), (b"KRPSMARX", LOG_ID)):
        body = struct.pack("<8s16sQ", magic, log_id, 640)
        fd = os.open(path, os.O_RDWR)
        try:
            os.pwrite(fd, body + struct.pack("<I", zlib.crc32(body)), 64)
        finally:
            os.close(fd)
        assert not log.state_belongs() and log.read_marker() == 0, (magic, log_id)


def test_the_state_descriptor_is_taken_and_closed_even_when_it_is_descriptor_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-1 is "no commit.state"; every other descriptor, 0 included, is one."""
    _create(tmp_path / "log", monkeypatch, position=24).close()
    saved = os.dup(0)
    try:
        os.dup2(os.open(tmp_path / "log" / "commit.state", os.O_RDWR), 0, inheritable=False)
        log = CommitLog(str(tmp_path / "log"), os.open(tmp_path / "log" / "commit.log", os.O_RDWR), 0)
        with pytest.raises(OSError):
            os.fstat(0)  # closed by the constructor
        try:
            assert log.read_head() == 24 and log.read_marker() == 24
        finally:
            log.close()
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_close_releases_the_log_once_even_when_it_is_descriptor_0(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _create(tmp_path / "log", monkeypatch).close()
    saved = os.dup(0)
    try:
        os.dup2(os.open(tmp_path / "log" / "commit.log", os.O_RDWR), 0, inheritable=False)
        log = CommitLog(str(tmp_path / "log"), 0)
        log.close()
        with pytest.raises(OSError):
            os.fstat(0)
        assert log.fd == -1 and log.read_head() == -1
        spare = os.open(tmp_path / "log" / "commit.log", os.O_RDONLY)  # takes the lowest free: 0
        try:
            assert spare == 0
            log.close()  # a second close closes nothing
            os.fstat(spare)
        finally:
            os.close(spare)
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_a_record_ending_exactly_at_the_ring_end_stays_in_its_lap_and_is_read_and_counted(
        log: CommitLog) -> None:
    payload = b"e" * 16
    size = record_size(len(payload))
    assert log.place(SMALL - size, size) == SMALL - size and log.place(SMALL - size + 8, size) == SMALL
    at, end, _crc = _append(log, SMALL - size, 99, payload, durable=SMALL - size)
    assert at == SMALL - size and end == SMALL
    record = log.read(at, 99)
    assert record is not None and (record.position, record.end, record.payload) == (at, SMALL, payload)
    assert log.durable_evidence(0) == (SMALL - size, 1)


def test_a_record_that_did_not_fit_is_read_at_the_start_of_the_next_lap(log: CommitLog) -> None:
    at, end, crc = _append(log, SMALL - 16, 5, b"x" * 40)
    assert at == SMALL and end == SMALL + record_size(40)
    found = log.read(SMALL - 16, 5)  # asked where the chain's previous record ended
    assert found is not None and found.position == SMALL and found.end == end and found.crc == crc
    assert log.read(SMALL, 5) is not None
    assert log.read(0, 5) is None and log.read(2 * SMALL, 5) is None  # (nothing at a lap's start)


def test_a_record_cut_short_by_the_files_end_is_none_and_no_evidence(log: CommitLog) -> None:
    link = seed_link(LOG_ID)
    raw, _crc = CommitLog.encode(BATCH, 0, 9999, 0, link, b"y" * 200)
    log.write(0, raw)
    os.ftruncate(log.fd, 4096 + 100)  # the header stays, the body and CRC are gone
    assert log.read(0, link) is None and log.durable_evidence(-1) == (0, 0)
    os.ftruncate(log.fd, 4096 + 20)  # part of the header only
    assert log.read(0, link) is None and log.durable_evidence(-1) == (0, 0)


def test_a_header_at_the_files_very_end_is_no_evidence(log: CommitLog) -> None:
    raw, _crc = CommitLog.encode(BATCH, 8, 9999, 0, 1, b"")
    log.write(0, bytes(8) + raw)
    os.ftruncate(log.fd, 4096 + 16)  # the magic and length at the file's last 8 bytes
    assert log.durable_evidence(-1) == (0, 0)


def test_a_log_with_no_ring_yet_has_no_evidence_beyond_its_marker(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log = _create(tmp_path / "log", monkeypatch)
    try:
        log.write_marker(4242)
        assert log.durable_evidence(0) == (4242, 0)
        os.ftruncate(log.fd, 100)  # only the first superblock left: the ring "starts" past the end
        assert log.durable_evidence(0) == (4242, 0)
    finally:
        log.close()


def test_a_valid_record_of_an_unknown_kind_is_no_evidence(log: CommitLog) -> None:
    raw, _crc = CommitLog.encode(3, 0, 7777, 0, 1, b"zz")
    log.write(0, raw)
    assert log.durable_evidence(-1) == (0, 0)
    raw, _crc = CommitLog.encode(BARRIER, 64, 8888, 0, 1, b"")
    log.write(64, raw)
    assert log.durable_evidence(-1) == (8888, 1)


def test_a_magic_inside_a_payload_off_the_8_byte_grid_is_not_taken_for_a_header(log: CommitLog) -> None:
    inner, _ = CommitLog.encode(BATCH, 44, 5555, 0, 1, b"")  # a whole record, 4 bytes off the grid
    at, _end, _crc = _append(log, 0, 1, inner, durable=12)
    assert at == 0 and log.durable_evidence(-1) == (12, 1)


def test_evidence_is_read_in_scan_sized_pieces_without_losing_a_header_across_two(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_commitlog, "_SCAN", 4096)  # (the ring is read 1 MiB at a time)
    log = _create(tmp_path / "log", monkeypatch)
    try:
        # headers across the end of the first piece and of a later one, one ending at a piece's end
        positions = [4096 - 8, 8192 - 40, 3 * 4096 - 16, 3 * 4096 + 64]
        for n, at in enumerate(positions):
            raw, _crc = CommitLog.encode(BATCH, at, 100 * (n + 1), n, 1, b"q" * 24)
            log.write(at, raw)
        assert log.durable_evidence(-1) == (400, 4)
        assert log.durable_evidence(4096 - 8) == (400, 3)
        assert log.durable_evidence(8192 - 40) == (400, 2)
        assert log.durable_evidence(3 * 4096) == (400, 1)
        for at in positions[3:]:  # the later pieces' headers alone
            os.pwrite(log.fd, bytes(8), 4096 + at)
        assert log.durable_evidence(-1) == (300, 3)
    finally:
        log.close()


def test_every_valid_record_past_the_point_is_counted_once(log: CommitLog) -> None:
    link = seed_link(LOG_ID)
    position = 0
    for n in range(5):
        _at, position, link = _append(log, position, link, b"r" * (n * 3), durable=n * 8)
    assert log.durable_evidence(-1) == (32, 5)
    assert log.durable_evidence(0) == (32, 4)


def _syncs(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, int, int]]) -> None:
    """Record each pwrite (with its length) and fdatasync on a descriptor, in order."""
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        events.append(("pwrite", fd, len(data)))
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        events.append(("fdatasync", fd, 0))
        real_fdatasync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)


def test_new_file_space_is_flushed_before_a_record_goes_there_and_old_space_is_not_flushed_again(
        log: CommitLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's new length is durable before any record relies on it (docs/storage-format.md:
    zero-filled, then flushed); a record in space already allocated costs no flush (a durable
    write is one flush: the caller's)."""
    events: list[tuple[str, int, int]] = []
    _syncs(monkeypatch, events)
    raw, _crc = CommitLog.encode(BATCH, 0, 0, 0, 1, b"a")
    log.write(0, raw)
    assert events == [("pwrite", log.fd, 65536 - 4096), ("fdatasync", log.fd, 0),
                      ("pwrite", log.fd, len(raw))]
    events.clear()
    last = 65536 - 4096 - len(raw)  # a record ending exactly at the allocated end
    log.write(last, CommitLog.encode(BATCH, last, 0, 0, 1, b"a")[0])
    log.write(48, CommitLog.encode(BATCH, 48, 0, 0, 1, b"a")[0])
    assert events == [("pwrite", log.fd, len(raw))] * 2
    events.clear()
    log.write(last + len(raw), raw)  # past it: the ring's end (4 KiB short of a chunk) is the limit
    assert events == [("pwrite", log.fd, SMALL + 4096 - 65536), ("fdatasync", log.fd, 0),
                      ("pwrite", log.fd, len(raw))]
    events.clear()
    log.write(SMALL - len(raw), raw)  # the ring's last record: its file space is there
    log.flush()
    assert events == [("pwrite", log.fd, len(raw)), ("fdatasync", log.fd, 0)]


def test_space_another_process_allocated_is_used_as_it_is(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Two logs on one file (two processes): the second never zero-fills space the first grew
    the file into, which may hold the first one's records."""
    first = _create(tmp_path / "log", monkeypatch)
    second = _open(tmp_path / "log")
    try:
        link = seed_link(LOG_ID)
        _at, end, crc = _append(first, 0, link, b"first")
        _append(second, end, crc, b"second")
        assert [r.payload for r in first.chain(0, link)] == [b"first", b"second"]
        assert (tmp_path / "log" / "commit.log").stat().st_size == 65536
    finally:
        first.close()
        second.close()


def test_a_deleted_or_replaced_log_refuses_writes_naming_the_store(log: CommitLog, tmp_path: Path) -> None:
    log.check_attached()
    os.replace(tmp_path / "log" / "commit.state", tmp_path / "log" / "commit.log")
    with pytest.raises(StorageError) as info:
        log.check_attached()
    path = tmp_path / "log"
    assert str(info.value) == (f"storage at {path}: commit.log was deleted or replaced while the store was "
                               "open; krepis stopped writing so that no write is silently lost. Close the "
                               "journal and check the store")
    assert info.value.path == str(path)


def test_a_write_that_progresses_a_byte_at_a_time_is_completed(log: CommitLog,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    link = seed_link(LOG_ID)
    raw, _crc = CommitLog.encode(BATCH, 0, 0, 0, link, b"slow")
    log.write(0, b"\0" * len(raw))
    first = [True]

    def trickle(fd: int, data: bytes, offset: int) -> int:  # all but 3 bytes, then one byte a call
        n = len(data) - 3 if first[0] else 1
        first[0] = False
        return real(fd, bytes(data)[:n], offset)

    monkeypatch.setattr(os, "pwrite", trickle)
    log.write(0, raw)
    monkeypatch.setattr(os, "pwrite", real)
    record = log.read(0, link)
    assert record is not None and record.payload == b"slow"


def test_create_never_writes_through_a_link_planted_where_the_new_log_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A symbolic link put at ``commit.log.new`` between its removal and its creation (a race):
    the create fails, and the file the link points at is untouched."""
    monkeypatch.setattr(_commitlog, "RING_SIZE", SMALL)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    store = tmp_path / "s"
    store.mkdir()
    real_unlink = os.unlink

    def unlink_then_plant(name: str, *, dir_fd: int | None = None) -> None:
        try:
            real_unlink(name, dir_fd=dir_fd)
        finally:
            os.symlink(victim, name, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", unlink_then_plant)
    dir_fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            CommitLog.create(dir_fd, str(store), LOG_ID, 0)
    finally:
        os.close(dir_fd)
    assert victim.read_bytes() == b"precious" and not (store / "commit.log").exists()


def test_a_record_ending_exactly_where_another_process_grew_the_file_costs_no_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _create(tmp_path / "log", monkeypatch)
    second = _open(tmp_path / "log")  # knows nothing of the file's length yet
    try:
        raw, _crc = CommitLog.encode(BATCH, 0, 0, 0, 1, b"a")
        first.write(0, raw)  # the file grows to 64 KiB
        events: list[tuple[str, int, int]] = []
        _syncs(monkeypatch, events)
        last = 65536 - 4096 - len(raw)
        second.write(last, CommitLog.encode(BATCH, last, 0, 0, 1, b"a")[0])
        assert events == [("pwrite", second.fd, len(raw))]
        assert (tmp_path / "log" / "commit.log").stat().st_size == 65536
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("payload", "size"), [(0, 48), (4, 48), (5, 56), (12, 56), (13, 64), (1000, 1048)])
def test_a_record_is_header_payload_and_crc_padded_with_zeros_to_a_multiple_of_8(payload: int,
                                                                                 size: int) -> None:
    assert record_size(payload) == size
    raw, crc = CommitLog.encode(BATCH, 0, 0, 0, 1, b"\xff" * payload)
    assert len(raw) == size and raw[40 + payload:44 + payload] == struct.pack("<I", crc)
    assert raw[44 + payload:] == bytes(size - 44 - payload)


def test_a_record_running_past_the_rings_end_is_no_evidence_even_in_a_longer_file(log: CommitLog) -> None:
    """The file never grows past the ring's end, but an edited one may: a record whose body
    would continue there is not one, as the chain's reader says too."""
    raw, _crc = CommitLog.encode(BATCH, SMALL - 48, 5000, 0, 1, b"w" * 100)
    log.write(0, b"\0")  # (the file space)
    os.pwrite(log.fd, bytes(SMALL), 4096)
    os.pwrite(log.fd, raw, 4096 + SMALL - 48)
    assert os.fstat(log.fd).st_size > 4096 + SMALL
    assert log.read(SMALL - 48, 1) is None
    assert log.durable_evidence(-1) == (0, 0)


@pytest.mark.parametrize("which", ["commit.log.new", "commit.state"])
def test_new_files_are_owner_only_from_their_first_instant_whatever_the_umask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """Created with mode 0600, not only chmodded to it: in between, another user could open a
    file created more open and keep the descriptor (the store's directory may be searchable)."""
    monkeypatch.setattr(_commitlog, "RING_SIZE", SMALL)
    seen: list[int] = []
    real = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    old = os.umask(0)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if which == "commit.log.new":
            CommitLog.create(dir_fd, str(tmp_path), LOG_ID, 0, rename=False)
        else:
            os.close(CommitLog.create_state(dir_fd, LOG_ID, 0, 0, path=str(tmp_path)))
    finally:
        os.close(dir_fd)
        os.umask(old)
    assert seen == [0o600]
    assert stat.S_IMODE((tmp_path / which).stat().st_mode) == 0o600


def test_a_lap_start_is_looked_up_in_its_own_lap_only_and_a_moved_record_must_still_link(
        log: CommitLog) -> None:
    _append(log, 2 * SMALL, 5, b"lap two")  # at the file's offset 0, as lap one's first record would be
    assert log.read(2 * SMALL, 5) is not None
    assert log.read(SMALL, 5) is None  # a lap's start is where it is: no "next lap" to try
    _at, _end, _crc = _append(log, 3 * SMALL - 16, 6, b"x" * 40)  # did not fit: moved to 3 * SMALL
    assert log.read(3 * SMALL - 16, 6) is not None
    assert log.read(3 * SMALL - 16, 7) is None  # the moved record must follow the same record


def test_a_record_whose_crc_is_cut_by_the_files_end_is_none(log: CommitLog) -> None:
    link = seed_link(LOG_ID)
    raw, _crc = CommitLog.encode(BATCH, 0, 0, 0, link, b"z" * 200)
    log.write(0, raw)
    os.ftruncate(log.fd, 4096 + 40 + 200 + 2)  # the payload whole, half the CRC
    assert log.read(0, link) is None and log.durable_evidence(-1) == (0, 0)
