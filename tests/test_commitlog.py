"""The commit log as the write path (storage format 4): what a write costs, what readers see before
LMDB applies it, and what recovery applies — and refuses.

A child writes with LMDB's background application held off and dies without closing
(``os._exit``, as a SIGKILL leaves it), so its writes exist only as records in ``commit.log``.
The power-loss tests (tests/test_powerloss.py) check the same against lost writes; the damage
campaign (tests/test_commitlog_damage.py) against every damaged byte and swapped file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from krepis import CorruptStorageError, LogStatus, SovereignJournal, StorageError, TransactionLog
from krepis.storage.lmdb import _commitlog, _layout
from krepis.storage.lmdb._commitlog import CommitLog, encode_payload
from logtools import HOLD_OFF, flip, pointer, ring_offset, stored_entries, unapplied, write_and_die

from conftest import tree_snapshot
from stracekit import joined


def _expect(store: Path, n: int) -> None:
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == journal.recover_op_count("op") == n
        assert [e.request_id for e in journal.query(order="append", newest_first=False)] == \
            [f"r{i}" for i in range(n)]
        assert journal.verify().entries == n


def test_a_write_is_a_record_in_the_log_and_lmdb_follows_at_the_next_open(tmp_path: Path) -> None:
    store = tmp_path / "s"
    write_and_die(store, 300)
    assert stored_entries(store) == 0 and len(unapplied(store)) == 300  # in the log only
    _expect(store, 300)
    assert stored_entries(store) == 300 and unapplied(store) == []  # applied, and the pointer moved on


def test_reads_in_another_process_see_every_acknowledged_write_before_lmdb_applies_it(tmp_path: Path) -> None:
    """Counters, counts, every query, entries, the tree head: exact in a process that did not
    write them, while the writer keeps them in its log only."""
    store = tmp_path / "s"
    SovereignJournal(store).close()
    script = HOLD_OFF + textwrap.dedent(f"""
        import sys
        from krepis import SovereignJournal, TransactionLog, LogStatus
        j = SovereignJournal({str(store)!r})
        for line in sys.stdin:
            n = int(line)
            for i in range(n):
                j.record(TransactionLog(1_700_000_000_000 + i, "op", f"w{{n}}-{{i}}", LogStatus.Completed),
                         increment="op")
            print("done", flush=True)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        with SovereignJournal(store) as reader:
            total = 0
            for n in (5, 40):
                writer.stdin.write(f"{n}\n")
                writer.stdin.flush()
                assert writer.stdout.readline() == "done\n"
                total += n
                storage = reader._storage
                with storage._env.begin() as txn:  # type: ignore[attr-defined]
                    assert txn.stat(storage._entries)["entries"] == 0  # type: ignore[attr-defined]
                assert reader.journal_count() == reader.recover_op_count("op") == total
                assert reader.op_counts() == {"op": total}
                assert reader.next_seq() == total
                newest = reader.get_recent_logs(3)
                assert [e.request_id for e in newest] == [f"w{n}-{i}" for i in (n - 1, n - 2, n - 3)]
                assert reader.entry(total - 1).request_id == f"w{n}-{n - 1}"
                assert len(reader.query(request_id=f"w{n}-2")) == 1
                assert len(reader.query(op_name="op", status="Completed")) == total
                assert reader.tree_head().size == total
                assert reader.verify().entries == total
            proof = reader.inclusion_proof(total - 1)
            assert proof.tree_size == total
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)


@pytest.mark.usefixtures("strace")
def test_a_durable_write_is_one_flush_of_the_commit_log(tmp_path: Path) -> None:
    """Counted with strace: under ``sync`` each write flushes the commit log once, and nothing
    else; under ``interval`` the writes flush nothing (the background sync does, later), and
    ``flush()`` once."""
    for flush, then_flush, per_write in (("sync", False, 1), ("interval:60000ms", True, 0)):
        counts = _flushes(tmp_path, flush, then_flush)
        assert counts.get("commit.log", 0) == 20 * per_write + then_flush, (flush, counts)
        assert counts.get("data.mdb", 0) == 0, (flush, counts)


def _flushes(tmp_path: Path, flush: str, then_flush: bool) -> dict[str, int]:
    store = tmp_path / flush.replace(":", "-")
    code = HOLD_OFF + textwrap.dedent(f"""
        import os
        from krepis import SovereignJournal, TransactionLog, LogStatus
        j = SovereignJournal({str(store)!r}, flush={flush!r})
        j.record(TransactionLog(0, "op", "warm", LogStatus.Completed), increment="op")
        os.write(2, b"<commits>")
        for i in range(20):
            j.record(TransactionLog(i, "op", f"r{{i}}", LogStatus.Completed), increment="op")
        if {then_flush}:
            j.flush()
        os.write(2, b"</commits>")
        os._exit(0)
    """)
    trace = subprocess.run(["strace", "-f", "-y", "-e", "trace=fsync,fdatasync,write", sys.executable, "-c",
                            code], capture_output=True, text=True, timeout=120)
    assert trace.returncode == 0, trace.stderr[-2000:]
    inside = "\n".join(joined(trace.stderr.split("<commits>", 1)[1].split("</commits>", 1)[0]))
    counts: dict[str, int] = {}
    for name in re.findall(r"f(?:data)?sync\(\d+<[^>]*/([^/>]+)>\)", inside):
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture
def died(tmp_path: Path) -> Path:
    """A store whose writer died with 40 synced writes in its log, none applied."""
    store = tmp_path / "s"
    write_and_die(store, 40)
    return store


def _refused(store: Path, pattern: str) -> None:
    before = tree_snapshot(store)
    with pytest.raises(CorruptStorageError, match=pattern) as info:
        SovereignJournal(store)
    assert info.value.path == str(store)
    assert tree_snapshot(store) == before  # nothing written, by the open that refused


def test_a_damaged_record_followed_by_durable_ones_is_refused_naming_the_position(died: Path) -> None:
    records = unapplied(died)
    at = records[2]
    offset = ring_offset(died, at.position) + 40 + len(at.payload) // 2
    with open(died / "commit.log", "r+b") as f:  # one flipped byte in the third record's payload
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    _refused(died, rf"^storage at {died}: commit\.log has no valid record at position {at.position}, .* "
                   rf"durable up to position {records[-1].end} \(37 valid record\(s\) lie beyond\)")


def test_the_last_record_damaged_after_it_was_acknowledged_is_refused(died: Path) -> None:
    """No record follows it, but the marker (written after the flush that acknowledged it) says
    it was durable: not a torn tail."""
    last = unapplied(died)[-1]
    with open(died / "commit.log", "r+b") as f:
        f.seek(ring_offset(died, last.position) + 41)
        f.write(b"\x7f")
    _refused(died, rf"^storage at {died}: commit\.log has no valid record at position {last.position}, where "
                   rf"data\.mdb and the log's readable records end, but the log was durable up to position "
                   rf"{last.end}: acknowledged writes are damaged or missing \(or data\.mdb is older than "
                   r"its log\)\. Nothing was written; restore the store from a backup$")


def test_a_torn_tail_that_was_never_flushed_is_dropped(tmp_path: Path) -> None:
    """Writes under an interval policy that were never flushed, the last one damaged as a power
    cut may leave it: it and nothing else is dropped (it was never promised durable), the rest
    are applied."""
    store = tmp_path / "s"
    write_and_die(store, 10, flush="interval:600000ms")
    last = unapplied(store)[-1]
    flip(store / "commit.log", ring_offset(store, last.position) + 60)
    _expect(store, 9)


def test_valid_records_of_an_older_lap_are_never_evidence(tmp_path: Path) -> None:
    """A record left over from a lap before LMDB's pointer is old news: recovery ignores it."""
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        for i in range(50):
            journal.record(TransactionLog(1_700_000_000_000 + i, "op", f"r{i}", LogStatus.Completed,
                                          duration_us=i), increment="op")
    _expect(store, 50)  # (all applied at the close; the old records stay in the ring)


def test_a_record_whose_payload_is_malformed_is_refused_naming_it(died: Path) -> None:
    """A record with a valid CRC but a payload krepis never writes (a bug, or a forged record)."""
    records = unapplied(died)
    at = records[-1]
    entry = at.payload[12:12 + int.from_bytes(at.payload[8:12], "little")]
    payload = encode_payload([([b" " + entry], [b"op"])])
    raw, _crc = CommitLog.encode(at.kind, at.position, at.durable, at.first_seq, at.link, payload)
    with open(died / "commit.log", "r+b") as f:
        f.seek(ring_offset(died, at.position))
        f.write(raw)
    _refused(died, rf"^storage at {died}: the commit\.log record at position {at.position} is malformed \(an "
                   r"entry is not in canonical form\)$")


def test_a_recovery_that_fills_the_store_is_refused_naming_it_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LMDB's map cannot hold what the log holds: the open is a ``StorageError`` naming the store
    and the recovery, and the store's files stay as they were (the next open, with room, applies
    it all)."""
    store = tmp_path / "s"
    write_and_die(store, 0, flush="interval:600000ms", code="""
        for i in range(3000):
            j.record(TransactionLog(i, "op", f"big{i}", LogStatus.Completed, error="e" * 500), increment="op")
    """)
    before = tree_snapshot(store)
    monkeypatch.setattr(_layout, "_MAP_SIZE", 1 << 20)  # 1 MiB: less than the log's 1.8 MB of entries
    with pytest.raises(StorageError) as info:
        SovereignJournal(store)
    assert str(info.value) == (f"storage at {store} is full (LMDB map size {1 << 20} bytes) while recovering "
                               "from the commit log")
    assert info.value.path == str(store)
    assert tree_snapshot(store) == before
    monkeypatch.undo()
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == journal.recover_op_count("op") == 3000


def test_a_foreign_commit_log_is_refused_and_nothing_changes(died: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_and_die(other, 5)
    shutil.copy(other / "commit.log", died / "commit.log")
    _refused(died, rf"^storage at {died}: commit\.log does not belong to this data\.mdb")


def test_an_older_copy_of_the_commit_log_is_refused(tmp_path: Path) -> None:
    """Put back an older copy of the log: commit.state's marker says the log was durable past
    where the copy ends."""
    store = tmp_path / "s"
    write_and_die(store, 10)
    old = (store / "commit.log").read_bytes()
    write_and_die(store, 30, start=10)
    (store / "commit.log").write_bytes(old)
    _refused(store, r"no valid record at position \d+, .* but the log was durable up to")


def test_commit_state_missing_or_damaged_is_remade_by_the_first_open(died: Path) -> None:
    (died / "commit.state").unlink()
    _expect(died, 40)
    assert (died / "commit.state").stat().st_size == 4096


def test_a_commit_log_deleted_behind_an_open_journal_refuses_the_next_write(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "op", "r1", LogStatus.Completed), increment="op")
        (store / "commit.log").unlink()
        with pytest.raises(StorageError, match=rf"^storage at {store}: commit\.log was deleted or replaced"):
            journal.record(TransactionLog(2, "op", "r2", LogStatus.Completed), increment="op")


def test_a_data_file_older_than_its_log_is_brought_up_to_date_while_the_log_has_its_records(
        tmp_path: Path) -> None:
    """data.mdb put back from before the last writes, the log still holding every record since:
    the chain from data.mdb's own pointer is applied."""
    store = tmp_path / "s"
    write_and_die(store, 10)
    SovereignJournal(store).close()  # applied
    old_data = (store / "data.mdb").read_bytes()
    write_and_die(store, 20, start=10)
    SovereignJournal(store).close()
    (store / "data.mdb").write_bytes(old_data)
    _expect(store, 30)


def test_a_data_file_older_than_a_change_made_outside_the_log_is_refused(tmp_path: Path) -> None:
    """A clear is committed in LMDB, not logged: its barrier record in the log says so. A data.mdb
    from before it cannot be brought up to date by the log."""
    store = tmp_path / "s"
    write_and_die(store, 10)
    SovereignJournal(store).close()
    old_data = (store / "data.mdb").read_bytes()
    with SovereignJournal(store) as journal:
        journal.clear_all()
    (store / "data.mdb").write_bytes(old_data)
    _refused(store, rf"^storage at {store}: the commit log holds, at position \d+, a change made outside the "
                    r"log \(a clear, an archive or a checkpoint\) that data\.mdb does not have: data\.mdb is "
                    r"older than its commit log\. Restore the store with krepis restore$")


def _superblock(store: Path) -> bytearray:
    return bytearray((store / "commit.log").read_bytes()[:4096])


@pytest.mark.parametrize("copy", [0, 2048])
def test_one_damaged_copy_of_the_superblock_is_survived(died: Path, copy: int) -> None:
    with open(died / "commit.log", "r+b") as f:
        f.seek(copy + 20)
        f.write(b"\x00\x01\x02")
    _expect(died, 40)


def _rewrite_superblock(store: Path, ring: int | None = None, start: int | None = None,
                        version: int | None = None) -> None:
    import struct

    raw = _superblock(store)
    magic, old_version, log_id, old_start, old_ring = struct.unpack_from("<8sI4x16sQQ", raw, 0)
    body = struct.pack("<8sI4x16sQQ", magic, old_version if version is None else version, log_id,
                       old_start if start is None else start, old_ring if ring is None else ring)
    block = body + struct.pack("<I", zlib.crc32(body))
    with open(store / "commit.log", "r+b") as f:
        for at in (0, 2048):
            f.seek(at)
            f.write(block)


@pytest.mark.parametrize(("ring", "start"), [(1, None), (0, None), (3 << 20, None), (None, 0),
                                             (None, 2**62)],
                         ids=["ring=1", "ring=0", "ring-not-a-power-of-two", "start=0", "start=2^62"])
def test_a_superblock_with_impossible_values_is_refused(died: Path, ring: int | None,
                                                        start: int | None) -> None:
    _rewrite_superblock(died, ring=ring, start=start)
    _refused(died, rf"^storage at {died}: the superblock of commit\.log places the ring at")


def test_both_copies_of_the_superblock_damaged_are_refused(died: Path) -> None:
    with open(died / "commit.log", "r+b") as f:
        for at in (0, 2048):
            f.seek(at + 30)
            f.write(b"\xff")
    _refused(died, rf"^storage at {died}: commit\.log is not a krepis commit log or both copies of its "
                   r"superblock are damaged$")


def test_a_log_of_a_newer_version_is_refused(died: Path) -> None:
    _rewrite_superblock(died, version=3)
    _refused(died, rf"^storage at {died}: commit\.log has version 3; this krepis reads version 2$")


def test_a_commit_log_that_cannot_be_created_is_an_error_naming_the_store(tmp_path: Path) -> None:
    store = tmp_path / "s"
    SovereignJournal(store).close()
    (store / "commit.log").unlink()
    (store / "commit.log.new").mkdir()  # where the new log would be written
    with pytest.raises(StorageError, match=rf"^storage at {store}: cannot create commit\.log: ") as info:
        SovereignJournal(store)
    assert info.value.path == str(store)


def test_a_small_ring_laps_many_times_and_loses_nothing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 64 KiB ring the log's space is reused dozens of times: LMDB applies before a record
    would overwrite one it has not applied."""
    monkeypatch.setattr(_commitlog, "RING_SIZE", 64 << 10)
    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:50ms") as journal:
        for i in range(5000):
            journal.record(TransactionLog(1_700_000_000_000 + i, "op", f"r{i}", LogStatus.Completed,
                                          duration_us=i), increment="op")
    assert pointer(store)[1] > 10 * (64 << 10)
    _expect(store, 5000)


_DIE_IN_A_CLEAR = """
import os
from krepis.storage.lmdb import _commitlog, _layout
real_pending, real_write = _commitlog.CommitLog.write_pending, _commitlog.CommitLog.write
def write_pending(self, end):
    real_pending(self, end)
    if end and {when!r} == "before the commit":
        os._exit(0)
def write(self, position, record):
    if int.from_bytes(record[36:37], "little") == _commitlog.BARRIER and {when!r} == "after the commit":
        os._exit(0)  # committed in LMDB, the barrier not written, the head not moved
    real_write(self, position, record)
_commitlog.CommitLog.write_pending, _commitlog.CommitLog.write = write_pending, write
j.clear_all()
"""


@pytest.mark.parametrize("when", ["before the commit", "after the commit"])
def test_a_process_killed_inside_a_change_outside_the_log_leaves_the_store_whole(tmp_path: Path,
                                                                                  when: str) -> None:
    """A clear is committed in LMDB, not logged: killed before its commit, it never happened;
    after it, it did — and the writes before it are there either way."""
    store = tmp_path / "s"
    write_and_die(store, 10, code=_DIE_IN_A_CLEAR.format(when=when))
    with SovereignJournal(store) as journal:
        ops = [e.op_name for e in journal.query(order="append", newest_first=False)]
        if when == "before the commit":
            assert ops == ["op"] * 10 and journal.recover_op_count("op") == 10
        else:
            assert ops == ["journal_cleared"] and journal.recover_op_count("op") == 0
        assert journal.verify().entries == len(ops)
        journal.record(TransactionLog(1, "op", "after", LogStatus.Completed), increment="op")


@pytest.mark.parametrize("when", ["before the commit", "after the commit"])
def test_a_writer_in_another_process_goes_on_after_one_died_inside_a_change_outside_the_log(
        tmp_path: Path, when: str) -> None:
    """The surviving process learns from commit.state that a change was pending: committed (LMDB
    says so) it starts again from LMDB's pointer, else it clears the announcement. Its writes
    land in both cases, and the counter stays equal to the entries."""
    store = tmp_path / "s"
    with SovereignJournal(store) as survivor:
        survivor.record(TransactionLog(1, "op", "first", LogStatus.Completed), increment="op")
        write_and_die(store, 10, code=_DIE_IN_A_CLEAR.format(when=when))
        assert survivor.recover_op_count("op") == (11 if when == "before the commit" else 0)
        survivor.record(TransactionLog(2, "op", "second", LogStatus.Completed), increment="op")
        count = survivor.journal_count()
        assert survivor.recover_op_count("op") == (12 if when == "before the commit" else 1)
        assert survivor.verify().entries == count
    with SovereignJournal(store) as reopened:
        assert reopened.journal_count() == count and reopened.verify().entries == count
        assert reopened.query(order="append", newest_first=True, limit=1)[0].request_id == "second"
