"""Hot backup and verified restore of a live LMDB store."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lmdb
import pytest

from krepis import LogStatus, SovereignJournal, StorageError, TransactionLog, ValidationError
from krepis.storage import backup, restore
from krepis.tlog._note import generate_signer
from rawlmdb import forget_commit_log

WORKERS = str(Path(__file__).parent / "workers.py")


def test_a_backup_taken_while_four_processes_write_restores_complete_and_verified(tmp_path: Path) -> None:
    store = tmp_path / "live"
    SovereignJournal(store).close()
    writers = [subprocess.Popen([sys.executable, WORKERS, "crash", str(store), f"p{n}", "2", "sync"],
                                stdout=subprocess.PIPE, text=True) for n in range(4)]
    acked: list[set[str]] = [set() for _ in writers]

    def read(n: int) -> None:
        assert writers[n].stdout is not None
        for line in writers[n].stdout:
            if line.endswith("\n"):
                acked[n].add(line.strip())

    readers = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(4)]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 60  # every writer is under way (however loaded the machine)
        while min(len(a) for a in acked) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = set().union(*acked)  # acknowledged before the backup started
        result = backup(store, tmp_path / "backup")
        time.sleep(0.3)  # writers keep writing after it
    finally:
        for w in writers:
            w.send_signal(signal.SIGKILL)
            w.wait()
    assert len(before) > 20
    restored = restore(tmp_path / "backup", tmp_path / "restored")
    assert (restored.entries, restored.root) == (result.entries, result.root)
    with SovereignJournal(tmp_path / "restored") as journal:
        report = journal.verify()
        assert report.entries == result.entries
        stored = {e.request_id for e in journal.iter_logs()}
        assert before <= stored  # every write acknowledged before the backup began is in it
        count = journal.recover_op_count("crash_op")
        assert count == journal.journal_count()
        # the restored store takes new writes, counters continuing
        assert journal.record(TransactionLog(1, "crash_op", "after", LogStatus.Completed),
                              increment="crash_op") == count + 1
        journal.verify()
    with SovereignJournal(store) as live:
        assert live.journal_count() > result.entries  # the live store went on


def _store(path: Path, n: int = 30) -> None:
    with SovereignJournal(path) as journal:
        for i in range(n):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed, duration_us=i),
                           increment="op")


def test_restore_never_replaces_a_store_unasked_nor_one_in_use(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    _store(tmp_path / "b", 5)
    backup(tmp_path / "a", tmp_path / "bk")
    before = hashlib.sha256((tmp_path / "b" / "data.mdb").read_bytes()).hexdigest()
    with pytest.raises(StorageError, match="needs --force"):
        restore(tmp_path / "bk", tmp_path / "b")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import lmdb, sys, time; e = lmdb.open(sys.argv[1], max_dbs=16); "
                               "print('open', flush=True); time.sleep(60)", str(tmp_path / "b")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(StorageError, match="open in another process"):
            restore(tmp_path / "bk", tmp_path / "b", force=True)
    finally:
        holder.kill()
        holder.wait()
    assert hashlib.sha256((tmp_path / "b" / "data.mdb").read_bytes()).hexdigest() == before
    restore(tmp_path / "bk", tmp_path / "b", force=True)
    with SovereignJournal(tmp_path / "b") as journal:
        assert journal.journal_count() == 30 and journal.recover_op_count("op") == 30


def test_a_tampered_or_wrongly_signed_backup_is_not_restored(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    key = generate_signer("example.com/bk")
    with SovereignJournal(tmp_path / "a") as journal:
        journal.sign_checkpoint(key)
    backup(tmp_path / "a", tmp_path / "bk")
    # the right key passes, another key with the same name does not
    restore(tmp_path / "bk", tmp_path / "ok", verifiers=[key.verifier()])
    other = generate_signer("example.com/bk")
    with pytest.raises(ValidationError, match="no signature of a known key"):
        restore(tmp_path / "bk", tmp_path / "no", verifiers=[other.verifier()])
    assert not (tmp_path / "no" / "data.mdb").exists()
    env = lmdb.open(str(tmp_path / "bk"), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"entries", txn=txn, create=False)
        value = bytearray(txn.get((3).to_bytes(8, "big"), db=db))
        value[-1] ^= 1
        txn.put((3).to_bytes(8, "big"), bytes(value), db=db)
    env.close()
    forget_commit_log(tmp_path / "bk")
    with pytest.raises(Exception, match="does not match entries 0"):
        restore(tmp_path / "bk", tmp_path / "bad")
    assert not (tmp_path / "bad" / "data.mdb").exists()


def test_backup_refuses_a_used_destination_and_postgresql(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(StorageError, match="not an empty directory"):
        backup(tmp_path / "a", tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["x"]
    with pytest.raises(StorageError, match="pg_dump"):
        backup("postgresql://u@localhost/db", tmp_path / "pg")
