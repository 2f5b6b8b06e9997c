from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.storage import Query, Storage
from krepis.storage.lmdb import LmdbStorage
from rawlmdb import edit, forget_commit_log

from storage_conformance import StorageConformance


class TestLmdbConformance(StorageConformance):
    @pytest.fixture
    def make_storage(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        def factory() -> Storage:
            return LmdbStorage(tmp_path / "store")

        return factory


class _AppliedAtOnce(LmdbStorage):
    """The LMDB store with its commit log applied after every write: reads then find every entry
    in LMDB's tables and indexes instead of in the log's tail, where a store keeps its newest
    writes until its applier runs."""

    def write_batch(self, requests):  # type: ignore[no-untyped-def]
        from krepis.storage.lmdb._apply import apply_tail

        results = super().write_batch(requests)
        with self._shared.writer_lock():
            apply_tail(self._shared)
        assert not self._shared.tail.records
        return results


class TestLmdbConformanceApplied(StorageConformance):
    """The same contract read from LMDB itself (the scans of its indexes, verify, counters)."""

    @pytest.fixture
    def make_storage(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        def factory() -> Storage:
            return _AppliedAtOnce(tmp_path / "store")

        return factory


def test_two_handles_in_one_process_share_one_environment(tmp_path: Path) -> None:
    a = LmdbStorage(tmp_path / "s")
    b = LmdbStorage(tmp_path / "s")
    try:
        from krepis.storage import WriteRequest

        a.write_batch([WriteRequest([], [b"x"])])
        assert b.get_count(b"x") == 1
        a.close()
        assert b.get_count(b"x") == 1  # closing one handle leaves the other working
    finally:
        a.close()
        b.close()


# --- tampering: every change made with LMDB's own tools is found by verify() ----------------------

def _tamper(store: Path, fn) -> None:  # type: ignore[no-untyped-def]
    edit(store, lambda txn, db: fn(txn, {n: db(n, dupsort=n == b"index", dupfixed=n == b"index")
                                         for n in (b"entries", b"index", b"tree", b"meta", b"ops")}))


def _key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


def _swap(txn, dbs, a: int, b: int) -> None:  # type: ignore[no-untyped-def]
    va, vb = txn.get(_key(a), db=dbs[b"entries"]), txn.get(_key(b), db=dbs[b"entries"])
    txn.put(_key(a), vb, db=dbs[b"entries"])
    txn.put(_key(b), va, db=dbs[b"entries"])


def _edit_byte(txn, dbs, seq: int) -> None:  # type: ignore[no-untyped-def]
    value = bytearray(txn.get(_key(seq), db=dbs[b"entries"]))
    value[-1] ^= 1  # the duration: the one field no index covers, so only the tree can tell
    txn.put(_key(seq), bytes(value), db=dbs[b"entries"])


TAMPERING = [
    ("edit one byte of entry 300", lambda t, d: _edit_byte(t, d, 300), r"Merkle hash of entries 256…511"),
    ("edit one byte of entry 600", lambda t, d: _edit_byte(t, d, 600), r"tree head does not match entries"),
    ("delete entry 40", lambda t, d: t.delete(_key(40), db=d[b"entries"]), r"entry 40 is missing"),
    ("delete the last entry", lambda t, d: t.delete(_key(699), db=d[b"entries"]),
     r"entries end before seq 699"),
    ("swap entries 3 and 4", lambda t, d: _swap(t, d, 3, 4), r"entry 3 has no row in the time index"),
    ("add an entry", lambda t, d: t.put(_key(700), t.get(_key(5), db=d[b"entries"]), db=d[b"entries"]),
     r"entry 700 exists; the meta sequence is behind the entries"),  # (found at the open)
    ("change a request id", lambda t, d: t.put(_key(9), t.get(_key(9), db=d[b"entries"])[:-5] + b"x"
                                               + t.get(_key(9), db=d[b"entries"])[-4:], db=d[b"entries"]),
     r"entry 9 has no row in the request id index"),
    ("change a tree node", lambda t, d: t.put(b"\x08" + (1).to_bytes(8, "big"), b"\0" * 32, db=d[b"tree"]),
     r"Merkle hash of entries 256…511 \(height 8\) does not match"),
    ("drop a tree node", lambda t, d: t.delete(b"\x08" + (0).to_bytes(8, "big"), db=d[b"tree"]),
     r"Merkle hash of entries 0…255 \(height 8\) is missing"),
    ("drop an index row", lambda t, d: t.delete(b"t", (5).to_bytes(8, "big") + _key(5), db=d[b"index"]),
     r"has no row in the time index"),
    ("add an index row", lambda t, d: t.put(b"s\x01", b"\0" * 16, db=d[b"index"]),
     r"status index holds 701 rows for 700 entries"),
]


@pytest.mark.parametrize(("how", "change", "message"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_verify_names_what_was_tampered_with(tmp_path: Path, how: str, change, message: str) -> None:  # type: ignore[no-untyped-def]
    from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog

    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        for i in range(700):
            journal.record(TransactionLog(i, f"op{i % 3}", f"r{i}", LogStatus.Completed, duration_us=i),
                           increment="op")
        assert journal.verify().entries == 700
    _tamper(store, change)
    with pytest.raises(CorruptStorageError, match=message), SovereignJournal(store) as journal:
        journal.verify()


def test_an_op_first_journaled_by_another_process_is_found_by_name(tmp_path: Path) -> None:
    store = tmp_path / "s"
    storage = LmdbStorage(store)
    try:
        subprocess.run([sys.executable, "-c", (
            "from krepis import SovereignJournal, TransactionLog, LogStatus\n"
            f"with SovereignJournal({str(store)!r}) as j:\n"
            "    j.record(TransactionLog(5, 'from-child', 'r', LogStatus.Completed))\n")],
            check=True, timeout=60)
        found = storage.scan(Query(op_names=("from-child",)), after=None, limit=5)
        assert [(log.op_name, log.timestamp) for log in found] == [("from-child", 5)]
        assert storage.scan(Query(op_names=("never-journaled",)), after=None, limit=5) == []
    finally:
        storage.close()


def test_a_store_without_the_checkpoints_database_gets_it_on_open(tmp_path: Path) -> None:
    # the checkpoints database came later in format 2: a store without it opens and takes one
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    env = lmdb.open(str(store), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"checkpoints", txn=txn, create=False), delete=True)
    finally:
        env.close()
    forget_commit_log(store)
    storage = LmdbStorage(store)
    try:
        assert storage.checkpoints() == [] and storage.entry_count() == 1
        head = storage.tree_head()
        storage.add_checkpoint(head.epoch, head.size, "example.com/log", "note")
        assert storage.checkpoints() == [(head.epoch, head.size, "example.com/log", "note")]
    finally:
        storage.close()


def test_a_process_that_never_closes_its_journal_still_exits(tmp_path: Path) -> None:
    # the background threads (flusher, checkpointer) are daemons: they never hold the exit up
    code = ("from krepis import SovereignJournal, TransactionLog, LogStatus\n"
            f"j = SovereignJournal({str(tmp_path / 's')!r})\n"
            "j.record(TransactionLog(1, 'op', 'r', LogStatus.Completed), increment='op')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with SovereignJournal(tmp_path / "s") as journal:
        assert journal.journal_count() == journal.recover_op_count("op") == 1
