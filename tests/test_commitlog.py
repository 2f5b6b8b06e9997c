"""The commit log (storage format 3): recovery by replay, and what recovery refuses.

A child writes with checkpoints held off and dies without closing (``os._exit``), so the
commits since the last checkpoint exist only in ``data.mdb``'s page cache and in ``commit.log``.
The next open is alone: it writes the checkpoint's meta pages back and applies the records
again. The power-loss tests (tests/test_powerloss.py) check the same against lost writes.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from krepis import CorruptStorageError, LogStatus, SovereignJournal, StorageError, TransactionLog
from krepis.storage.lmdb import _commitlog
from krepis.storage.lmdb._commitlog import CommitLog, decode_payload, encode_payload


def _write_and_die(store: Path, n: int, *, overflow_last: bool = False) -> None:
    """In a child: n committed records after one checkpoint, then exit without closing."""
    code = textwrap.dedent(f"""
        import os, struct
        import krepis.storage.lmdb._env as adapter
        adapter._CHECKPOINT_COMMITS = 10**9
        adapter._CHECKPOINT_SECONDS = 10**6
        adapter._CHECKPOINT_BACKLOG = adapter._CHECKPOINT_GROWTH = 10**9
        from krepis import SovereignJournal, TransactionLog, LogStatus, StorageError
        j = SovereignJournal({str(store)!r})
        for i in range({n}):
            j.record(TransactionLog(i, "op", f"r{{i}}", LogStatus.Completed, duration_us=i), increment="op")
        if {overflow_last}:
            storage = j._storage
            with storage._env.begin(write=True) as txn:  # a counter at its limit, outside the log
                txn.put(b"op_count:full", struct.pack("<Q", 2**64 - 1), db=storage._stats)
            storage._shared.log  # (the raw commit above is not logged: checkpoint it)
            adapter._checkpoint(storage._shared, storage.location, locked=False)
            try:
                j.record(TransactionLog(1, "op", "refused", LogStatus.Completed), increment="full")
            except StorageError:
                pass
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _slot(store: Path) -> _commitlog.Slot:
    fd = os.open(store / "commit.log", os.O_RDONLY)
    try:
        return CommitLog(str(store), fd).checkpoint()
    finally:
        os.close(fd)


def test_commits_after_the_checkpoint_are_replayed(tmp_path: Path) -> None:
    store = tmp_path / "s"
    SovereignJournal(store).close()
    _write_and_die(store, 300)
    before = _slot(store)
    with SovereignJournal(store) as journal:
        assert journal.journal_count() == journal.recover_op_count("op") == 300
        assert [e.request_id for e in journal.query(order="append", limit=1000, newest_first=False)] == \
            [f"r{i}" for i in range(300)]
        assert journal.verify().entries == 300
        journal.record(TransactionLog(1, "op", "after", LogStatus.Completed), increment="op")
    after = _slot(store)
    assert after.txnid > before.txnid  # recovery (and close) took new checkpoints


def test_a_damaged_record_ends_the_replay_there(tmp_path: Path) -> None:
    store = tmp_path / "s"
    SovereignJournal(store).close()
    _write_and_die(store, 50)
    slot = _slot(store)
    fd = os.open(store / "commit.log", os.O_RDWR)
    try:
        log = CommitLog(str(store), fd)
        records = list(log.records(slot))
        assert len(records) == 50
        _txnid, position, payload, _after = records[20]
        offset = log.start + position % log.ring + 24 + len(payload) // 2
        os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ 0xFF]), offset)  # one flipped bit field
    finally:
        os.close(fd)
    with SovereignJournal(store) as journal:  # the first 20 commits only, consistent
        assert journal.journal_count() == journal.recover_op_count("op") == 20
        assert journal.verify().entries == 20


def _first_entry(payload: bytes, entry: bytes) -> bytes:
    requests = decode_payload(payload)
    requests[0][0][0] = entry
    return encode_payload(requests)


@pytest.mark.parametrize(("rewrite", "reason"), [
    (lambda payload: payload[:-1], r"payload ends early"),
    (lambda payload: _first_entry(payload, b" " + decode_payload(payload)[0][0][0]),
     r"an entry is not in canonical form"),
    (lambda payload: _first_entry(payload, b"{}"), r"an entry does not decode: '\w+'"),
], ids=["cut", "not-canonical", "not-an-entry"])
def test_a_record_whose_payload_is_malformed_is_refused_naming_it(  # type: ignore[no-untyped-def]
        tmp_path: Path, rewrite, reason: str) -> None:
    # a record with a valid CRC but a payload krepis never writes (a bug, or a forged record)
    store = tmp_path / "s"
    SovereignJournal(store).close()
    _write_and_die(store, 5)
    fd = os.open(store / "commit.log", os.O_RDWR)
    try:
        log = CommitLog(str(store), fd)
        txnid, position, payload, _after = list(log.records(_slot(store)))[2]
        os.pwrite(fd, log.record(txnid, position, rewrite(payload)), log.start + position % log.ring)
    finally:
        os.close(fd)
    with pytest.raises(CorruptStorageError, match=rf"^storage at {store}: the commit\.log record of "
                       rf"transaction {txnid} is malformed \({reason}\)$") as info:
        SovereignJournal(store)
    assert info.value.path == str(store)


def test_a_batch_refused_when_written_is_refused_again_in_recovery(tmp_path: Path) -> None:
    store = tmp_path / "s"
    SovereignJournal(store).close()
    _write_and_die(store, 5, overflow_last=True)
    with SovereignJournal(store) as journal:
        assert journal.journal_count() == journal.recover_op_count("op") == 5
        assert journal.recover_op_count("full") == 2**64 - 1


def test_both_slots_damaged_is_refused_naming_the_store(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    _write_and_die(store, 3)
    fd = os.open(store / "commit.log", os.O_RDWR)
    try:
        log = CommitLog(str(store), fd)
        for index in (0, 1):
            os.pwrite(fd, b"\0" * 8, 4096 + index * log.slot_size)
    finally:
        os.close(fd)
    data = (store / "data.mdb").read_bytes()
    with pytest.raises(CorruptStorageError, match=rf"^storage at {store}: both checkpoint slots of "
                       r"commit\.log are damaged; the store cannot be recovered safely\. Restore it "
                       r"from a backup$") as info:
        SovereignJournal(store)
    assert info.value.path == str(store)
    assert (store / "data.mdb").read_bytes() == data


def _superblock(version: int = 1, magic: bytes = b"KRPSCLOG") -> bytes:
    head = struct.pack("<8sIIQQ", magic, version, 4096, 4096 + 2 * 12288, 8 << 20)
    return head + struct.pack("<I", zlib.crc32(head))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda raw: raw[:30], r"commit\.log is truncated \(no superblock\)"),
    (lambda raw: b"", r"commit\.log is truncated \(no superblock\)"),
    (lambda raw: _superblock(magic=b"KRPSCLOX") + raw[36:],
     r"commit\.log is not a krepis commit log or its superblock is damaged"),
    (lambda raw: raw[:20] + bytes([raw[20] ^ 1]) + raw[21:],  # the CRC no longer matches
     r"commit\.log is not a krepis commit log or its superblock is damaged"),
    (lambda raw: _superblock(version=2) + raw[36:],
     r"commit\.log has version 2; this krepis reads version 1"),
], ids=["truncated", "empty", "magic", "crc", "version"])
def test_a_damaged_superblock_is_refused_naming_the_store(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    raw = (store / "commit.log").read_bytes()
    assert raw[:36] == _superblock()  # the layout the damage is made against
    (store / "commit.log").write_bytes(damage(raw))
    data = (store / "data.mdb").read_bytes()
    with pytest.raises(CorruptStorageError, match=rf"^storage at {store}: {message}") as info:
        SovereignJournal(store)
    assert info.value.path == str(store)
    assert (store / "data.mdb").read_bytes() == data


def test_a_commit_log_that_cannot_be_created_is_an_error_naming_the_store(tmp_path: Path) -> None:
    # a store without a log (written by format 2, or restored) gets one on open; here its
    # temporary name is taken by a directory, so the log cannot be made
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    (store / "commit.log").unlink()
    (store / "commit.log.new").mkdir()
    data = (store / "data.mdb").read_bytes()
    with pytest.raises(StorageError) as info:
        SovereignJournal(store)
    assert str(info.value) == f"storage at {store}: cannot create commit.log: Is a directory"
    assert info.value.path == str(store)
    assert (store / "data.mdb").read_bytes() == data
    assert not (store / "commit.log").exists()


def test_a_data_file_older_than_the_checkpoint_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    old = (store / "data.mdb").read_bytes()
    with SovereignJournal(store) as journal:
        for i in range(10):
            journal.record(TransactionLog(i, "op", f"n{i}", LogStatus.Completed), increment="op")
    size = (store / "data.mdb").stat().st_size
    old = old.ljust(size, b"\0")  # as long as the newer file: only its age gives it away
    (store / "data.mdb").write_bytes(old)  # an older copy put in place by hand
    with pytest.raises(CorruptStorageError, match=r"older than the checkpoint of its commit\.log"):
        SovereignJournal(store)
    assert (store / "data.mdb").read_bytes() == old


def _flushes(tmp_path: Path, flush: str, then_flush: bool = False) -> dict[str, int]:
    """Flush system calls per file while a child makes 20 commits (and, with ``then_flush``,
    calls ``flush()``), traced with strace."""
    code = textwrap.dedent(f"""
        import os, sys
        import krepis.storage.lmdb._env as adapter
        adapter._CHECKPOINT_COMMITS = 10**9
        adapter._CHECKPOINT_SECONDS = 10**6
        adapter._CHECKPOINT_BACKLOG = adapter._CHECKPOINT_GROWTH = 10**9
        from krepis import SovereignJournal, TransactionLog, LogStatus
        j = SovereignJournal({str(tmp_path / (flush.replace(":", "-") + str(then_flush)))!r}, flush={flush!r})
        j.record(TransactionLog(0, "op", "warm", LogStatus.Completed), increment="op")
        os.write(2, b"<commits>")
        for i in range(20):
            j.record(TransactionLog(i, "op", f"r{{i}}", LogStatus.Completed), increment="op")
        if {then_flush}:
            j.flush()
        os.write(2, b"</commits>")
        os._exit(0)
    """)
    trace = tmp_path / f"{flush.replace(':', '-')}{then_flush}.trace"
    subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(trace), "-e",
                    "trace=fsync,fdatasync,sync_file_range,msync,syncfs,write",
                    sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    text = trace.read_text()
    inside = text[text.index("<commits>"):text.index("</commits>")]
    counts = {"commit.log": 0, "data.mdb": 0, "other": 0}
    for line in inside.splitlines():
        if any(f" {call}(" in line or line.startswith(call) for call in
               ("fsync", "fdatasync", "sync_file_range", "msync", "syncfs")):
            name = "commit.log" if "commit.log>" in line else "data.mdb" if "data.mdb>" in line else "other"
            counts[name] += 1
    return counts


@pytest.mark.skipif(not shutil.which("strace") and os.environ.get("CI") != "true",
                    reason="strace is not installed (.ci/run installs it)")
def test_a_durable_commit_is_one_flush_of_the_commit_log(tmp_path: Path) -> None:
    # Counted at the system call, so an adapter that stopped flushing (LMDB opened without
    # sync and no log, a flush turned into a no-op) fails here, not only in the power-loss tests.
    sync = _flushes(tmp_path, "sync")
    assert sync["data.mdb"] == sync["other"] == 0, sync
    assert 20 <= sync["commit.log"] <= 21, sync  # one per commit (a flush may serve two)
    assert _flushes(tmp_path, "interval:60000ms") == {"commit.log": 0, "data.mdb": 0, "other": 0}
    # flush() under an interval policy: one flush of the log makes all 20 durable
    assert _flushes(tmp_path, "interval:60000ms", then_flush=True) == \
        {"commit.log": 1, "data.mdb": 0, "other": 0}


def test_payloads_round_trip_and_malformed_ones_are_refused() -> None:
    requests = [([b'{"a":1}', b"x" * 70000], [b"op", "é".encode()]), ([], [])]
    assert decode_payload(encode_payload(requests)) == [(list(e), list(i)) for e, i in requests]
    raw = encode_payload(requests)
    for bad in (raw[:-1], raw + b"\0", struct.pack("<I", 5)):
        with pytest.raises(ValueError):
            decode_payload(bad)
