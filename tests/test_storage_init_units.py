"""``krepis.storage``'s two entry points, ``open_storage`` and ``migrate``: which engine a location
chooses, and that ``durable``, ``create`` and ``progress`` reach the engine as given (a
non-durable LMDB write flushes nothing, a non-durable PostgreSQL session commits asynchronously,
``create=False`` refuses a missing store) — on a real store and a real server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from krepis import LogStatus, StorageError, TransactionLog
from krepis._model import encode_log
from krepis.storage import MigrationResult, WriteRequest, migrate, open_storage
from krepis.storage.lmdb import LmdbStorage

from format1 import PG_SCHEMA_1

FIXTURES = Path(__file__).parent / "fixtures"


def _request(i: int) -> WriteRequest:
    log = TransactionLog(i, "op", f"r{i}", LogStatus.Completed)
    return WriteRequest([(log, encode_log(log))], (b"op",))


def _flushes(storage: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    storage.write_batch([_request(1)])  # (the first write may grow the log, flushing its length)
    calls = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    storage.write_batch([_request(2)])
    monkeypatch.setattr(os, "fdatasync", real)
    return len(calls)


def test_a_directory_opens_lmdb_and_creates_the_store(tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "new")
    try:
        assert isinstance(storage, LmdbStorage)
        assert storage.location == str(tmp_path / "new")
        storage.write_batch([_request(0)])
        assert storage.get_count(b"op") == 1
    finally:
        storage.close()
    assert (tmp_path / "new" / "data.mdb").exists()


def test_lmdb_durable_by_default_and_not_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = open_storage(str(tmp_path / "d"))
    try:
        assert _flushes(storage, monkeypatch) >= 1
    finally:
        storage.close()
    storage = open_storage(tmp_path / "n", durable=False)
    try:
        assert _flushes(storage, monkeypatch) == 0
    finally:
        storage.close()
    storage = open_storage(tmp_path / "y", durable=True)
    try:
        assert _flushes(storage, monkeypatch) >= 1
    finally:
        storage.close()


def test_lmdb_create_false_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no krepis store") as info:
        open_storage(tmp_path / "missing", create=False)
    assert info.value.path == str(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    open_storage(tmp_path / "made", create=True).close()
    open_storage(tmp_path / "made", create=False).close()


def _sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def test_a_postgresql_url_opens_postgresql(pg_url: str) -> None:
    from krepis.storage.postgres import PostgresStorage

    with pytest.raises(StorageError, match="no krepis") as info:
        open_storage(pg_url, create=False)
    assert "None" not in str(info.value)
    assert _sql(pg_url, "SELECT to_regclass('krepis_entries')") == [(None,)]
    storage = open_storage(pg_url)
    try:
        assert isinstance(storage, PostgresStorage)
        storage.write_batch([_request(0)])
        assert storage.get_count(b"op") == 1
        with storage._pool.connection() as conn:  # the durable default: synchronous commits
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        storage.close()
    storage = open_storage(pg_url.replace("postgresql://", "postgres://", 1), durable=False, create=False)
    try:
        assert isinstance(storage, PostgresStorage) and storage.get_count(b"op") == 1
        with storage._pool.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    finally:
        storage.close()


def test_migrate_resolves_a_relative_or_home_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_storage(tmp_path / "s").close()
    monkeypatch.chdir(tmp_path)
    assert migrate("s") == MigrationResult(str(tmp_path / "s"), 4, 4, 0, 0)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert migrate("~/s") == MigrationResult(str(tmp_path / "s"), 4, 4, 0, 0)
    assert migrate(tmp_path / "s").location == str(tmp_path / "s")


def test_migrate_hands_progress_to_the_lmdb_rebuild(tmp_path: Path) -> None:
    store = tmp_path / "format1-store"
    shutil.copytree(FIXTURES / "format1-store", store)
    os.chmod(store, 0o700)
    seen: list[tuple[int, int]] = []
    result = migrate(store, progress=lambda done, total: seen.append((done, total)))
    assert (result.from_format, result.to_format) == (1, 4)
    assert seen and seen[-1] == (result.entries, result.entries)


def test_migrate_a_postgresql_url(pg_url: str) -> None:
    _sql(pg_url, PG_SCHEMA_1)
    _sql(pg_url, "INSERT INTO krepis_journal (timestamp, request_id, entry) VALUES (1, 'r', "
                 "'{\"timestamp\":1,\"op_name\":\"op\",\"request_id\":\"r\",\"status\":\"Completed\"}')")
    _sql(pg_url, "INSERT INTO krepis_state VALUES ('entries', 1)")
    seen: list[tuple[int, int]] = []
    result = migrate(pg_url, progress=lambda done, total: seen.append((done, total)))
    assert (result.from_format, result.entries) == (1, 1)
    assert seen == [(1, 1)]
