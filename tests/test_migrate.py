"""Storage format 1 → 2: ``krepis migrate`` on both engines; crash safety under SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

from krepis import (
    CorruptStorageError,
    LogStatus,
    NeedsMigrationError,
    SovereignJournal,
    StorageError,
    TransactionLog,
)
from krepis._model import encode_log
from krepis.storage import migrate

from format1 import PG_SCHEMA_1, read_lmdb_store, write_lmdb_store
from storage_conformance import mth

FIXTURE = Path(__file__).parent / "fixtures" / "format1-store"
KREPIS = Path(sys.executable).parent / "krepis"


def _check_migrated(store: str | Path, logs: list[TransactionLog], counters: dict[str, int]) -> None:
    with SovereignJournal(store, create=False) as journal:
        got = journal.query(order="append", newest_first=False)
        assert got == logs  # every field, in append order
        assert [log.seq for log in got] == list(range(len(logs)))
        assert journal.op_counts() == counters
        assert journal.journal_count() == journal.next_seq() == len(logs)
        head = journal.tree_head()
        assert head.size == len(logs)
        assert head.root == mth([encode_log(log) for log in logs])
        by_rid: dict[str, list[tuple[int, int]]] = {}
        for seq, log in enumerate(logs):
            by_rid.setdefault(log.request_id, []).append((log.timestamp, seq))
        for rid in list(by_rid)[:50]:
            want = [seq for _, seq in sorted(by_rid[rid], reverse=True)]
            assert [g.seq for g in journal.query(request_id=rid)] == want


def test_a_store_written_by_the_previous_release_migrates_exactly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    logs, counters = read_lmdb_store(store)
    assert len(logs) == 305 and counters["charge"] == 1
    # two entries with the same timestamp and request id, both kept
    assert [(g.timestamp, g.request_id, g.status) for g in logs[:2]] == [
        (1000, "req-1", LogStatus.Started), (1000, "req-1", LogStatus.Completed)]
    before = hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest()
    with pytest.raises(NeedsMigrationError, match=rf"format 1 \(written by krepis 0\.1\).* krepis migrate "
                       rf"--storage {store}"):
        SovereignJournal(store)
    # refusing changed nothing
    assert hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest() == before
    result = migrate(store)
    assert (result.from_format, result.to_format, result.entries, result.counters) == (1, 4, 305, 9)
    _check_migrated(store, logs, counters)
    assert sorted(os.listdir(store)) == ["commit.log", "commit.state", "data.mdb", "lock.mdb"]
    again = migrate(store)  # a second run has nothing to do
    assert (again.from_format, again.to_format, again.entries) == (4, 4, 0)
    with SovereignJournal(store) as journal:  # and the migrated store takes new writes
        new = TransactionLog(1, "charge", "new", LogStatus.Completed)
        assert journal.record(new, increment="charge") == 2
        assert journal.entry(305).request_id == "new"


FORMAT2_ROOT = "e1690ba8fb0843934ed86d3b9d1ae7b68cc5978dceb5048ec949640476d11b64"


def test_a_format2_store_written_before_the_commit_log_migrates_in_place(tmp_path: Path) -> None:
    # tests/fixtures/format2-store was written by the last code of format 2
    # (tests/fixtures/make_format2_store.py): two logs, a non-ASCII request id, errors, a checkpoint.
    store = tmp_path / "store"
    shutil.copytree(Path(__file__).parent / "fixtures" / "format2-store", store)
    before = hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest()
    with pytest.raises(NeedsMigrationError, match=rf"format 2 \(written by a krepis without the commit "
                       rf"log\).* krepis migrate --storage {store}"):
        SovereignJournal(store)
    assert hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest() == before
    assert not (store / "commit.log").exists()
    result = migrate(store)
    assert (result.from_format, result.to_format, result.entries, result.counters) == (2, 4, 180, 5)
    with SovereignJournal(store) as journal:
        report = journal.verify()
        assert (report.entries, report.root.hex()) == (180, FORMAT2_ROOT)
        assert journal.next_seq() == 300
        assert journal.op_counts() == {"op0": 36, "op1": 36, "op2": 36, "op3": 36, "op4": 35}
        assert journal.entry(150) == TransactionLog(1_700_000_100_029, "op4", "räq-29", LogStatus.Started,
                                                    seq=150)
        assert journal.entry(128).error == "boom ✗"
        assert (journal.latest_checkpoint() or "").startswith("example.com/format2\n180\n")
        assert journal.record(TransactionLog(1, "op0", "new", LogStatus.Completed), increment="op0") == 37
        assert journal.entry(300).request_id == "new"
    assert (store / "commit.log").exists()
    assert migrate(store).from_format == 4  # nothing left to do


def test_cli_names_the_command_and_migrates(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    stats = subprocess.run([KREPIS, "stats", "--storage", str(store)], capture_output=True, text=True)
    assert stats.returncode == 1
    assert f"krepis migrate --storage {store}" in stats.stderr
    assert "Traceback" not in stats.stderr
    done = subprocess.run([KREPIS, "migrate", "--storage", str(store), "--json"], capture_output=True,
                          text=True, check=True)
    assert json.loads(done.stdout) == {"storage": str(store), "from_format": 1, "to_format": 4,
                                       "entries": 305, "counters": 9}
    text = subprocess.run([KREPIS, "migrate", "--storage", str(store)], capture_output=True, text=True,
                          check=True)
    assert "already in storage format 4" in text.stdout


def _bulk(n: int, seed: int = 1) -> tuple[list[TransactionLog], dict[str, int]]:
    rnd = random.Random(seed)
    logs = []
    for i in range(n):
        pick = i % 2 if rnd.random() > 0.01 else 2
        status = (LogStatus.Started, LogStatus.Completed, LogStatus.Failed)[pick]
        logs.append(TransactionLog(1_700_000_000_000 + i // 3 - rnd.randrange(3), f"op{i % 20}",
                                   f"{rnd.getrandbits(128):032x}"[:36] if i % 5 else f"req-{i // 2}",
                                   status, duration_us=i if status is not LogStatus.Started else None,
                                   error="boom" if status is LogStatus.Failed else None))
    counters = {f"op{k}": n // 20 + (k < n % 20) for k in range(20)}
    return logs, counters


def test_killed_at_random_points_leaves_the_old_store_or_the_complete_new_one(tmp_path: Path) -> None:
    logs, counters = _bulk(20_000)
    original = tmp_path / "original"
    write_lmdb_store(original, logs, counters, first_seq=17)
    digest = hashlib.sha256((original / "data.mdb").read_bytes()).hexdigest()
    # How long a whole migration takes here, to spread the kills over it.
    timing = tmp_path / "timing"
    shutil.copytree(original, timing)
    began = time.monotonic()
    subprocess.run([KREPIS, "migrate", "--storage", str(timing)], check=True, capture_output=True)
    span = time.monotonic() - began
    rnd = random.Random(42)
    outcomes = {"old": 0, "new": 0}
    for attempt in range(8):
        store = tmp_path / f"s{attempt}"
        shutil.copytree(original, store)
        child = subprocess.Popen([KREPIS, "migrate", "--storage", str(store)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rnd.uniform(0.0, span * 1.1))
        child.send_signal(signal.SIGKILL)
        child.wait()
        try:
            SovereignJournal(store, create=False).close()
        except NeedsMigrationError:
            outcomes["old"] += 1
            # the old store, untouched, byte for byte; and a new run completes it
            assert hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest() == digest
            assert migrate(store).entries == len(logs)
        else:
            outcomes["new"] += 1
        _check_migrated(store, logs, counters)
    assert outcomes["old"] > 0, outcomes  # the kills did land mid-migration


def test_refuses_while_another_process_has_the_store_open(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import lmdb, sys, time; e = lmdb.open(sys.argv[1], max_dbs=8); "
         "print('open', flush=True); time.sleep(60)", str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(StorageError, match=rf"{store} is open in another process"):
            migrate(store)
    finally:
        holder.kill()
        holder.wait()
    assert migrate(store).entries == 305


def test_a_corrupt_format1_entry_stops_the_migration_and_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    env = lmdb.open(str(store), max_dbs=8)
    with env.begin(write=True) as txn:
        db = env.open_db(b"journal", txn=txn)
        key = next(iter(txn.cursor(db=db).iternext(values=False)))
        txn.put(key, b"{broken", db=db)
    env.close()
    digest = hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest()
    with pytest.raises(CorruptStorageError, match="not a valid TransactionLog"):
        migrate(store)
    assert hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest() == digest
    with pytest.raises(NeedsMigrationError):
        SovereignJournal(store)


def test_no_store_there(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="there is no krepis store"):
        migrate(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


# --- PostgreSQL ------------------------------------------------------------------------------

def _pg_format1(pg_url: str, logs: list[TransactionLog], counters: dict[str, int]) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(PG_SCHEMA_1)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO krepis_journal (timestamp, request_id, entry) VALUES (%s, %s, %s)",
                            [(g.timestamp, g.request_id, g.to_json()) for g in logs])
            cur.executemany("INSERT INTO krepis_stats VALUES (%s, %s)", list(counters.items()))
        conn.execute("INSERT INTO krepis_state VALUES ('entries', %s)", (len(logs),))


def test_postgres_format1_migrates_exactly(pg_url: str) -> None:
    logs, counters = read_lmdb_store(FIXTURE)
    _pg_format1(pg_url, logs, counters)
    with pytest.raises(NeedsMigrationError, match="krepis migrate"):
        SovereignJournal(pg_url)
    result = migrate(pg_url)
    assert (result.from_format, result.to_format, result.entries, result.counters) == (1, 2, 305, 9)
    _check_migrated(pg_url, logs, counters)
    assert migrate(pg_url).from_format == 2


def test_postgres_failed_migration_changes_nothing(pg_url: str) -> None:
    import psycopg

    logs, counters = read_lmdb_store(FIXTURE)
    _pg_format1(pg_url, logs, counters)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE krepis_journal SET entry = '{\"timestamp\":1,' WHERE seq = 3")
    with pytest.raises(StorageError, match="nothing was changed"):
        migrate(pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM krepis_meta WHERE key = 'format'").fetchone() == ("1",)
        assert conn.execute("SELECT count(*) FROM krepis_journal").fetchone() == (305,)
        assert conn.execute("SELECT to_regclass('krepis_entries')").fetchone() == (None,)
