"""``storage/postgres/_migrate`` (``krepis migrate`` of a format-1 PostgreSQL journal) against a
real server: the result it returns, the progress it reports chunk by chunk, and each refusal —
its type, its exact text naming the location, and that nothing was changed."""

from __future__ import annotations

from typing import Any

import pytest

import pg
from krepis import CorruptStorageError, LogStatus, SovereignJournal, StorageError, TransactionLog
from krepis.storage import MigrationResult, migrate
from krepis.storage.postgres._schema import redact

from format1 import PG_SCHEMA_1


def _sql(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _format1(url: str, entries: int, counters: dict[str, int] | None = None) -> None:
    """A format-1 journal of ``entries`` entries (timestamp i, request id ri, op "op")."""
    _sql(url, PG_SCHEMA_1)
    _sql(url, "INSERT INTO krepis_journal (timestamp, request_id, entry) SELECT i, 'r' || i, "
              "'{\"timestamp\":' || i || ',\"op_name\":\"op\",\"request_id\":\"r' || i || "
              "'\",\"status\":\"Completed\"}' FROM generate_series(0, %s - 1) AS i", (entries,))
    for name, value in (counters or {}).items():
        _sql(url, "INSERT INTO krepis_stats VALUES (%s, %s)", (name, value))
    _sql(url, "INSERT INTO krepis_state VALUES ('entries', %s)", (entries,))


def _unchanged(url: str, entries: int) -> None:
    assert _sql(url, "SELECT value FROM krepis_meta WHERE key = 'format'") == [("1",)]
    assert _sql(url, "SELECT count(*) FROM krepis_journal") == [(entries,)]
    assert _sql(url, "SELECT to_regclass('krepis_entries'), to_regclass('krepis_log')") == [(None, None)]


@pytest.mark.parametrize(("entries", "calls"), [
    (4097, [(4096, 4097), (4097, 4097)]),
    (4096, [(4096, 4096), (4096, 4096)]),
    (3, [(3, 3)]),
])
def test_postgres_migration_reports_progress_per_chunk_and_its_result(
        pg_url: str, entries: int, calls: list[tuple[int, int]]) -> None:
    _format1(pg_url, entries, {"op": entries, "other": 2})
    seen: list[tuple[int, int]] = []
    result = migrate(pg_url, progress=lambda done, total: seen.append((done, total)))
    assert seen == calls
    assert result == MigrationResult(redact(pg_url), 1, 2, entries, 2)
    assert _sql(pg_url, "SELECT value FROM krepis_meta WHERE key = 'format'") == [("2",)]
    assert _sql(pg_url, "SELECT to_regclass('krepis_journal'), to_regclass('krepis_state')") == [(None, None)]
    with SovereignJournal(pg_url, create=False) as journal:
        assert journal.journal_count() == journal.next_seq() == entries
        assert journal.op_counts() == {"op": entries, "other": 2}
        last = journal.query(order="append", limit=1)
        assert last == [TransactionLog(entries - 1, "op", f"r{entries - 1}", LogStatus.Completed)]
        assert last[0].seq == entries - 1
        assert journal.verify().entries == entries
    # a second run finds the current format and does nothing, reporting no progress
    seen.clear()
    assert migrate(pg_url, progress=lambda done, total: seen.append((done, total))) == MigrationResult(
        redact(pg_url), 2, 2, 0, 0)
    assert seen == []


def test_postgres_migration_of_an_empty_journal(pg_url: str) -> None:
    _format1(pg_url, 0)
    seen: list[tuple[int, int]] = []
    assert migrate(pg_url, progress=lambda done, total: seen.append((done, total))) == MigrationResult(
        redact(pg_url), 1, 2, 0, 0)
    assert seen == [(0, 0)]
    with SovereignJournal(pg_url, create=False) as journal:
        assert journal.journal_count() == 0 and journal.tree_head().size == 0


def test_postgres_migration_refusals_name_the_location_and_change_nothing(pg_url: str) -> None:
    where = redact(pg_url)

    def refused(kind: type[Exception]) -> str:
        with pytest.raises(kind) as caught:
            migrate(pg_url)
        assert type(caught.value) is kind and caught.value.path == where  # type: ignore[attr-defined]
        return str(caught.value)

    assert refused(StorageError) == f"there is no krepis journal at {where}"
    assert _sql(pg_url, "SELECT to_regclass('krepis_meta')") == [(None,)]  # nothing created
    _format1(pg_url, 3, {"fine": 1})
    _sql(pg_url, "UPDATE krepis_meta SET value = '7' WHERE key = 'format'")
    assert refused(CorruptStorageError) == (f"PostgreSQL at {where} holds krepis tables of format 7; "
                                            "krepis migrates format 1 to 2")
    _sql(pg_url, "DELETE FROM krepis_meta")
    assert refused(CorruptStorageError) == (f"PostgreSQL at {where} holds krepis tables of format None; "
                                            "krepis migrates format 1 to 2")
    _sql(pg_url, "INSERT INTO krepis_meta VALUES ('format', '1')")
    # a counter whose name a write would refuse
    _sql(pg_url, "INSERT INTO krepis_stats VALUES ('', 4)")
    assert refused(CorruptStorageError) == (
        f"PostgreSQL at {where}: format-1 counter '': its name must not be empty (1–200 bytes of UTF-8); "
        "nothing was changed")
    _sql(pg_url, "DELETE FROM krepis_stats WHERE name = ''")
    # an entry that is not a TransactionLog, and one whose columns disagree with its JSON
    _sql(pg_url, "UPDATE krepis_journal SET entry = '[1]' WHERE seq = 2")
    assert refused(CorruptStorageError) == (
        f"PostgreSQL at {where}: format-1 entry 2 (its sequence number) is not a valid TransactionLog: it is "
        "a JSON array, not an object; nothing was changed")
    _sql(pg_url, "UPDATE krepis_journal SET entry = format('{\"timestamp\":1,\"op_name\":\"op\","
                 "\"request_id\":\"%s\",\"status\":\"Completed\"}', repeat('q', 70)) WHERE seq = 2")
    assert refused(CorruptStorageError) == (
        f"PostgreSQL at {where}: format-1 entry 2 (its sequence number) is not a valid TransactionLog: its "
        f"columns say timestamp 1 and request id 'r1', its JSON 1 and {'q' * 60!r}; nothing was changed")
    _sql(pg_url, "UPDATE krepis_journal SET entry = '{\"timestamp\":1,\"op_name\":\"op\",\"request_id\":"
                 "\"r1\",\"status\":\"Completed\"}', timestamp = 2 WHERE seq = 2")
    assert refused(CorruptStorageError).startswith(
        f"PostgreSQL at {where}: format-1 entry 2 (its sequence number) is not a valid TransactionLog: its "
        "columns say timestamp 2 and request id 'r1', its JSON 1 and 'r1'")
    _sql(pg_url, "UPDATE krepis_journal SET timestamp = 1 WHERE seq = 2")
    # the server refuses a statement: a format-1 journal without its krepis_state table
    _sql(pg_url, "ALTER TABLE krepis_state RENAME TO krepis_state_moved")
    assert refused(StorageError) == (f"migration of PostgreSQL at {where} failed (nothing was changed): "
                                     'relation "krepis_state" does not exist')
    _sql(pg_url, "ALTER TABLE krepis_state_moved RENAME TO krepis_state")
    _unchanged(pg_url, 3)
    assert migrate(pg_url) == MigrationResult(where, 1, 2, 3, 1)


def test_postgres_migration_cannot_connect_names_the_location() -> None:
    url = f"postgresql://someone:Qm-migrate-pw@127.0.0.1:{pg.free_port()}/nodb?connect_timeout=2"
    where = redact(url)
    with pytest.raises(StorageError) as caught:
        migrate(url)
    assert type(caught.value) is StorageError and caught.value.path == where
    assert str(caught.value).startswith(f"cannot connect to PostgreSQL at {where}: ")
    assert "Qm-migrate-pw" not in str(caught.value)


def test_postgres_migration_names_at_most_60_characters_of_a_request_id(pg_url: str) -> None:
    where = redact(pg_url)
    _format1(pg_url, 3)
    _sql(pg_url, "UPDATE krepis_journal SET request_id = repeat('p', 61) WHERE seq = 2")
    with pytest.raises(CorruptStorageError) as caught:
        migrate(pg_url)
    assert str(caught.value) == (
        f"PostgreSQL at {where}: format-1 entry 2 (its sequence number) is not a valid TransactionLog: its "
        f"columns say timestamp 1 and request id {'p' * 60!r}, its JSON 1 and 'r1'; nothing was changed")
    _unchanged(pg_url, 3)


def test_postgres_migration_without_psycopg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg raises ImportError
    with pytest.raises(StorageError) as caught:
        migrate("postgresql://u:pw@h/db")
    assert (str(caught.value), caught.value.path) == (  # as PostgresStorage says it, naming the journal
        "a postgresql:// storage needs psycopg: pip install 'krepis-journal[postgres]' (or '.[postgres]' "
        "in a checkout)", "postgresql://u@h:5432/db")
