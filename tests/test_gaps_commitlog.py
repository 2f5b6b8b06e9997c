"""Checks of the commit log (storage format 4, docs/storage-format.md "The commit log") that the
rest of the suite let through when they were removed one at a time (see each docstring for the
bug it kills). Stores are changed through the public API, the storage port and raw file edits;
a forged record is laid out with the log's own encoder, as tests/test_commitlog.py does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest, open_storage
from krepis.storage.lmdb import _commitlog
from krepis.storage.lmdb._commitlog import BATCH, CommitLog, encode_payload, record_size, seed_link

from stracekit import joined

_T0 = 1_700_000_000_000


def _log_end(store: Path) -> tuple[int, int]:
    """Where the log's chain ends (the position of the next record) and the CRC of its last
    record (the next record's link), read as another program would: from the log's first record
    (position 0, linked to the log's seed; the store is new, its ring never lapped)."""
    fd = os.open(store / "commit.log", os.O_RDONLY)
    try:
        log = CommitLog(str(store), fd)
        position, link = 0, seed_link(log.log_id)
        for record in log.chain(position, link):
            position, link = record.end, record.crc
    finally:
        os.close(fd)
    return position, link


def _append_forged(store: Path, first_seq: int, link: int | None = None, request_id: str = "forged") -> str:
    """Append, as another process would, a record of one entry whose position and CRC are right;
    its link is ``link`` (default: the right one) and it says it begins at ``first_seq``. The
    head in commit.state moves past it. Returns the entry's request id."""
    position, right_link = _log_end(store)
    entry = TransactionLog(_T0 + 99, "op", request_id, LogStatus.Completed)
    payload = encode_payload([([encode_log(entry)], [b"op"])])
    log_fd = os.open(store / "commit.log", os.O_RDWR)
    state_fd = os.open(store / "commit.state", os.O_RDWR)
    log = CommitLog(str(store), log_fd, state_fd)
    try:
        assert log.read_head() == position  # nothing else was written meanwhile
        raw, _crc = CommitLog.encode(BATCH, position, position, first_seq,
                                     right_link if link is None else link, payload)
        assert log.place(position, record_size(len(payload))) == position
        log.write(position, raw)
        log.write_head(position + len(raw))
    finally:
        log.close()
    return entry.request_id


def _three(journal: SovereignJournal) -> None:
    for i in range(3):
        journal.record(TransactionLog(_T0 + i, "op", f"r{i}", LogStatus.Completed), increment="op")


def test_a_record_another_process_appended_must_begin_at_the_next_seq(tmp_path: Path) -> None:
    """Kills: catching up with other processes' records without checking that each begins at
    the sequence number the tail expects (storage/lmdb/_catchup.py ``catch_up``,
    ``record.first_seq != tail.next_seq``). The record is whole and in the chain — its entry would
    be served under a sequence number already taken."""
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        _three(journal)
        _append_forged(store, first_seq=7)
        with pytest.raises(CorruptStorageError, match=r"commit\.log record at position \d+ begins at seq 7, "
                                                      r"where 3 was expected"):
            journal.query()
        with pytest.raises(CorruptStorageError, match="begins at seq 7"):
            journal.record(TransactionLog(_T0 + 5, "op", "r5", LogStatus.Completed), increment="op")


def test_a_record_another_process_appended_must_follow_the_record_before_it(tmp_path: Path) -> None:
    """Kills: catching up without checking a record's link — the CRC of the record before it
    (storage/lmdb/_catchup.py ``catch_up``: ``log.read(tail.end, tail.link)`` made
    ``log.read(tail.end, None)``). A record at the right place, whole, of the right seq, but not
    of this chain, is damage while the store is in use: refused, not served."""
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        _three(journal)
        _position, link = _log_end(store)
        _append_forged(store, first_seq=3, link=link ^ 1)
        with pytest.raises(CorruptStorageError, match=r"commit\.log has no valid record at position \d+, "
                                                      r"though other processes wrote up to \d+"):
            journal.query()


def test_recovery_refuses_a_barrier_before_it_applies_any_record(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills: recovery not looking for a barrier (a change made outside the log) among the records
    it is about to apply (storage/lmdb/_recovery.py ``recover``). Applying stops at the barrier
    anyway — but recovery applies in transactions of 65,536 entries, so with more records than
    that before the barrier, the first transaction would be committed before the refusal:
    data.mdb changed, though the open is refused "before anything is written"."""
    monkeypatch.setattr(_commitlog, "RING_SIZE", 16 << 20)  # (the log says its ring size itself)
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        _three(journal)
    old = (store / "data.mdb").read_bytes()
    storage = open_storage(store)
    try:
        n = 70_000
        for start in range(3, n, 8192):
            logs = [TransactionLog(_T0 + i, "op", f"r{i}", LogStatus.Completed)
                    for i in range(start, min(n, start + 8192))]
            storage.write_batch([WriteRequest([(x, encode_log(x)) for x in logs], [])])
        storage.clear()
    finally:
        storage.close()
    (store / "data.mdb").write_bytes(old)
    with pytest.raises(CorruptStorageError, match=r"a change made outside the log \(a clear, an archive or a "
                                                  r"checkpoint\) that data\.mdb does not have"):
        SovereignJournal(store)
    assert (store / "data.mdb").read_bytes() == old


# -- flushes, counted at the system call (strace -f -y, in a child) ----------------------------

_SYNCS = ("fsync", "fdatasync")
_WRITES = ("write", "pwrite64", "writev", "pwritev", "pwritev2")
_RENAMES = ("rename", "renameat", "renameat2")
#: `PID call(FD<path>, rest` (strace -f -y)
_CALL = re.compile(r"^(?:\d+\s+)?(\w+)\((-?\d+|AT_FDCWD)<([^>]*)>(.*)$")


def _traced(tmp_path: Path, code: str) -> list[tuple[str, str, str]]:
    """(call, path of its first descriptor, the rest of the line) of every flush, write and
    rename ``code`` makes, run in a child under strace."""
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(trace), "-e",
                    "trace=" + ",".join(_SYNCS + _WRITES + _RENAMES), sys.executable, "-c", code],
                   check=True, timeout=120, capture_output=True)
    events = []
    for line in joined(trace.read_text(errors="replace")):
        found = _CALL.match(line)
        if found:
            events.append((found.group(1), found.group(3), found.group(4)))
    return events


@pytest.mark.usefixtures("strace")
def test_a_new_commit_log_is_flushed_before_data_mdb_names_it_and_before_its_rename(tmp_path: Path) -> None:
    """Kills: the new log's superblock written without its flush (storage/lmdb/_commitlog.py
    ``CommitLog.create``: the ``os.fsync`` after the ``pwrite``). ``data.mdb`` then names a log
    whose superblock a power cut may lose: the store no longer opens (*truncated, no
    superblock*). The superblock must be durable before LMDB's commit that names the log and
    before the rename that puts it in place."""
    store = tmp_path / "s"
    events = _traced(tmp_path, "from krepis import SovereignJournal; "
                               f"SovereignJournal({str(store)!r}).close()")
    new, data = f"{store}/commit.log.new", f"{store}/data.mdb"
    written = max(i for i, (call, path, _) in enumerate(events) if call in _WRITES and path == new)
    renamed = next(i for i, (call, path, rest) in enumerate(events)
                   if call in _RENAMES and path == str(store) and '"commit.log.new"' in rest)
    named = next(i for i, (call, path, _) in enumerate(events)
                 if i > written and call in _WRITES and path == data)  # LMDB's commit naming the log
    flushed = [i for i, (call, path, _) in enumerate(events) if call in _SYNCS and path == new]
    assert any(written < i < min(named, renamed) for i in flushed), \
        "the new commit.log was not flushed before data.mdb named it and before its rename"
    assert any(call in _SYNCS and path == str(store) for call, path, _ in events[renamed + 1:])
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == 0


@pytest.mark.usefixtures("strace")
def test_the_log_file_grows_zero_filled_then_flushed_before_a_record_is_written_there(tmp_path: Path) -> None:
    """Kills: the ring's new file space written without its flush (storage/lmdb/_commitlog.py
    ``CommitLog.write``: the ``os.fdatasync`` after the zero fill). docs/storage-format.md: "The
    file grows (zero-filled, then flushed) 64 KiB at a time": the new length is durable before
    any record relies on it. Under ``interval`` no write flushes, so each flush seen between a
    growth and the next record is the growth's own."""
    store = tmp_path / "s"
    code = ("from krepis import SovereignJournal, TransactionLog, LogStatus\n"
            f"with SovereignJournal({str(store)!r}, flush='interval:3600000ms') as j:\n"
            "    for i in range(300):\n"
            "        j.log_transaction(TransactionLog(i, 'op', f'r{i}', LogStatus.Failed,"
            " error='x' * 1000))\n")
    events = [(call, rest) for call, path, rest in _traced(tmp_path, code) if path == f"{store}/commit.log"]
    zero_filled = ', "\\0\\0\\0\\0'  # (strace shows bytes as C escapes)
    growths = [i for i, (call, rest) in enumerate(events) if call in _WRITES and rest.startswith(zero_filled)]
    assert len(growths) >= 4  # 300 KiB of records: the first 64 KiB chunk and several more
    for i in growths:
        after = [call for call, _rest in events[i + 1:]]
        assert any(call in _SYNCS for call in after), "a growth of commit.log never flushed"
        first_sync = next(n for n, call in enumerate(after) if call in _SYNCS)
        assert not any(call in _WRITES for call in after[:first_sync]), \
            "a record was written into new file space before the growth was flushed"


def test_a_record_whose_crc_fails_is_no_evidence_that_the_log_was_durable(tmp_path: Path) -> None:
    """Kills: recovery's search for evidence of durability counting records whose CRC fails
    (storage/lmdb/_commitlog.py ``CommitLog.durable_evidence`` without its CRC comparison).
    docs/storage-format.md: the *durable* field of every **valid** record after the chain's end
    says how far the log was durable. A record beyond the end whose header is whole but whose
    checksum fails (torn, or damaged) proves nothing: the end is a torn tail, the store opens
    with every entry the chain holds."""
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        _three(journal)
    end, link = _log_end(store)
    entry = TransactionLog(_T0 + 99, "op", "torn", LogStatus.Completed)
    payload = encode_payload([([encode_log(entry)], [b"op"])])
    at = end + 4096  # not where the chain goes on: no valid record at its end
    raw, _crc = CommitLog.encode(BATCH, at, at + 4096, 9, link, payload)  # "durable up to past its end"
    torn = raw[:-8] + bytes(8)  # the tail of its body and its CRC never reached the file
    log_fd = os.open(store / "commit.log", os.O_RDWR)
    try:
        log = CommitLog(str(store), log_fd)
        log.write(at, torn)
        assert log.read(at, None) is None  # (not a valid record)
    finally:
        os.close(log_fd)
    with SovereignJournal(store) as journal:
        assert [x.request_id for x in journal.query(order="append", newest_first=False)] == ["r0", "r1", "r2"]
        journal.verify()


# -- the ring's space is reused only once LMDB holds what was in it -----------------------------

_FAILED_APPLY = textwrap.dedent("""
    import os, sys, threading
    from krepis import LogStatus, SovereignJournal, StorageError, TransactionLog
    from krepis.storage.lmdb import _apply, _commitlog, _store
    _commitlog.RING_SIZE = 64 << 10  # a small ring (the log states its size itself)
    _apply.APPLY_SECONDS = _apply.APPLY_ENTRIES = _store.APPLY_ENTRIES = 10**9  # no applier on its own
    journal = SovereignJournal(sys.argv[1])
    acknowledged = 0

    def write(n):
        global acknowledged
        for _ in range(n):
            journal.record(TransactionLog(acknowledged, "op", f"r{acknowledged}", LogStatus.Failed,
                                          error="e" * 900), increment="op")
            acknowledged += 1

    write(20)  # about 20 KiB of the ring's 64, none of it in LMDB yet
    print("written", flush=True)
    input()  # (the test arms the file system: LMDB's next write to data.mdb fails with EIO)
    failed = []

    def apply():
        try:
            journal._live().checkpoint()
        except StorageError as exc:
            failed.append(exc)

    thread = threading.Thread(target=apply)
    thread.start()
    thread.join()
    print("failed" if failed else "applied", flush=True)
    input()  # (the disk works again)
    write(50)  # 50 KiB more: past the ring's end, over the space of the first 20
    print(acknowledged, flush=True)
    os._exit(0)  # the process dies: whatever LMDB does not hold must still be in the log
""")


def test_the_ring_space_of_records_lmdb_failed_to_commit_is_not_reused(tmp_path: Path) -> None:
    """Kills: the floor (where the ring's reusable space ends) moved before LMDB's commit of the
    records in it succeeded (storage/lmdb/_apply.py ``apply_tail``: the floor set before
    ``txn.commit()``). LMDB's commit fails (the disk returns EIO: the power-loss file system's
    armed failure); the writes that follow must not overwrite those records in the ring — a
    process that then dies would lose them (acknowledged writes). After the death every
    acknowledged write is there."""
    from powerloss.harness import PowerLossMount, fuse_unavailable

    reason = fuse_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true" or os.environ.get("KREPIS_REQUIRE_POWERLOSS") == "1":
            pytest.fail(f"needs the power-loss file system: {reason}")
        pytest.skip(f"needs the power-loss file system: {reason}")
    with PowerLossMount(tmp_path) as plfs:
        store = plfs.mnt / "store"
        child = subprocess.Popen([sys.executable, "-c", _FAILED_APPLY, str(store)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline() == "written\n"
            plfs.request({"cmd": "arm", "file": "store/data.mdb", "events": 1})
            child.stdin.write("\n")
            child.stdin.flush()
            deadline = time.monotonic() + 60
            while plfs.stats()["state"] != "frozen":
                assert time.monotonic() < deadline, "LMDB never wrote data.mdb"
                time.sleep(0.01)
            plfs.request({"cmd": "thaw"})
            assert child.stdout.readline() == "failed\n"
            plfs.request({"cmd": "resume"})
            child.stdin.write("\n")
            child.stdin.flush()
            acknowledged = int(child.stdout.readline())
            assert child.wait(timeout=60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert acknowledged == 70
        with SovereignJournal(store, create=False) as journal:
            assert journal.journal_count() == journal.recover_op_count("op") == acknowledged
            assert [x.request_id for x in journal.query(order="append", newest_first=False)] == \
                [f"r{i}" for i in range(acknowledged)]
            journal.verify()


def test_recovery_stops_at_a_record_that_does_not_link_to_the_one_before_it(tmp_path: Path) -> None:
    """Kills: recovery walking the chain without checking each record's link, the CRC of the
    record before it (storage/lmdb/_commitlog.py ``CommitLog.chain`` reading with no link).
    docs/storage-format.md: a record written before a crash and never part of the chain cannot
    join it. Two records follow LMDB's pointer: the first links to it, the second — at the right
    place, whole, of the right seq — links to another record. Recovery applies the first only.
    (``chain`` is recovery's walk; catching up reads with ``read`` and is checked above.)"""
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        _three(journal)
    first = _append_forged(store, first_seq=3, request_id="linked")
    _position, link = _log_end(store)
    second = _append_forged(store, first_seq=4, link=link ^ 1, request_id="not linked")
    with SovereignJournal(store) as journal:
        assert [x.request_id for x in journal.query(order="append", newest_first=False)] == \
            ["r0", "r1", "r2", first]
        assert second not in [x.request_id for x in journal.query()]
        journal.verify()


_LAPS = textwrap.dedent("""
    from krepis import LogStatus, SovereignJournal, TransactionLog
    from krepis.storage.lmdb import _apply, _commitlog, _store
    _commitlog.RING_SIZE = 64 << 10  # a small ring (the log states its size itself)
    # LMDB applies only when the ring is full, in the writing thread: no applier in parallel
    _apply.APPLY_SECONDS = _apply.APPLY_ENTRIES = _store.APPLY_ENTRIES = 10**9
    with SovereignJournal({store!r}, flush="interval:3600000ms") as journal:
        for i in range(300):
            journal.record(TransactionLog(i, "op", f"r{{i}}", LogStatus.Failed, error="e" * 900),
                           increment="op")
""")
_OPENED = re.compile(r"= (\d+)<")
_PWRITE = re.compile(r", (\d+), (\d+)\)\s*= \d+$")  # (strace pads short lines to column 40)


@pytest.mark.usefixtures("strace")
def test_ring_space_is_written_again_only_once_lmdb_flushed_what_was_applied(tmp_path: Path) -> None:
    """Kills: LMDB's apply not synced while the ring's space is reused (the store's environment
    opened without ``sync``/``metasync``, storage/lmdb/_env.py, or an apply committed unsynced).
    docs/storage-format.md: the log's space before LMDB's pointer may be written again once the
    records in it are durable in LMDB. A small ring laps five times; whenever a record is written
    where an earlier one lay, every write LMDB made to data.mdb before it has been flushed
    (by fsync/fdatasync, or written through a descriptor opened with O_DSYNC). Counted at the
    system call; the power-loss tests catch this only at random cuts."""
    store = tmp_path / "s"
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-y", "-o", str(trace), "-e",
                    "trace=openat,fsync,fdatasync,write,pwrite64,writev,pwritev,pwritev2",
                    sys.executable, "-c", _LAPS.format(store=str(store))],
                   check=True, timeout=120, capture_output=True)
    log, data = f"{store}/commit.log", f"{store}/data.mdb"
    dsync: dict[tuple[str, str], bool] = {}
    unflushed = 0  # writes to data.mdb not yet flushed
    written_up_to = 0  # the end of the ring's file space records were written in so far
    reused = 0
    for line in joined(trace.read_text(errors="replace")):
        found = re.match(r"^(\d+)\s+(\w+)\((-?\d+|AT_FDCWD)<([^>]*)>(.*)$", line)
        if not found:
            continue
        pid, call, fd, path, rest = found.groups()
        if call == "openat":
            opened = _OPENED.search(rest)
            if opened:
                dsync[(pid, opened.group(1))] = "O_DSYNC" in rest
        elif path == data and call in _SYNCS:
            unflushed = 0
        elif path == data and call in _WRITES and not dsync.get((pid, fd)):
            unflushed += 1
        elif path == log and call == "pwrite64" and '"KRC2' in rest:  # a record
            where = _PWRITE.search(rest)
            assert where is not None, line
            length, offset = int(where.group(1)), int(where.group(2))
            if offset < written_up_to:
                reused += 1
                assert unflushed == 0, (f"a record was written at offset {offset} of commit.log, where an "
                                        f"earlier one lay, with {unflushed} write(s) to data.mdb unflushed")
            written_up_to = max(written_up_to, offset + length)
    assert reused >= 200  # (the ring lapped: most records went where others had been)
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == 300
