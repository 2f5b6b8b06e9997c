"""Stores written by the previous release (storage format 3, commit log version 1) migrate to
format 4 exactly: a store closed cleanly in place, one whose writer died through a copy that
is recovered, verified and then swapped in — the original ``data.mdb`` is never written. The
fixtures were written by the last code of format 3 (tests/fixtures/make_format3_store.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from krepis import CorruptStorageError, LogStatus, NeedsMigrationError, SovereignJournal, TransactionLog
from krepis._model import encode_log
from krepis.storage import migrate
from krepis.tlog import EMPTY_ROOT, leaf_hash, node_hash

FIXTURES = Path(__file__).parent / "fixtures"


def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _files(store: Path) -> dict[str, str]:
    return {name: hashlib.sha256((store / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(store)) if name != "lock.mdb"}


def _copy(name: str, tmp_path: Path) -> Path:
    store = tmp_path / name
    shutil.copytree(FIXTURES / name, store)
    os.chmod(store, 0o700)
    return store


def test_a_format3_store_is_refused_until_migrated_and_nothing_changes(tmp_path: Path) -> None:
    store = _copy("format3-store", tmp_path)
    before = _files(store)
    with pytest.raises(NeedsMigrationError, match=rf"format 3 \(written by a krepis whose commit log was not "
                       rf"yet the write path\).* krepis migrate --storage {store}"):
        SovereignJournal(store)
    assert _files(store) == before


def test_a_format3_store_closed_cleanly_migrates_in_place(tmp_path: Path) -> None:
    store = _copy("format3-store", tmp_path)
    result = migrate(store)
    assert (result.from_format, result.to_format, result.entries, result.counters) == (3, 4, 180, 5)
    assert not (store / ".migrate").exists()
    with SovereignJournal(store) as journal:
        report = journal.verify()
        logs = journal.query(order="append", newest_first=False)
        assert report.entries == len(logs) == 180 and journal.next_seq() == 300
        assert report.root == _mth([leaf_hash(encode_log(log)) for log in logs])
        assert logs[0].op_name == "journal_cleared" and logs[1].request_id == "räq-0"
        assert journal.entry(128).error == "boom ✗"
        assert journal.op_counts() == {"op0": 36, "op1": 36, "op2": 36, "op3": 36, "op4": 35}
        assert (journal.latest_checkpoint() or "").startswith("example.com/format3\n180\n")
        assert journal.record(TransactionLog(1, "op0", "new", LogStatus.Completed), increment="op0") == 37
    assert (store / "commit.log").read_bytes()[8:12] == struct.pack("<I", 2)  # the new log
    assert migrate(store).from_format == 4  # nothing left to do


def test_a_format3_store_whose_writer_died_is_recovered_on_a_copy(tmp_path: Path) -> None:
    """40 commits lived only in the old commit log (and data.mdb's page cache): the migration
    applies them to a copy of data.mdb, checks it, and swaps it in."""
    store = _copy("format3-crashed", tmp_path)
    result = migrate(store)
    assert (result.from_format, result.to_format, result.entries, result.counters) == (3, 4, 60, 1)
    with SovereignJournal(store) as journal:
        logs = journal.query(order="append", newest_first=False)
        assert [log.request_id for log in logs] == [f"c{i}" for i in range(60)]
        assert [log.duration_us for log in logs] == list(range(60))
        assert journal.recover_op_count("op") == 60
        assert journal.verify().root == _mth([leaf_hash(encode_log(log)) for log in logs])


def _legacy_records(log: bytes) -> list[tuple[int, int, int]]:
    """(offset, payload length, txnid) of the version-1 log's records after its newest slot."""
    page = struct.unpack_from("<I", log, 12)[0]
    slot_size = -(-(28 + 2 * page + 4) // 4096) * 4096
    start = 4096 + 2 * slot_size
    slots = []
    for index in (0, 1):
        at = 4096 + index * slot_size
        magic, txnid, tail, _length = struct.unpack_from("<8sQQI", log, at)
        if magic == b"KRPSSLOT":
            slots.append((txnid, tail))
    txnid, position = max(slots)
    out = []
    while True:
        at = start + position
        magic, length, rec_txnid, _position = struct.unpack_from("<IIQQ", log, at)
        if magic != 0x4C43524B or rec_txnid != txnid + 1:
            return out
        out.append((at, length, rec_txnid))
        txnid, position = rec_txnid, position + 24 + length + 4


def test_a_damaged_format3_log_stops_the_migration_and_changes_nothing(tmp_path: Path) -> None:
    """A record with a valid checksum but a payload the old code never wrote: the recovery on the
    copy refuses it, naming it, and the store's own files stay as they were."""
    store = _copy("format3-crashed", tmp_path)
    log = bytearray((store / "commit.log").read_bytes())
    at, length, txnid = _legacy_records(bytes(log))[5]
    payload = bytes(log[at + 24:at + 24 + length]).replace(b'"op"', b'"op" ', 1)
    head = struct.pack("<IIQQ", 0x4C43524B, len(payload), txnid, struct.unpack_from("<Q", log, at + 16)[0])
    record = head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
    log[at:at + len(record)] = record
    (store / "commit.log").write_bytes(bytes(log))
    before = _files(store)
    with pytest.raises(CorruptStorageError, match=rf"the commit\.log record of transaction {txnid} .* is "
                       r"malformed") as info:
        migrate(store)
    assert info.value.path == str(store)
    assert _files(store) == before
    assert not (store / ".migrate").exists()


@pytest.mark.parametrize(("field", "value"), [("ring", 1), ("ring", 0), ("start", 0), ("start", 2**62)],
                         ids=["ring=1", "ring=0", "start=0", "start=2^62"])
def test_a_format3_superblock_with_impossible_values_is_refused(tmp_path: Path, field: str,
                                                                value: int) -> None:
    """A superblock with a valid checksum whose ring is impossible dropped every entry (or
    divided by zero): refused, naming the log, nothing changed."""
    store = _copy("format3-crashed", tmp_path)
    log = bytearray((store / "commit.log").read_bytes())
    magic, version, page, start, ring = struct.unpack_from("<8sIIQQ", log, 0)
    if field == "ring":
        ring = value
    else:
        start = value
    body = struct.pack("<8sIIQQ", magic, version, page, start, ring)
    log[:len(body) + 4] = body + struct.pack("<I", zlib.crc32(body))
    (store / "commit.log").write_bytes(bytes(log))
    before = _files(store)
    with pytest.raises(CorruptStorageError, match=r"the superblock of commit\.log places the ring") as info:
        migrate(store)
    assert info.value.path == str(store)
    assert _files(store) == before


def test_a_migration_killed_after_the_version_changed_leaves_a_store_that_opens(tmp_path: Path) -> None:
    """A crash between the in-place commit (format 4, no log named) and the removal of the old
    log: the first open replaces the old log, and nothing is lost."""
    from krepis.storage.lmdb import _migrate3

    store = _copy("format3-store", tmp_path)
    real = os.unlink

    def crash(path: str, *args: object, **kwargs: object) -> None:
        if path == "commit.log":
            raise KeyboardInterrupt  # (the process dies here)
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    os.unlink = crash  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            migrate(store)
    finally:
        os.unlink = real
    assert (store / "commit.log").read_bytes()[8:12] == struct.pack("<I", 1)  # still the old log
    with SovereignJournal(store) as journal:
        assert journal.verify().entries == 180
    assert (store / "commit.log").read_bytes()[8:12] == struct.pack("<I", 2)
    assert _migrate3.__name__  # (the module under test)


def test_a_recovered_copy_that_does_not_verify_stops_the_migration_and_changes_nothing(
        tmp_path: Path) -> None:
    """data.mdb edited under the old log (entry 5's request id, in every page copy LMDB kept of
    it): the copy is recovered, fails its verify, and the store's own files stay as they were."""
    store = _copy("format3-crashed", tmp_path)
    data = (store / "data.mdb").read_bytes()
    assert data.count(b"\x01c5\x05\x00\x00\x00") > 0
    (store / "data.mdb").write_bytes(data.replace(b"\x01c5\x05\x00\x00\x00", b"\x01x5\x05\x00\x00\x00"))
    before = _files(store)
    with pytest.raises(CorruptStorageError) as info:
        migrate(store)
    assert str(info.value) == (
        f"storage at {store}: the store recovered from its format-3 commit log does not verify (storage at "
        f"{store}/.migrate: entry 5 has no row in the request id index); nothing was changed")
    assert info.value.path == str(store)
    assert _files(store) == before
    assert not (store / ".migrate").exists()


def test_lmdb_failing_while_the_format_is_converted_is_named_and_nothing_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one commit of an in-place conversion fails (a full map, injected): the error names
    the store; the old log stays, so the store is still format 3."""
    import lmdb

    from krepis.storage.lmdb import _migrate3

    class Full:
        def __init__(self, *_args: object) -> None:
            pass

        def pack(self) -> bytes:
            raise lmdb.MapFullError("MDB_MAP_FULL")

    store = _copy("format3-store", tmp_path)
    monkeypatch.setattr(_migrate3, "LogPointer", Full)
    with pytest.raises(CorruptStorageError) as info:
        migrate(store)
    assert str(info.value) == f"storage at {store} cannot be migrated: MDB_MAP_FULL"
    assert info.value.path == str(store)
    monkeypatch.undo()
    assert migrate(store).from_format == 3  # the conversion never committed


def test_a_checkpoint_slot_naming_another_transaction_than_its_snapshot_is_refused(tmp_path: Path) -> None:
    """The newest slot's transaction id does not match the meta pages it holds (a slot rewritten
    with a valid checksum): the copy, put back to that snapshot, is not at the transaction the
    slot names, so the migration refuses naming both, and the store's files stay as they were."""
    store = _copy("format3-crashed", tmp_path)
    log = bytearray((store / "commit.log").read_bytes())
    page = struct.unpack_from("<I", log, 12)[0]
    slot_size = ((24 + 2 * page + 4 + page - 1) // page) * page
    slots = [(struct.unpack_from("<8sQQI", log, 4096 + i * slot_size), 4096 + i * slot_size) for i in (0, 1)]
    (magic, txnid, tail, length), at = max((s for s in slots if s[0][0] == b"KRPSSLOT"),
                                           key=lambda s: s[0][1])
    body = struct.pack("<8sQQI", magic, txnid + 1, tail, length) + bytes(log[at + 28:at + 28 + length])
    log[at:at + len(body) + 4] = body + struct.pack("<I", zlib.crc32(body))
    (store / "commit.log").write_bytes(bytes(log))
    before = _files(store)
    with pytest.raises(CorruptStorageError) as info:
        migrate(store)
    assert str(info.value) == (f"storage at {store}: data.mdb is at transaction {txnid}, its commit.log "
                               f"checkpoint at {txnid + 1}")
    assert info.value.path == str(store)
    assert _files(store) == before
