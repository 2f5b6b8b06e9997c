"""``storage/postgres/_store`` (``PostgresStorage``) against a real server, for what the shared
conformance suite and ``tests/test_postgres.py`` leave open: the text of each failure on the
paths they do not reach, and the edges of each operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krepis import ClosedError, CorruptStorageError, LogStatus, StorageError, TransactionLog
from krepis._model import encode_log
from krepis.storage import Query, WriteRequest, open_storage
from krepis.storage.postgres import PostgresStorage


def _entry(ts: int = 1, op: str = "op", rid: str = "r") -> tuple[TransactionLog, bytes]:
    log = TransactionLog(ts, op, rid, LogStatus.Completed)
    return (log, encode_log(log))


def _sql(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def storage(pg_url: str) -> Iterator[PostgresStorage]:
    s = PostgresStorage(pg_url)
    yield s
    s.close()


@pytest.fixture
def locked(pg_url: str, storage: PostgresStorage) -> Iterator[PostgresStorage]:
    """``storage`` while another connection holds every krepis table past a short lock_timeout."""
    import psycopg

    db = _sql(pg_url, "SELECT current_database()")[0][0]
    _sql(pg_url, f"ALTER DATABASE {db} SET lock_timeout = '100ms'")
    storage.close()
    fresh = PostgresStorage(pg_url)  # its connections take the database's new setting
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE krepis_entries, krepis_log, krepis_tree, krepis_checkpoints, krepis_ops, "
                       "krepis_stats, krepis_meta IN ACCESS EXCLUSIVE MODE")
        try:
            yield fresh
        finally:
            holder.rollback()
            fresh.close()


def _failure(call: Any) -> str:
    with pytest.raises(StorageError) as caught:
        call()
    assert type(caught.value) is StorageError
    return str(caught.value)


def test_postgres_removing_a_setting_names_the_operation(locked: PostgresStorage) -> None:
    message = _failure(lambda: locked.set_setting("archive", None))
    assert message.startswith(f"PostgreSQL at {locked.location} failed while storing a setting: "), message


@pytest.mark.parametrize("engine", ["lmdb", "postgres"])
def test_a_closed_storage_says_so_even_for_a_call_that_reads_nothing(
        engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """As LMDB does: an empty range, a limit of 0, an empty either-of list or a seq no entry can
    have is answered only by an open storage."""
    location = str(tmp_path / "store") if engine == "lmdb" else request.getfixturevalue("pg_url")
    closed = open_storage(location)
    closed.close()
    calls: list[Any] = [
        lambda: closed.get_entry(-1), lambda: closed.get_entry(2**63),
        lambda: closed.scan(Query(), after=None, limit=0),
        lambda: closed.scan(Query(order="append"), after=None, limit=0),
        lambda: closed.scan(Query(op_names=()), after=None, limit=5),
        lambda: closed.scan(Query(statuses=()), after=None, limit=5),
        lambda: closed.leaf_hashes(0, 0, 0), lambda: closed.leaf_hashes(0, 3, -1)]
    for call in calls:
        with pytest.raises(ClosedError) as caught:
            call()
        assert str(caught.value) == f"the journal at {closed.location} is closed"


def test_postgres_a_scan_without_filters_reports_an_entry_of_no_status(
        pg_url: str, storage: PostgresStorage) -> None:
    """A time-ordered scan with no filter reads one index range, not one per status: an entry
    whose status is none of the three (damage the schema's CHECK forbids) is reported, never
    skipped."""
    storage.write_batch([WriteRequest([_entry(1, rid="a"), _entry(2, rid="b")], [])])
    for (name,) in _sql(pg_url, "SELECT conname FROM pg_constraint WHERE contype = 'c' "
                                "AND conrelid = 'krepis_entries'::regclass"):
        _sql(pg_url, f"ALTER TABLE krepis_entries DROP CONSTRAINT {name}")
    _sql(pg_url, "UPDATE krepis_entries SET status = 9 WHERE seq = 0")
    for query in (Query(), Query(newest_first=False), Query(since=0), Query(order="append")):
        with pytest.raises(CorruptStorageError) as caught:
            storage.scan(query, after=None, limit=10)
        assert (str(caught.value), caught.value.path) == (
            f"PostgreSQL at {storage.location}: entry 0 is not a valid TransactionLog", storage.location)


def test_postgres_a_filtered_time_scan_reports_an_entry_of_no_status(
        pg_url: str, storage: PostgresStorage) -> None:
    """A time-ordered scan by request id or op name reads one index range per status, and the
    ranges of every other status too: an entry whose status is none of the three (damage the
    schema's CHECK forbids; below, above or no status) is reported naming it, never skipped."""
    storage.write_batch([WriteRequest([_entry(1, rid="a"), _entry(2, rid="a"), _entry(3, rid="b")], [])])
    for (name,) in _sql(pg_url, "SELECT conname FROM pg_constraint WHERE contype = 'c' "
                                "AND conrelid = 'krepis_entries'::regclass"):
        _sql(pg_url, f"ALTER TABLE krepis_entries DROP CONSTRAINT {name}")
    _sql(pg_url, "ALTER TABLE krepis_entries ALTER COLUMN status DROP NOT NULL")
    queries = [Query(request_id="a"), Query(request_id="a", newest_first=False), Query(op_names=("op",)),
               Query(op_names=("op", "other"), request_id="a"), Query(request_id="a", since=0, until=5)]
    for status in ("0", "4", "-1", "NULL"):
        _sql(pg_url, f"UPDATE krepis_entries SET status = {status} WHERE seq = 1")
        for query in queries:
            with pytest.raises(CorruptStorageError) as caught:
                storage.scan(query, after=None, limit=10)
            assert (str(caught.value), caught.value.path) == (
                f"PostgreSQL at {storage.location}: entry 1 is not a valid TransactionLog",
                storage.location), (status, query)
        # an entry of another request id and of a status asked for is read as before
        assert [log.seq for log in storage.scan(Query(request_id="b"), after=None, limit=10)] == [2]
        assert [log.seq for log in storage.scan(Query(request_id="a", statuses=(LogStatus.Completed,)),
                                                after=None, limit=10)] == [0]


def test_postgres_a_live_mark_of_an_earlier_log_means_nothing_was_archived(
        pg_url: str, storage: PostgresStorage) -> None:
    """docs/storage-format.md: the ``live`` row counts only when it is of the current epoch —
    whatever seq a mark of an earlier log names."""
    storage.write_batch([WriteRequest([_entry(i, rid=f"r{i}") for i in range(4)], [])])
    storage.clear()
    storage.write_batch([WriteRequest([_entry(i, rid=f"s{i}") for i in range(10)], [])])
    assert storage.tree_head().first_seq == 4
    _sql(pg_url, "INSERT INTO krepis_meta (key, value) VALUES ('live', '0:9')")
    assert storage.live_first_seq() == 4
    assert storage.verify().entries == 10
    _sql(pg_url, "UPDATE krepis_meta SET value = '1:9' WHERE key = 'live'")  # of this log: counts
    assert storage.live_first_seq() == 9


def test_postgres_pool_settings(pg_url: str) -> None:
    """The connection pool: named ``krepis`` (psycopg's log records say so), one connection kept
    open and at most eight, and a caller waits the URL's connect_timeout plus 5 s for a free
    one before "no connection within the pool timeout" (10 + 5 by default)."""
    for url, timeout in ((pg_url, 15.0), (pg_url + "?connect_timeout=3", 8.0)):
        storage = PostgresStorage(url)
        try:
            pool = storage._pool
            assert (pool.name, pool.min_size, pool.max_size, pool.timeout) == ("krepis", 1, 8, timeout), url
        finally:
            storage.close()


def test_postgres_opening_and_using_a_store_warns_nothing(pg_url: str) -> None:
    """The pool is opened explicitly (``open=False``, then ``open()``): one opened implicitly by
    its constructor warns, at the first borrowed connection, that this default will change."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage = PostgresStorage(pg_url)
        try:
            storage.write_batch([WriteRequest([_entry()], [b"x"])])
            assert storage.get_count(b"x") == 1
        finally:
            storage.close()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


def test_postgres_open_refusals_word_for_word(pg_url: str) -> None:
    """What opening says of a store it cannot use, each naming the location, nothing created."""
    from krepis import NeedsMigrationError
    from krepis.storage.postgres._schema import redact

    where = redact(pg_url)

    def refusal(kind: type[Exception], **kwargs: Any) -> str:
        with pytest.raises(kind) as caught:
            PostgresStorage(pg_url, **kwargs)
        assert type(caught.value) is kind and caught.value.path == where  # type: ignore[attr-defined]
        return str(caught.value)

    assert refusal(StorageError, create=False) == f"there is no krepis journal at {where}"
    assert _sql(pg_url, "SELECT to_regclass('krepis_meta')") == [(None,)]  # nothing created
    PostgresStorage(pg_url).close()
    _sql(pg_url, "DROP TABLE krepis_tree")
    assert refusal(CorruptStorageError, create=False) == (
        f"PostgreSQL at {where}: the krepis tables are incomplete (missing: krepis_tree); nothing was "
        "created")
    assert _sql(pg_url, "SELECT to_regclass('krepis_tree')") == [(None,)]
    _sql(pg_url, "UPDATE krepis_meta SET value = '1' WHERE key = 'format'")
    assert refusal(NeedsMigrationError) == (
        f"PostgreSQL at {where} holds krepis tables of format 1 (written by krepis 0.1); this krepis "
        "reads format 2. Convert them once with: krepis migrate --storage URL")
    _sql(pg_url, "UPDATE krepis_meta SET value = '3' WHERE key = 'format'")
    assert refusal(CorruptStorageError) == (
        f"PostgreSQL at {where} holds krepis tables of format 3; this krepis reads format 2")
    _sql(pg_url, "DELETE FROM krepis_meta WHERE key = 'format'")
    assert refusal(CorruptStorageError, create=False) == (
        f"PostgreSQL at {where} holds krepis tables of format unknown; this krepis reads format 2")
    assert _sql(pg_url, "SELECT count(*) FROM krepis_meta") == [(0,)]


def test_postgres_a_url_libpq_refuses_is_named_without_its_password(pg_url: str) -> None:
    """The parser's reason, then the redacted URL in parentheses; never the password."""
    from krepis.storage.postgres._schema import redact

    bad = pg_url.replace("://postgres@", "://postgres:s3cret-pw@") + "?bogus=1"
    with pytest.raises(StorageError) as caught:
        PostgresStorage(bad)
    assert caught.value.path == redact(bad) == "postgresql://(unparsable URL)"
    assert str(caught.value) == (
        "invalid PostgreSQL URL (not shown, it may contain a password): a query parameter is not one of "
        "libpq's connection keywords (such as sslmode, connect_timeout, application_name) "
        "(postgresql://(unparsable URL))")


def test_the_package_loads_the_adapter_and_the_migration_on_first_use() -> None:
    """``krepis.storage.postgres`` names its two classes lazily (the driver is imported only by
    the adapter); any other name is an ``AttributeError`` naming it, as for any module."""
    import krepis.storage.postgres as package
    from krepis.storage.postgres import _migrate, _store

    assert package.PostgresStorage is _store.PostgresStorage
    assert package.migrate_postgres is _migrate.migrate_postgres
    with pytest.raises(AttributeError) as caught:
        package.PostgresStore  # noqa: B018
    assert caught.value.args == ("PostgresStore",)
    assert not hasattr(package, "postgres_storage")
    assert sorted(package.__all__) == ["PostgresStorage", "is_postgres_url", "migrate_postgres"]
