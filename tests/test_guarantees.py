"""Guarantees the README and docs state, each with a test that fails when it is broken.

Every test here was seen failing against a copy of the code with that guarantee deliberately
broken (docs/testing.md lists them). Failures are real: a counter at its largest value makes
the engine refuse the write; a PostgreSQL backend is terminated while it waits for a lock.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from krepis import (
    AsyncSovereignJournal,
    CorruptStorageError,
    Kernel,
    LogStatus,
    SovereignJournal,
    SovereignStats,
    StorageError,
    TransactionLog,
)
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage
from test_bad_storage import _poke

MAX_U64 = struct.pack("<Q", 2**64 - 1)


def _full_counter(store: Path, name: str) -> None:
    """Set counter ``name`` of the (closed) LMDB store to 2**64-1: its next increment fails."""
    _poke(store, b"stats", b"op_count:" + name.encode(), MAX_U64)


def _new_store(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "setup", "r", LogStatus.Completed), increment="setup")


# --- the kernel: one transaction per step, memory after storage ----------------------------------

class Recording(LmdbStorage):
    """The real LMDB adapter, recording every batch of write requests it commits."""

    batches: ClassVar[list[list[WriteRequest]]] = []

    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        type(self).batches.append(list(requests))
        return super().write_batch(requests)


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[Recording]:
    import krepis.storage as port

    Recording.batches = []

    def open_recording(loc: str, durable: bool = True, create: bool = True) -> Recording:
        return Recording(loc, durable=durable, create=create)

    monkeypatch.setattr(port, "open_storage", open_recording)
    monkeypatch.setattr("krepis.journal._journal.open_storage", open_recording)
    return Recording


def _requests(recording: type[Recording]) -> list[tuple[list[str], list[str]]]:
    """Each committed request as ([op names of its entries], [counters it bumps])."""
    return [([log.op_name for log, _ in req.entries], [n.decode() for n in req.increments])
            for batch in recording.batches for req in batch]


def test_kernel_writes_entry_and_counter_in_one_request(store: Path, recording: type[Recording]) -> None:
    kernel = Kernel(store)

    @kernel.op("resize")
    def resize(n: int) -> int:
        return n * 2

    with kernel:
        kernel.increment_stats()
        assert kernel.call("resize", 21) == 42
    assert _requests(recording) == [
        (["kernel_init"], ["contexts_created"]),           # boot: the entry and its counter
        (["op_increment_stats"], ["js_ops_called"]),       # increment_stats: both, one request
        (["resize"], ["resize"]),                          # call: Started with its count
        (["resize"], []),                                  # Completed
        (["kernel_shutdown"], []),
    ]


def test_increment_stats_that_fails_writes_nothing_and_changes_nothing(store: Path) -> None:
    _new_store(store)
    _full_counter(store, "js_ops_called")
    with Kernel(store) as kernel:
        before = kernel.journal.journal_count()
        assert kernel.stats.js_ops_called == 2**64 - 1
        with pytest.raises(StorageError, match="would overflow"):
            kernel.increment_stats()
        assert kernel.journal.journal_count() == before  # no entry without its counter
        assert kernel.stats.js_ops_called == 2**64 - 1   # memory follows storage only
        with pytest.raises(StorageError, match="would overflow"):
            kernel.call("op_increment_stats")
        assert kernel.journal.journal_count() == before


def test_a_call_whose_count_fails_journals_nothing(store: Path) -> None:
    _new_store(store)
    _full_counter(store, "resize")
    kernel = Kernel(store)
    ran: list[int] = []

    @kernel.op("resize")
    def resize(n: int) -> int:
        ran.append(n)
        return n

    with kernel:
        before = kernel.journal.journal_count()
        with pytest.raises(StorageError, match="would overflow"):
            kernel.call("resize", 1)
        assert ran == []  # the op never ran: its Started entry and count were refused together
        assert kernel.journal.journal_count() == before
        assert kernel.journal.query(op_name="resize") == []


def test_a_boot_whose_write_fails_leaves_stats_and_storage_untouched(store: Path) -> None:
    _new_store(store)
    _full_counter(store, "contexts_created")
    with SovereignJournal(store) as journal:
        before = journal.journal_count()
        kernel = Kernel(journal)
        with pytest.raises(StorageError, match="would overflow"):
            kernel.boot()
        assert not kernel.running
        assert kernel.stats == SovereignStats() and kernel.recovered == SovereignStats()
        assert journal.journal_count() == before  # no kernel_init without its count
        assert journal.query(op_name="kernel_init") == []


def test_the_original_error_survives_a_failure_to_journal_it(store: Path) -> None:
    journal = SovereignJournal(store)
    with pytest.raises(ZeroDivisionError) as info:
        with Kernel(journal):
            journal.close()  # journaling kernel_error will fail
            1 / 0  # noqa: B018
    notes = getattr(info.value, "__notes__", [])
    assert any("journaling kernel_error failed as well" in n and "closed" in n for n in notes), notes


# --- asyncio ---------------------------------------------------------------------------------

class Slow(LmdbStorage):
    """The real adapter, taking a little longer per commit: an await that returned before its
    commit finished would be caught in the act (the check does not depend on the delay)."""

    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        time.sleep(0.05)
        return super().write_batch(requests)


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> None:
    def open_slow(loc: str, durable: bool = True, create: bool = True) -> Slow:
        return Slow(loc, durable=durable, create=create)

    monkeypatch.setattr("krepis.journal._journal.open_storage", open_slow)


def test_an_awaited_write_is_committed_when_it_returns(store: Path, slow: None) -> None:
    async def main() -> None:
        async with AsyncSovereignJournal(store) as journal:
            sync = journal.sync_journal
            await journal.log_transaction(TransactionLog(1, "a", "r1", LogStatus.Completed))
            assert sync.journal_count() == 1  # read at once, without yielding to the writer
            assert await journal.record(TransactionLog(2, "a", "r2", LogStatus.Completed)) is None
            assert sync.journal_count() == 2
            assert await journal.record(TransactionLog(3, "a", "r3", LogStatus.Completed), increment="a") == 1
            assert sync.journal_count() == 3 and sync.recover_op_count("a") == 1
            assert await journal.increment_op_count("a") == 2
            assert sync.recover_op_count("a") == 2

    asyncio.run(main())


def test_a_write_cancelled_before_the_writer_took_it_still_lands(store: Path) -> None:
    gate = threading.Event()

    async def main() -> None:
        async with AsyncSovereignJournal(store) as journal:
            busy = journal._writer.submit(gate.wait)  # the writer thread is busy: nothing is taken
            task = asyncio.create_task(
                journal.record(TransactionLog(1, "a", "cancelled", LogStatus.Completed), increment="a"))
            for _ in range(1000):
                await asyncio.sleep(0)
                if journal._queue:
                    break
            assert journal._queue and not busy.done()  # queued, and not yet taken by the writer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gate.set()

    try:
        asyncio.run(main())
    finally:
        gate.set()
    with SovereignJournal(store) as journal:
        assert [e.request_id for e in journal.query()] == ["cancelled"]
        assert journal.recover_op_count("a") == 1


# --- the interval syncer -------------------------------------------------------------------

def test_the_background_sync_waits_at_most_the_interval(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float | None] = []
    real_event = threading.Event

    class RecordingEvent(real_event):  # type: ignore[valid-type,misc]
        def wait(self, timeout: float | None = None) -> bool:
            if threading.current_thread().name.startswith("krepis-sync"):
                waits.append(timeout)
            return super().wait(timeout)

    monkeypatch.setattr(threading, "Event", RecordingEvent)
    journal = SovereignJournal(store, flush="interval:250ms")
    try:
        journal.increment_op_count("x")
        deadline = time.monotonic() + 30
        while not waits:
            assert time.monotonic() < deadline, "the syncer never waited"
            time.sleep(0.01)
    finally:
        journal.close()
    assert waits and all(w == pytest.approx(0.25) for w in waits), waits


def test_a_failed_background_sync_is_reported_by_the_next_call(store: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    failed = threading.Event()

    class FailingSync(LmdbStorage):
        def sync(self) -> None:
            if threading.current_thread().name.startswith("krepis-sync"):
                failed.set()
                raise OSError(5, "Input/output error")
            super().sync()

    def open_failing(loc: str, durable: bool = True, create: bool = True) -> FailingSync:
        return FailingSync(loc, durable=durable, create=create)

    monkeypatch.setattr("krepis.journal._journal.open_storage", open_failing)
    journal = SovereignJournal(store, flush="interval:5ms")
    try:
        journal.increment_op_count("x")
        assert failed.wait(30)
        syncer = journal._syncer
        assert syncer is not None
        deadline = time.monotonic() + 30
        while syncer.error is None:  # the syncer records the failure right after raising it
            assert time.monotonic() < deadline
            time.sleep(0.001)
        for call in (lambda: journal.increment_op_count("x"), journal.flush):
            with pytest.raises(StorageError,
                               match=r"background sync of .* failed: .*Input/output error") as info:
                call()
            assert info.value.path == journal.path
    finally:
        with pytest.raises(StorageError, match="background sync"):
            journal.close()


# --- the sandbox ---------------------------------------------------------------------------

def test_deno_is_granted_no_permission_at_all(store: Path) -> None:
    kernel = Kernel(store)
    states: dict[str, str] = {}

    @kernel.op("report")
    def report(name: str, state: str) -> None:
        states[name] = state

    names = ["read", "write", "net", "env", "sys", "run", "ffi", "import"]
    with kernel:
        kernel.run_script(
            f"for (const name of {names!r}) Krepis.ops.report(name, "
            "Deno.permissions.querySync({ name }).state);\n")
    assert set(states) == set(names)
    assert {n: s for n, s in states.items() if s == "granted"} == {}


def test_console_output_goes_to_stderr_never_into_the_protocol(store: Path) -> None:
    import io

    sink = io.BytesIO()
    with Kernel(store) as kernel:
        result = kernel.run_script(
            "console.log('to-log'); console.info('to-info'); console.debug('to-debug');"
            "console.warn('to-warn'); console.error('to-error'); Krepis.ops.op_increment_stats();",
            stderr=sink)  # type: ignore[arg-type]
    assert result.ops_called == 1
    assert sink.getvalue().decode().split() == ["to-log", "to-info", "to-debug", "to-warn", "to-error"]


# --- PostgreSQL ----------------------------------------------------------------------------

#: The krepis backends of the test's own database that wait for a lock (the server may be shared).
_WAITING = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'krepis' AND wait_event_type = 'Lock'")


def _pg(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def slow_walwriter(pg_cluster: Any) -> Iterator[None]:
    """The WAL writer flushes asynchronous commits only every 10 s (the most PostgreSQL allows)."""
    pg_cluster.sql("ALTER SYSTEM SET wal_writer_delay = '10s'")
    pg_cluster.sql("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        pg_cluster.sql("ALTER SYSTEM RESET wal_writer_delay")
        pg_cluster.sql("SELECT pg_reload_conf()")


def test_postgres_flush_makes_interval_writes_durable(pg_url: str, slow_walwriter: None) -> None:
    with SovereignJournal(pg_url, flush="interval:3600000ms") as journal:
        journal.increment_op_count("warm")  # the WAL writer may flush this one
        for i in range(5):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
        written = _pg(pg_url, "SELECT pg_current_wal_insert_lsn()")[0][0]
        journal.flush()
        flushed = _pg(pg_url, "SELECT pg_current_wal_flush_lsn()")[0][0]
        diff = _pg(pg_url, "SELECT pg_wal_lsn_diff(%s, %s)", (flushed, written))[0][0]
        assert diff >= 0, f"flush() returned with WAL up to {written} written but only {flushed} on disk"


def test_postgres_write_broken_mid_transaction_is_not_retried(pg_url: str) -> None:
    import psycopg

    with SovereignJournal(pg_url) as journal:
        errors: list[BaseException] = []

        def write() -> None:
            try:
                journal.record(TransactionLog(1, "op", "lost", LogStatus.Completed), increment="op")
            except BaseException as exc:
                errors.append(exc)

        with psycopg.connect(pg_url) as blocker:
            blocker.execute("SELECT * FROM krepis_log WHERE id = 1 FOR UPDATE")  # the writer waits
            writer = threading.Thread(target=write)
            writer.start()
            deadline = time.monotonic() + 30
            while True:
                waiting = _pg(pg_url, _WAITING)
                if waiting:
                    break
                assert time.monotonic() < deadline, "the write never waited for the lock"
                time.sleep(0.01)
            _pg(pg_url, "SELECT pg_terminate_backend(%s)", (waiting[0][0],))
            time.sleep(0.2)  # a retry (which must not happen) would now be waiting again
            blocker.rollback()
        writer.join(30)
        assert not writer.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
        message = str(errors[0])
        assert "whether this write committed is unknown" in message and "not retried" in message
        assert message.endswith("terminating connection due to administrator command")  # the reason
        assert errors[0].path == journal.path  # type: ignore[attr-defined]
        assert journal.journal_count() == 0 and journal.recover_op_count("op") == 0  # never stored


def test_postgres_journal_count_does_not_read_the_entries(pg_url: str, pg_cluster: Any) -> None:
    with SovereignJournal(pg_url) as journal:
        for i in range(3):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
    db = pg_url.rsplit("/", 1)[1]
    role = f"counter_{db}"
    _pg(pg_url, f"CREATE ROLE {role} LOGIN")
    _pg(pg_url, f"GRANT SELECT ON krepis_meta, krepis_log TO {role}")  # not krepis_entries
    with SovereignJournal(pg_cluster.url(db, user=role), create=False) as reader:
        assert reader.journal_count() == 3  # O(1): the count kept with the log, no scan
        with pytest.raises(StorageError, match="permission denied"):
            reader.get_recent_logs(1)  # the entries really are out of reach


def test_postgres_counters_are_locked_in_name_order(pg_url: str) -> None:
    """Two batches bumping the same counters in opposite orders: each pauses after locking its
    first counter row until both have got that far. Locking in name order, the second waits for
    the first row instead, and both commit; locking in request order would deadlock."""
    from krepis.storage.postgres._store import PostgresStorage

    storage = PostgresStorage(pg_url)
    try:
        storage.write_batch([WriteRequest((), [b"a", b"b"])])  # both rows exist: updates lock them
        _pg(pg_url, """
            CREATE FUNCTION pause_after_first() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF current_setting('krepis_test.paused', true) IS DISTINCT FROM 'yes' THEN
                    PERFORM set_config('krepis_test.paused', 'yes', true);
                    PERFORM pg_advisory_xact_lock_shared(4242);
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER pause AFTER UPDATE ON krepis_stats
                FOR EACH ROW EXECUTE FUNCTION pause_after_first();
        """)
        import psycopg

        errors: list[BaseException] = []

        def bump(order: list[bytes]) -> None:
            try:
                storage.write_batch([WriteRequest((), [name]) for name in order])
            except BaseException as exc:
                errors.append(exc)

        with psycopg.connect(pg_url, autocommit=True) as gate:
            gate.execute("SELECT pg_advisory_lock(4242)")
            threads = [threading.Thread(target=bump, args=(order,)) for order in ([b"a", b"b"], [b"b", b"a"])]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 30
            while len(_pg(pg_url, _WAITING)) < 2:
                assert time.monotonic() < deadline, "the two batches never both waited"
                time.sleep(0.01)
            gate.execute("SELECT pg_advisory_unlock(4242)")
            for t in threads:
                t.join(60)
        assert errors == []
        assert storage.get_counts() == {"a": 3, "b": 3}
    finally:
        storage.close()


def test_postgres_schema_is_created_under_its_advisory_lock(pg_url: str) -> None:
    """Nodes opening a new database at once create the tables one at a time: each takes the
    schema lock first (a racing CREATE ... IF NOT EXISTS can fail on the catalog's unique index)."""
    import psycopg

    from krepis.storage.postgres._schema import _LOCK_ID

    opened: list[BaseException | None] = []

    def open_store() -> None:
        try:
            SovereignJournal(pg_url).close()
            opened.append(None)
        except BaseException as exc:
            opened.append(exc)

    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        opener = threading.Thread(target=open_store)
        opener.start()
        deadline = time.monotonic() + 30
        while not _pg(pg_url, _WAITING + " AND wait_event = 'advisory'"):
            assert opener.is_alive(), "the store was opened without waiting for the schema lock"
            assert time.monotonic() < deadline, "the opener never waited for the schema lock"
            time.sleep(0.01)
        assert _pg(pg_url, "SELECT to_regclass('krepis_entries') IS NULL")[0][0]  # nothing yet
        holder.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
        opener.join(30)
    assert opened == [None]
    with SovereignJournal(pg_url, create=False) as journal:
        assert journal.journal_count() == 0


# --- stored data: never overwritten, never created where not asked -----------------------------

def test_create_false_on_an_existing_empty_directory_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StorageError, match=f"there is no krepis store at {empty}"):
        SovereignJournal(empty, create=False)
    assert list(empty.iterdir()) == []


def test_an_entry_is_never_overwritten_when_the_sequence_is_behind(store: Path) -> None:
    with SovereignJournal(store) as journal:
        for i in range(4):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
    _poke(store, b"meta", b"seq", struct.pack("<Q", 2))  # as if entries 2 and 3 were never counted
    with pytest.raises(CorruptStorageError) as info:  # appends would take seq 2: refused at the open
        SovereignJournal(store)
    assert str(info.value) == (f"storage at {store}: the sequence record says 2, but entry 3 exists; the "
                               "meta sequence is behind the entries")
    assert info.value.path == str(store)
    _poke(store, b"meta", b"seq", struct.pack("<Q", 4))
    with SovereignJournal(store) as journal:
        assert [e.request_id for e in journal.query(order="append", newest_first=False)] == [
            "r0", "r1", "r2", "r3"]


# --- the plane and the CLI -----------------------------------------------------------------

def test_krepis_call_passes_each_argument(store: Path) -> None:
    kernel = Kernel(store)
    seen: list[tuple[Any, ...]] = []

    @kernel.op("collect")
    def collect(*args: Any) -> int:
        seen.append(args)
        return len(args)

    @kernel.op("report")
    def report(value: Any) -> None:
        seen.append(("report", value))

    with kernel:
        kernel.run_script("Krepis.ops.report(Krepis.call('collect', 1, 'two', [3], {four: 4}));"
                          "Krepis.ops.report(Krepis.call('collect'));"
                          "Krepis.ops.report(Krepis.call('op_increment_stats'));")
    assert seen == [(1, "two", [3], {"four": 4}), ("report", 4), (), ("report", 0), ("report", 1)]


def _cli(*args: str, cwd: Path, ok: bool = True) -> Any:
    from test_cli import krepis

    return krepis(*args, cwd=cwd, ok=ok)


def test_cli_export_applies_every_filter(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        for i, (op, status) in enumerate([("a", LogStatus.Completed), ("a", LogStatus.Failed),
                                          ("b", LogStatus.Failed), ("a", LogStatus.Failed)]):
            journal.log_transaction(TransactionLog(1_700_000_000_000 + i, op, f"r{i}", status))

    def export(*filters: str) -> list[str]:
        out = _cli("export", "--storage", str(store), *filters, cwd=tmp_path).stdout
        return [line.split('"request_id":"')[1].split('"')[0] for line in out.splitlines()]

    assert export() == ["r0", "r1", "r2", "r3"]
    assert export("--op", "a") == ["r0", "r1", "r3"]
    assert export("--status", "failed") == ["r1", "r2", "r3"]
    assert export("--op", "a", "--status", "failed") == ["r1", "r3"]
    assert export("--request-id", "r2") == ["r2"]
    assert export("--since", "1700000000001", "--until", "1700000000003") == ["r1", "r2"]


def test_cli_since_digits_are_milliseconds(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.log_transaction(TransactionLog(1_700_000_000_000, "op", "early", LogStatus.Completed))
        journal.log_transaction(TransactionLog(1_700_000_000_500, "op", "late", LogStatus.Completed))
    out = _cli("export", "--storage", str(store), "--since", "1700000000400", cwd=tmp_path).stdout
    assert [line.split('"request_id":"')[1].split('"')[0] for line in out.splitlines()] == ["late"]
    refused = _cli("logs", "--storage", str(store), "--since", "1700000000", cwd=tmp_path, ok=False)
    assert refused.returncode != 0 and "looks like Unix seconds" in refused.stderr


def test_cli_allow_write_grants_exactly_that_directory(tmp_path: Path) -> None:
    out, other = tmp_path / "out", tmp_path / "other"
    out.mkdir()
    other.mkdir()
    script = tmp_path / "write.ts"
    script.write_text(f"Deno.writeTextFileSync({str(out / 'f.txt')!r}, 'written');\n"
                      f"try {{ Deno.writeTextFileSync({str(other / 'f.txt')!r}, 'x'); }} "
                      "catch (e) { console.error('denied: ' + e.name); }\n")
    _cli("run", str(script), "--storage", str(tmp_path / "s"), "--allow-write", str(out), cwd=tmp_path)
    assert (out / "f.txt").read_text() == "written"
    assert not (other / "f.txt").exists()
    (out / "f.txt").unlink()
    denied = _cli("run", str(script), "--storage", str(tmp_path / "s"), cwd=tmp_path, ok=False)
    assert denied.returncode == 1 and not (out / "f.txt").exists()


def test_postgres_a_refused_write_is_a_definite_failure(pg_url: str) -> None:
    """Only a broken connection leaves a write's outcome unknown; a write the server refused
    (here: a counter at the largest bigint) is a plain failure, and nothing of it is stored."""
    with SovereignJournal(pg_url) as journal:
        journal.record(TransactionLog(1, "op", "r0", LogStatus.Completed), increment="full")
        _pg(pg_url, "UPDATE krepis_stats SET value = 9223372036854775807 WHERE name = 'full'")
        with pytest.raises(StorageError, match=r"failed while writing: .*out of range") as info:
            journal.record(TransactionLog(2, "op", "r1", LogStatus.Completed), increment="full")
        assert "unknown" not in str(info.value) and info.value.path == journal.path
        assert journal.journal_count() == 1 and [e.request_id for e in journal.query()] == ["r0"]
        for seq in (2**63 - 1, 2**63, 2**64):
            with pytest.raises(KeyError, match=f"no entry with seq {seq}"):
                journal.entry(seq)
        for i in range(2, 201):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
        assert journal.entry(199).request_id == "r200"  # a seq past 126 (2 * 63) is found too
        _pg(pg_url, "DROP TABLE krepis_entries")
        with pytest.raises(CorruptStorageError, match=r"the krepis tables are missing "
                                                      r"\(.*krepis_entries.* does not exist\)") as missing:
            journal.get_recent_logs(1)
        assert missing.value.path == journal.path


def test_postgres_keeps_checkpoints_per_log(pg_url: str) -> None:
    from krepis import ValidationError
    from krepis.tlog._note import generate_signer

    first, second = generate_signer("example.com/one"), generate_signer("example.com/two")
    with SovereignJournal(pg_url) as journal:
        journal.log_transaction(TransactionLog(1, "op", "r0", LogStatus.Completed))
        one = journal.sign_checkpoint(first)
        journal.log_transaction(TransactionLog(2, "op", "r1", LogStatus.Completed))
        two = journal.sign_checkpoint(first)
        assert journal.checkpoints() == [(0, one), (0, two)] and journal.latest_checkpoint() == two
        journal.clear_all()
        with pytest.raises(ValidationError, match=r"example\.com/one"):
            journal.sign_checkpoint(first)  # that origin signed a checkpoint of the log that ended
        three = journal.sign_checkpoint(second)
        assert journal.checkpoints() == [(0, one), (0, two), (1, three)]
        assert journal.latest_checkpoint() == three and three.startswith("example.com/two\n1\n")
