"""The PostgreSQL adapter against a real server: the shared conformance suite, the journal API,
several writer processes, a server restart, a failover, and connection errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import pg
from krepis import (
    AsyncSovereignJournal,
    CorruptStorageError,
    Kernel,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis._model import encode_log
from krepis.storage import Storage, WriteRequest
from krepis.storage.postgres import PostgresStorage
from krepis.storage.postgres._schema import _TABLES, _connection_lost, _first_line, redact

from conftest import hammer_threads
from storage_conformance import OPERATIONS, StorageConformance


def _entry() -> tuple[TransactionLog, bytes]:
    log = TransactionLog(1, "op", "r", LogStatus.Completed)
    return (log, encode_log(log))

WORKERS = str(Path(__file__).with_name("workers.py"))


class TestPostgresConformance(StorageConformance):
    @pytest.fixture
    def make_storage(self, pg_url: str):  # type: ignore[no-untyped-def]
        def factory() -> Storage:
            return PostgresStorage(pg_url)

        return factory


def test_journal_api_and_format(pg_url: str) -> None:
    with SovereignJournal(pg_url) as journal:
        assert journal.path == redact(pg_url)
        journal.log_transaction(TransactionLog(1234567890, "test_op", "req-001", LogStatus.Completed))
        assert journal.record(TransactionLog(1000, "a", "r", LogStatus.Started), increment="a") == 1
        assert journal.record(TransactionLog(1000, "a", "r", LogStatus.Started), increment="a") == 2
        journal.log_transaction(TransactionLog(999, "b", "r", LogStatus.Failed, duration_us=5, error="x"))
        assert journal.journal_count() == 4
        assert journal.op_counts() == {"a": 2}
        assert [e.timestamp for e in journal.get_recent_logs(10)] == [1234567890, 1000, 1000, 999]
        assert [e.op_name for e in journal.query(status=LogStatus.Failed)] == ["b"]
        with pytest.raises(ValidationError):
            journal.increment_op_count("")
        assert journal.journal_count() == 4
    # the stored row follows docs/storage-format.md; the leaf hash covers the spec's JSON
    import hashlib

    import psycopg

    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT seq, timestamp, op_name, request_id, status, duration_us, error, leaf "
                            "FROM krepis_entries ORDER BY seq LIMIT 1").fetchall()
    canonical = b'{"timestamp":1234567890,"op_name":"test_op","request_id":"req-001","status":"Completed"}'
    assert rows[0] == (0, 1234567890, "test_op", "req-001", 2, None, None,
                       hashlib.sha256(b"\x00" + canonical).digest())
    with SovereignJournal(pg_url) as journal:  # reopen: schema creation is idempotent
        assert journal.recover_op_count("a") == 2
        journal.clear_all()
        assert journal.journal_count() == 1 and journal.op_counts() == {}
        assert journal.query()[0].request_id == "cleared 4 entries, 1 counters (log 0 ended, log 1 begins)"
        journal.verify()


def test_kernel_cli_and_asyncio_on_postgres(pg_url: str, tmp_path: Path) -> None:
    with Kernel(pg_url) as kernel:
        for _ in range(5):
            kernel.increment_stats()
    with Kernel(pg_url) as kernel:
        assert kernel.stats.js_ops_called == 5
        assert kernel.run_script("let n; for (let i = 0; i < 3; i++) n = Krepis.ops.op_increment_stats();"
                                 ).ops_called == 3
        assert kernel.stats.js_ops_called == 8

    async def many() -> list[int | None]:
        async with AsyncSovereignJournal(pg_url) as journal:
            return list(await asyncio.gather(*(
                journal.record(TransactionLog(i, "async_op", f"t{i}", LogStatus.Completed), increment="async_op")
                for i in range(200))))

    values = asyncio.run(many())
    assert sorted(v for v in values if v is not None) == list(range(1, 201))
    krepis = Path(sys.executable).with_name("krepis")
    out = subprocess.run([krepis, "--storage", pg_url, "stats", "--json"], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert json.loads(out.stdout)["op_counts"]["js_ops_called"] == 8
    out = subprocess.run([krepis, "run", "--json"], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**os.environ, "KREPIS_STORAGE": pg_url})
    assert json.loads(out.stdout.splitlines()[-1])["js_ops_called"] == 11
    env = {**os.environ, "KREPIS_STORAGE": pg_url}
    logs = [json.loads(line) for line in subprocess.run(
        [krepis, "logs", "-n", "5", "--op", "op_increment_stats", "--json"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=env).stdout.splitlines()]
    assert len(logs) == 5 and all(e["op_name"] == "op_increment_stats" for e in logs)
    lines = subprocess.run([krepis, "export"], capture_output=True, text=True, check=True, cwd=tmp_path,
                           env=env).stdout.splitlines()
    with SovereignJournal(pg_url) as journal:
        assert len(lines) == journal.journal_count()
        assert [json.loads(line)["timestamp"] for line in lines] == sorted(json.loads(line)["timestamp"] for line in lines)
    subprocess.run([krepis, "clear", "--yes"], capture_output=True, check=True, cwd=tmp_path, env=env)
    with SovereignJournal(pg_url) as journal:
        assert journal.journal_count() == 1 and journal.op_counts() == {}  # the trace of the clear
        assert journal.query()[0].op_name == "journal_cleared"
    assert not (tmp_path / ".krepis").exists()


def test_interval_policy_on_postgres(pg_url: str) -> None:
    with SovereignJournal(pg_url, flush="interval:10ms") as journal:
        for i in range(20):
            journal.record(TransactionLog(i, "op", "r", LogStatus.Completed), increment="op")
        journal.flush()
    with SovereignJournal(pg_url) as journal:
        assert journal.recover_op_count("op") == 20


def test_threads_share_transactions(pg_url: str) -> None:
    with SovereignJournal(pg_url) as journal:
        hammer_threads(journal, 16, 40)
        assert journal.recover_op_count("op") == 640
        assert journal.journal_count() == 640


def _own_order_holds(ids: list[str], writers: int, per: int) -> None:
    assert sorted(ids) == sorted(f"p{n}-{i}" for n in range(writers) for i in range(per))
    for n in range(writers):
        own = [int(x.split("-")[1]) for x in ids if x.startswith(f"p{n}-")]
        assert own == list(range(per))


def test_four_nodes_one_database(pg_url: str) -> None:
    """4 processes standing in for 4 kernel nodes write to one database at once."""
    per = 150
    SovereignJournal(pg_url).close()
    procs = [subprocess.Popen([sys.executable, WORKERS, "append", pg_url, f"p{n}", str(per)]) for n in range(4)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0, 0]
    with SovereignJournal(pg_url) as journal:
        assert journal.recover_op_count("shared") == 4 * per
        assert journal.recover_op_count("plain") == 4 * per
        assert journal.journal_count() == 4 * per
        ids = [e.request_id for e in journal.iter_logs(newest_first=False)]
    _own_order_holds(ids, 4, per)


def test_nodes_racing_to_create_the_schema(pg_url: str) -> None:
    procs = [subprocess.Popen([sys.executable, WORKERS, "append", pg_url, f"p{n}", "10"]) for n in range(4)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0, 0, 0]
    with SovereignJournal(pg_url) as journal:
        assert journal.recover_op_count("shared") == 40


def _hammer(url: str, tag: str, stop: threading.Event, acked: list[str], errors: list[str]) -> None:
    """Write until told to stop, remembering what was acknowledged; survive errors."""
    journal = None
    i = 0
    while not stop.is_set():
        try:
            if journal is None:
                journal = SovereignJournal(url)
            rid = f"{tag}-{i}"
            i += 1
            journal.record(TransactionLog(i, "ha_op", rid, LogStatus.Completed), increment="ha_op")
            acked.append(rid)
        except StorageError as exc:
            errors.append(str(exc))
            if journal is not None and "cannot connect" in str(exc):
                journal.close()
                journal = None
            time.sleep(0.05)
    if journal is not None:
        journal.close()


def test_server_restart_loses_no_acknowledged_write(pg_cluster: pg.Cluster, pg_url: str) -> None:
    SovereignJournal(pg_url).close()
    stop = threading.Event()
    acked: list[str] = []
    errors: list[str] = []
    writers = [threading.Thread(target=_hammer, args=(pg_url, f"w{n}", stop, acked, errors)) for n in range(3)]
    for w in writers:
        w.start()
    time.sleep(0.5)
    started = pg_cluster.sql("SELECT pg_postmaster_start_time()")
    pg_cluster.stop("fast")
    time.sleep(0.3)
    pg_cluster.start()
    assert pg_cluster.sql("SELECT pg_postmaster_start_time()") != started  # it really restarted
    deadline = time.monotonic() + 30
    before = len(acked)
    while len(acked) < before + 30:  # writing resumes after the restart
        assert time.monotonic() < deadline, f"no progress after restart: {errors[-3:]}"
        time.sleep(0.05)
    stop.set()
    for w in writers:
        w.join()
    # Calls in flight may fail (the pool hides a restart that falls between calls); when they do,
    # the error names the server and says the outcome is unknown.
    assert all("PostgreSQL at" in e for e in errors), errors[:3]
    with SovereignJournal(pg_url) as journal:
        stored = [e.request_id for e in journal.iter_logs(op_name="ha_op")]
        assert len(stored) == len(set(stored)), "an entry was stored twice"
        missing = set(acked) - set(stored)
        assert not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
        assert journal.recover_op_count("ha_op") == len(stored) == journal.journal_count()


@pytest.mark.timeout(300)
def test_failover_to_a_synchronous_standby() -> None:
    """SIGKILL the primary mid-writes, promote the standby: every acknowledged write is there,
    and a journal opened with a multi-host URL carries on writing on the new primary."""
    missing = pg.binaries_missing()
    if missing:
        if os.environ.get(pg.REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL binaries missing: {missing}")
        pytest.skip(f"PostgreSQL binaries missing: {missing}")
    with pg.temporary_base() as base:
        primary = pg.Cluster(base, "primary")
        primary.init(replication=True)
        primary.start()
        standby = pg.Cluster(base, "standby")
        try:
            primary.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                        "-D", str(standby.data), "-R", "-X", "stream", "--no-sync")
            with open(standby.data / "postgresql.conf", "a") as f:
                f.write(f"port = {standby.port}\ncluster_name = 'standby1'\n")
            with open(standby.data / "postgresql.auto.conf", "a") as f:
                f.write("primary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=standby1'\n"
                        % primary.port)
            standby.start()
            primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
            primary.sql("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 60
            while primary.sql("SELECT sync_state FROM pg_stat_replication") != "sync":
                assert time.monotonic() < deadline, "the standby never became synchronous"
                time.sleep(0.1)
            url = (f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
                   "?target_session_attrs=read-write&connect_timeout=3")
            SovereignJournal(url).close()
            stop = threading.Event()
            acked: list[str] = []
            errors: list[str] = []
            writers = [threading.Thread(target=_hammer, args=(url, f"f{n}", stop, acked, errors))
                       for n in range(3)]
            for w in writers:
                w.start()
            deadline = time.monotonic() + 30
            while len(acked) < 100:
                assert time.monotonic() < deadline, errors[-3:]
                time.sleep(0.02)
            primary.kill9()
            standby.run("pg_ctl", "-D", str(standby.data), "-w", "promote")
            before = len(acked)
            deadline = time.monotonic() + 60
            while len(acked) < before + 50:  # the same multi-host URL now writes to the standby
                assert time.monotonic() < deadline, f"no writes after failover: {errors[-3:]}"
                time.sleep(0.05)
            stop.set()
            for w in writers:
                w.join()
            print(f"failover: {before} acknowledged before, {len(acked) - before} after; "
                  f"{len(errors)} failed calls, e.g. {errors[:1]!r}")
            new_primary = f"postgresql://postgres@127.0.0.1:{standby.port}/postgres"
            with SovereignJournal(new_primary) as journal:
                stored = [e.request_id for e in journal.iter_logs(op_name="ha_op")]
                assert len(stored) == len(set(stored))
                lost = set(acked) - set(stored)
                assert not lost, f"acknowledged on the old primary but lost: {sorted(lost)[:5]}"
                assert journal.recover_op_count("ha_op") == len(stored)
        finally:
            standby.stop("immediate")
            primary.stop("immediate")


# --- connection errors: one clear line naming the host, never the password ----------------------

def test_unreachable_server() -> None:
    port = pg.free_port()
    url = f"postgresql://postgres:secret-pw@127.0.0.1:{port}/postgres?connect_timeout=2"
    with pytest.raises(StorageError, match=rf"cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:{port}/postgres") as info:
        SovereignJournal(url)
    assert "secret-pw" not in str(info.value)
    assert info.value.path == f"postgresql://postgres@127.0.0.1:{port}/postgres"


def test_wrong_credentials(pg_cluster: pg.Cluster) -> None:
    url = pg_cluster.url("postgres", user="krepis_pw", password="wrong-password")
    with pytest.raises(StorageError, match="password authentication failed") as info:
        SovereignJournal(url)
    assert "wrong-password" not in str(info.value) and f"127.0.0.1:{pg_cluster.port}" in str(info.value)
    with SovereignJournal(pg_cluster.url("postgres", user="krepis_pw", password="right-password")) as ok:
        assert ok.path.startswith("postgresql://krepis_pw@")


def test_missing_database(pg_cluster: pg.Cluster) -> None:
    with pytest.raises(StorageError, match='database "no_such_db" does not exist'):
        SovereignJournal(pg_cluster.url("no_such_db"))


def test_cli_error_is_one_line(pg_cluster: pg.Cluster, tmp_path: Path) -> None:
    krepis = Path(sys.executable).with_name("krepis")
    url = pg_cluster.url("postgres", user="krepis_pw", password="wrong-password")
    proc = subprocess.run([krepis, "--storage", url, "stats"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot connect to PostgreSQL at")
    assert "wrong-password" not in proc.stderr


def test_unknown_format_is_refused(pg_url: str) -> None:
    SovereignJournal(pg_url).close()
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE krepis_meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(CorruptStorageError, match="format 99"):
        SovereignJournal(pg_url)


def test_bench_adds_postgres_rows_in_a_temporary_schema(pg_url: str, tmp_path: Path) -> None:
    SovereignJournal(pg_url).close()  # the user's own journal tables exist and must stay untouched
    krepis = Path(sys.executable).with_name("krepis")
    proc = subprocess.run([krepis, "bench", "--seconds", "0.05", "--large", "2000", "--storage", pg_url, "--json"],
                          capture_output=True, text=True, check=True, cwd=tmp_path)
    rows = json.loads(proc.stdout)["rows"]
    pg_rows = [r for r in rows if r["name"].startswith("PostgreSQL")]
    assert len(pg_rows) == 3 and all(r["ops"] > 0 for r in pg_rows)
    import psycopg

    with psycopg.connect(pg_url) as conn:
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'krepis_bench%'").fetchall()
        assert schemas == []
    with SovereignJournal(pg_url) as journal:
        assert journal.journal_count() == 0


def test_create_false_and_postgres_scheme(pg_url: str) -> None:
    with pytest.raises(StorageError, match=r"there is no krepis journal at postgresql://postgres@127\.0\.0\.1"):
        SovereignJournal(pg_url, create=False)
    short = "postgres://" + pg_url.split("://", 1)[1]
    with SovereignJournal(short) as journal:  # the postgres:// scheme selects PostgreSQL too
        journal.increment_op_count("x")
    with SovereignJournal(pg_url, create=False) as journal:
        assert journal.recover_op_count("x") == 1


PG_TAMPERING = [
    ("edit a field", "UPDATE krepis_entries SET duration_us = 99 WHERE seq = 300",
     "entry 300 does not match its leaf hash"),
    ("edit a field and its leaf hash",
     "UPDATE krepis_entries SET duration_us = 99, leaf = sha256('\\x00'::bytea || convert_to("
     "'{\"timestamp\":300,\"op_name\":\"op0\",\"request_id\":\"r300\",\"status\":\"Completed\","
     "\"duration_us\":99}', 'UTF8')) WHERE seq = 300",
     "Merkle hash of entries 256…511"),
    ("delete an entry", "DELETE FROM krepis_entries WHERE seq = 40", "entry 40 is missing"),
    ("swap two entries", "UPDATE krepis_entries SET seq = 1000000 WHERE seq = 3; "
                         "UPDATE krepis_entries SET seq = 3 WHERE seq = 4; "
                         "UPDATE krepis_entries SET seq = 4 WHERE seq = 1000000",
     "Merkle hash of entries 0…255"),
    ("add an entry", "INSERT INTO krepis_entries SELECT 700, timestamp, op_name, request_id, status, "
                     "duration_us, error, leaf FROM krepis_entries WHERE seq = 5",
     "entries end before seq 701"),
    ("change a tree node", "UPDATE krepis_tree SET hash = '\\x00' WHERE level = 8 AND idx = 1",
     "Merkle hash of entries 256…511 \\(height 8\\) does not match"),
]


@pytest.mark.parametrize(("how", "sql", "message"), PG_TAMPERING, ids=[t[0] for t in PG_TAMPERING])
def test_verify_names_what_was_tampered_with(pg_url: str, how: str, sql: str, message: str) -> None:
    import psycopg

    with SovereignJournal(pg_url) as journal:
        for i in range(700):
            journal.log_transaction(TransactionLog(i, f"op{i % 3}", f"r{i}", LogStatus.Completed,
                                                   duration_us=i))
        assert journal.verify().entries == 700
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]
        with pytest.raises(CorruptStorageError, match=message):
            journal.verify()


#: Every operation of the adapter and the words its failure message uses for it.
def test_postgres_failures_name_the_operation_and_the_location(pg_url: str) -> None:
    """A statement that fails (here: a lock held elsewhere past lock_timeout) is a StorageError
    naming the location and what krepis was doing, for every operation of the adapter."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        db = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"ALTER DATABASE {db} SET lock_timeout = '100ms'")
    storage = PostgresStorage(pg_url)
    try:
        storage.write_batch([WriteRequest([_entry()], [b"x"])])
        with psycopg.connect(pg_url) as holder:
            holder.execute(f"LOCK TABLE {', '.join(_TABLES)}, krepis_meta IN ACCESS EXCLUSIVE MODE")
            for doing, call in OPERATIONS:
                with pytest.raises(StorageError) as caught:
                    call(storage)
                assert type(caught.value) is StorageError and caught.value.path == storage.location
                assert str(caught.value).startswith(
                    f"PostgreSQL at {storage.location} failed while {doing}: "), str(caught.value)
                assert "lock timeout" in str(caught.value)
            holder.rollback()
        assert storage.entry_count() == 1 and storage.get_counts() == {"x": 1}  # nothing changed
    finally:
        storage.close()


def test_postgres_a_missing_log_row_or_entry_is_corruption_naming_the_location(pg_url: str) -> None:
    storage = PostgresStorage(pg_url)
    try:
        storage.write_batch([WriteRequest([_entry(), _entry(), _entry()], [b"x"])])
        _sql(pg_url, "DELETE FROM krepis_entries WHERE seq = 1")
        calls: list[tuple[Any, str]] = [
            (lambda: storage.leaf_hashes(0, 0, 3), "entries 0…2 are not all there"),
            (lambda: storage.drop_prefix(0, 3), "entries 0…2 are not all there (2 found)")]
        for call, message in calls:
            with pytest.raises(CorruptStorageError) as caught:
                call()
            assert caught.value.path == storage.location
            assert str(caught.value) == f"PostgreSQL at {storage.location}: {message}"
        assert storage.live_first_seq() == 0 and storage.leaf_hashes(0, 2, 1) != []  # nothing removed
        _sql(pg_url, "DELETE FROM krepis_log")
        reads: list[Any] = [storage.entry_count, storage.next_seq, storage.tree_head, storage.live_first_seq,
                            storage.clear, lambda: storage.write_batch([WriteRequest([_entry()], [])])]
        for call in reads:
            with pytest.raises(CorruptStorageError) as caught:
                call()
            assert caught.value.path == storage.location
            assert str(caught.value) == f"PostgreSQL at {storage.location}: the krepis_log row is missing"
    finally:
        storage.close()


def _sql(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def test_postgres_only_a_lost_connection_leaves_a_write_s_outcome_unknown() -> None:
    class Failure(Exception):
        def __init__(self, sqlstate: str | None) -> None:
            self.sqlstate = sqlstate

    for state, lost in ((None, True), ("08006", True), ("08003", True), ("57P01", True), ("57P03", True),
                        ("55P03", False), ("40001", False), ("23505", False), ("57014", False)):
        assert _connection_lost(Failure(state)) is lost, state
    assert _connection_lost(Exception()) is True  # no SQLSTATE at all: the client lost the connection


def test_postgres_an_engine_error_without_text_is_named_by_its_type() -> None:
    assert _first_line(RuntimeError()) == "RuntimeError"
    assert _first_line(RuntimeError("first\nsecond")) == "first"


def test_postgres_verify_names_damage_and_leaves_the_connections_usable(pg_url: str) -> None:
    storage = PostgresStorage(pg_url)
    try:
        storage.write_batch([WriteRequest([_entry() for _ in range(258)], [b"x"])])
        assert storage.drop_prefix(0, 256) == 256  # verify resumes the tree after whole tiles
        for _ in range(3):  # verify borrows a pooled connection; it goes back in autocommit mode
            storage.verify()
            storage.write_batch([WriteRequest([], [b"x"])])  # a counter-only write: one statement
        storage.close()
        storage = PostgresStorage(pg_url)
        assert storage.get_count(b"x") == 4  # one per request
        where = f"PostgreSQL at {storage.location}"
        damage = [("UPDATE krepis_entries SET request_id = 'other' WHERE seq = 257",
                   f"{where}: entry 257 does not match its leaf hash"),
                  ("UPDATE krepis_entries SET request_id = 'r' WHERE seq = 257; "
                   "UPDATE krepis_log SET entries = entries + 1", f"{where}: the entry count says 3; there are 2"),
                  ("UPDATE krepis_meta SET value = 'x' WHERE key = 'live'", f"{where}: malformed live record 'x'"),
                  ("DELETE FROM krepis_log", f"{where}: the krepis_log row is missing")]
        for sql, message in damage:
            _sql(pg_url, sql)
            with pytest.raises(CorruptStorageError) as caught:
                storage.verify()
            assert (str(caught.value), caught.value.path) == (message, storage.location)
    finally:
        storage.close()


def test_postgres_no_connection_within_the_pool_timeout_names_the_location(pg_url: str) -> None:
    """The server stops accepting connections to the database and the pooled one is gone: the
    next read and the next write fail after the pool's timeout (connect_timeout + 5 s)."""
    url = pg_url + "?connect_timeout=1"
    storage = PostgresStorage(url)
    db = url.rsplit("/", 1)[1].split("?")[0]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    try:
        _sql(admin, f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        _sql(admin, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        for call in (storage.entry_count, lambda: storage.write_batch([WriteRequest([_entry()], [b"x"])])):
            started = time.monotonic()
            with pytest.raises(StorageError) as caught:
                call()
            assert time.monotonic() - started >= 5.9  # the pool waits connect_timeout + 5 s
            assert str(caught.value) == (f"cannot connect to PostgreSQL at {storage.location} "
                                         "(no connection within the pool timeout)")
            assert caught.value.path == storage.location
    finally:
        storage.close()
        _sql(admin, f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")


def test_postgres_damaged_rows_are_corruption_naming_the_location(pg_url: str) -> None:
    """Each malformed entry column, and a tree record that does not fit the sequence."""
    storage = PostgresStorage(pg_url)
    where = f"PostgreSQL at {storage.location}"
    try:
        storage.write_batch([WriteRequest([_entry()], [])])
        import psycopg

        with psycopg.connect(pg_url, autocommit=True) as conn:  # damage the schema's CHECKs forbid
            for (name,) in conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'c' "
                                        "AND conrelid = 'krepis_entries'::regclass").fetchall():
                conn.execute(f"ALTER TABLE krepis_entries DROP CONSTRAINT {name}")
        for damage in ("status = 9", "op_name = ''", "request_id = ''", "error = '\\xff'::bytea",
                       "error = ''::bytea"):
            _sql(pg_url, f"UPDATE krepis_entries SET {damage} WHERE seq = 0")
            with pytest.raises(CorruptStorageError) as caught:
                storage.get_entry(0)
            assert (str(caught.value), caught.value.path) == (
                f"{where}: entry 0 is not a valid TransactionLog", storage.location), damage
            _sql(pg_url, "UPDATE krepis_entries SET status = 2, op_name = 'op', request_id = 'r', error = NULL")
            assert storage.get_entry(0) is not None
        for damage in ("frontier = frontier || frontier",  # two hashes for one leaf
                       "frontier = substring(frontier from 2)",  # not whole hashes
                       "first_seq = next_seq + 1"):  # a negative size (-1 has one bit set, as has 1)
            _sql(pg_url, f"UPDATE krepis_log SET {damage}")
            with pytest.raises(CorruptStorageError) as caught:
                storage.write_batch([WriteRequest([_entry()], [])])
            assert (str(caught.value), caught.value.path) == (
                f"{where}: the Merkle tree record does not match the sequence", storage.location), damage
            _sql(pg_url, "UPDATE krepis_log SET first_seq = 0, frontier = (SELECT leaf FROM krepis_entries)")
            assert storage.entry_count() == 1 and storage.next_seq() == 1
    finally:
        storage.close()


def test_postgres_schema_checks_name_the_location(pg_url: str) -> None:
    from krepis import NeedsMigrationError

    where = redact(pg_url)
    with pytest.raises(StorageError) as caught:
        PostgresStorage(pg_url, create=False)
    assert (str(caught.value), caught.value.path) == (f"there is no krepis journal at {where}", where)
    PostgresStorage(pg_url).close()
    _sql(pg_url, "DROP TABLE krepis_ops, krepis_stats")
    with pytest.raises(CorruptStorageError) as caught:
        PostgresStorage(pg_url, create=False)
    assert caught.value.path == where and "missing: krepis_ops, krepis_stats" in str(caught.value)
    for value, kind in (("1", NeedsMigrationError), ("9", CorruptStorageError)):
        _sql(pg_url, f"UPDATE krepis_meta SET value = '{value}' WHERE key = 'format'")
        with pytest.raises(kind) as caught:
            PostgresStorage(pg_url)
        assert caught.value.path == where and f"tables of format {value}" in str(caught.value)
    _sql(pg_url, "DELETE FROM krepis_meta")
    with pytest.raises(CorruptStorageError, match="tables of format unknown; this krepis reads format 2"):
        PostgresStorage(pg_url)
    _sql(pg_url, "DROP TABLE krepis_meta; CREATE TABLE krepis_meta (x int)")  # not krepis's table
    with pytest.raises(StorageError) as caught:
        PostgresStorage(pg_url)
    assert caught.value.path == where
    assert str(caught.value).startswith(f"cannot prepare the krepis tables at {where}: column")


def test_postgres_durable_decides_synchronous_commit(pg_url: str) -> None:
    for kwargs, expected in (({}, "on"), ({"durable": True}, "on"), ({"durable": False}, "off")):
        storage = PostgresStorage(pg_url, **kwargs)
        try:
            assert storage._run("reading a setting", "SHOW synchronous_commit") == [(expected,)], kwargs
        finally:
            storage.close()


def test_postgres_without_psycopg_or_with_a_bad_url_says_what_to_do(
        pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StorageError) as caught:
        PostgresStorage(pg_url + "?bogus=1")
    assert caught.value.path == redact(pg_url + "?bogus=1")  # libpq knows no parameter 'bogus'
    assert str(caught.value).startswith("invalid PostgreSQL URL (not shown, it may contain a password)")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(StorageError) as caught:
        PostgresStorage(pg_url)
    assert (str(caught.value), caught.value.path) == (
        "a postgresql:// storage needs psycopg: pip install 'krepis-journal[postgres]' (or "
        "'.[postgres]' in a checkout)", redact(pg_url))


def test_postgres_a_connection_the_server_closed_is_replaced_before_use(pg_url: str) -> None:
    """The pool checks a connection before lending it: a backend the server terminated while idle
    costs nothing, for a read as for a write (which is then certain not to have been sent)."""
    storage = PostgresStorage(pg_url)
    db = pg_url.rsplit("/", 1)[1]
    try:
        for _ in range(2):
            storage.write_batch([WriteRequest([_entry()], [b"x"])])
            _sql(pg_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' "
                         "AND application_name = 'krepis'")
            assert storage.get_count(b"x") >= 1
        assert storage.entry_count() == 2
    finally:
        storage.close()
