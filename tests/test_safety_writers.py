"""Operators delete "stale" lock files and whole directories. Two processes must still never write
a store at the same time, and no acknowledged write may silently go nowhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest

from krepis import LogStatus, SovereignJournal, StorageError, TransactionLog

WRITES = 400

# A writer process: opens the store, says "ready", waits for "go" on stdin, then records WRITES
# entries (each bumping the "shared" counter) as fast as it can, and reports as one JSON line what
# was acknowledged and the first error, if any.
WRITER = textwrap.dedent("""
    import json, sys
    from krepis import JournalError, LogStatus, SovereignJournal, TransactionLog
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    journal = SovereignJournal(path, flush="interval:60000ms")
    print("ready", flush=True)
    sys.stdin.readline()
    acked, error = [], None
    try:
        for i in range(n):
            rid = f"{tag}-{i}"
            journal.record(TransactionLog(i, "w", rid, LogStatus.Completed), increment="shared")
            acked.append(rid)
    except JournalError as exc:
        error = f"{type(exc).__name__}: {exc}"
    try:
        journal.close()
    except JournalError as exc:
        error = error or f"{type(exc).__name__}: {exc}"
    print(json.dumps({"acked": acked, "error": error}), flush=True)
""")


def start_writer(store: Path, tag: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), tag, str(WRITES)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def finish(proc: subprocess.Popen[str]) -> dict:  # type: ignore[type-arg]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"writer died with {proc.returncode}: {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def check_store(store: Path) -> tuple[set[str], int]:
    """Read everything back, as a new process would: (request ids, 'shared' counter)."""
    with SovereignJournal(store, create=False) as journal:
        logs = journal.query()
        assert len(logs) == journal.journal_count()
        counts = journal.op_counts()
        journal.verify()  # entries, indexes and the Merkle tree agree
    env = lmdb.open(str(store), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = sorted(k for k, _ in txn.cursor())
    finally:
        env.close()
    # no record leaked into the main database
    assert names == [b"checkpoints", b"entries", b"index", b"meta", b"ops", b"stats", b"tree"]
    return {log.request_id for log in logs}, counts.get("shared", 0)


def test_deleting_lock_file_does_not_let_a_second_writer_in(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(0, "w", "before", LogStatus.Completed), increment="shared")
    first = start_writer(store, "a")
    (store / "lock.mdb").unlink()  # "a stale lock file"
    second = start_writer(store, "b")  # builds a fresh lock table
    assert first.stdin is not None and second.stdin is not None
    first.stdin.write("go\n")
    second.stdin.write("go\n")
    first.stdin.flush()
    second.stdin.flush()
    a, b = finish(first), finish(second)
    ids, shared = check_store(store)
    acked = {"before", *a["acked"], *b["acked"]}
    assert acked <= ids, f"{len(acked - ids)} acknowledged writes are missing"
    assert ids == acked and shared == len(acked)
    # The writer whose lock table was deleted stops at once and says why; the other one wrote.
    assert a["acked"] == [] and "lock.mdb was deleted or replaced" in a["error"]
    assert len(b["acked"]) == WRITES and b["error"] is None


def test_reading_and_writing_stop_after_lock_file_deletion(tmp_path: Path) -> None:
    store = tmp_path / "store"
    journal = SovereignJournal(store)
    journal.increment_op_count("op")
    (store / "lock.mdb").unlink()
    for call in (journal.journal_count, lambda: journal.increment_op_count("op"),
                 lambda: journal.query(limit=1), journal.clear_all):
        with pytest.raises(StorageError, match=r"lock\.mdb was deleted or replaced") as info:
            call()
        assert info.value.path == str(store)
    journal.close()
    with SovereignJournal(store) as journal:  # reopening builds a new lock table and works
        assert journal.increment_op_count("op") == 2


def test_replaced_lock_file_is_detected(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store) as journal:
        journal.increment_op_count("op")
        shutil.copy(store / "lock.mdb", tmp_path / "copy")
        os.replace(tmp_path / "copy", store / "lock.mdb")
        with pytest.raises(StorageError, match=r"lock\.mdb was deleted or replaced"):
            journal.increment_op_count("op")


def test_deleted_store_directory_fails_writes_instead_of_losing_them(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for flush in ("sync", "interval:5ms"):
        journal = SovereignJournal(store, flush=flush)
        journal.increment_op_count("op")
        shutil.rmtree(store)
        with pytest.raises(StorageError, match=r"data\.mdb was deleted or replaced"):
            journal.increment_op_count("op")
        with pytest.raises(StorageError, match=r"data\.mdb was deleted"):
            journal.journal_count()
        if flush == "sync":
            journal.close()
        else:  # its last sync fails too: it says so, and still releases the store
            with pytest.raises(StorageError, match=r"data\.mdb was deleted"):
                journal.close()
            assert journal.closed
        with pytest.raises(StorageError, match="there is no krepis store"):
            SovereignJournal(store, create=False)


def test_renamed_store_directory_keeps_its_writes(tmp_path: Path) -> None:
    store, moved = tmp_path / "store", tmp_path / "moved"
    with SovereignJournal(store) as journal:
        journal.increment_op_count("op")
        store.rename(moved)
        assert journal.increment_op_count("op") == 2  # the data is still reachable: not lost
    with SovereignJournal(moved, create=False) as journal:
        assert journal.recover_op_count("op") == 2
