"""``krepis migrate`` for PostgreSQL journals: format 1 to the current format, in one
transaction (see :mod:`krepis.storage._migration` for the guarantees).

Every format-1 row is read in sequence order and checked by the rules of a write; the entries
are appended by the engine's own write path (``PostgresStorage._append``: rows, leaves over the
canonical bytes, the tree), and the engine's ``verify()`` runs on the new tables inside the same
transaction before it commits.
"""

from __future__ import annotations

from typing import Any

from ..._errors import CorruptStorageError, JournalError, StorageError
from ..._model import TransactionLog, encode_log
from ...tlog._merkle import append_leaf, leaf_hash, root_from_frontier
from .._migration import MigrationResult, Progress, counter_name, format1_entry
from .._port import WriteRequest

__all__ = ["migrate_postgres"]

_CHUNK = 4096


def _engine(where: str) -> Any:
    """The engine's write and verify steps, run on the migration's own connection (its pool is
    never opened: ``_append`` and ``_verify`` use only the cursor or connection given)."""
    from ._store import PostgresStorage

    engine = PostgresStorage.__new__(PostgresStorage)
    engine.location = where
    return engine


def _bad(where: str, what: str) -> CorruptStorageError:
    return CorruptStorageError(f"PostgreSQL at {where}: {what}; nothing was changed", where)


def migrate_postgres(url: str, progress: Progress | None) -> MigrationResult:
    from ._schema import _LOCK_ID, FORMAT_VERSION, SCHEMA, _first_line, _params, redact

    where = redact(url)
    try:
        import psycopg
    except ImportError as exc:  # the postgres extra is missing: said as the storage says it
        raise StorageError("a postgresql:// storage needs psycopg: pip install "
                           "'krepis-journal[postgres]' (or '.[postgres]' in a checkout)", where) from exc
    try:
        conn = psycopg.connect(**_params(url))
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL at {where}: {_first_line(exc)}", where) from None
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            row = conn.execute("SELECT to_regclass('krepis_meta') IS NOT NULL").fetchone()
            if not (row and row[0]):
                raise StorageError(f"there is no krepis journal at {where}", where)
            fmt_row = conn.execute("SELECT value FROM krepis_meta WHERE key = 'format'").fetchone()
            fmt = fmt_row[0] if fmt_row else None
            if fmt == str(FORMAT_VERSION):
                return MigrationResult(where, FORMAT_VERSION, FORMAT_VERSION, 0, 0)
            if fmt != "1":
                raise CorruptStorageError(f"PostgreSQL at {where} holds krepis tables of format {fmt}; "
                                          f"krepis migrates format 1 to {FORMAT_VERSION}", where)
            # No writer of either format can commit meanwhile.
            conn.execute("LOCK TABLE krepis_journal, krepis_stats, krepis_state IN EXCLUSIVE MODE")
            counters = _counters(conn, where)
            conn.execute(SCHEMA)  # (krepis_stats is the same table in both formats: it stays)
            total = int(conn.execute("SELECT count(*) FROM krepis_journal").fetchone()[0])  # type: ignore[index]
            engine = _engine(where)
            size, root = _copy_entries(conn, engine, where, total, progress)
            report = engine._verify(conn, f"PostgreSQL at {where}")
            if (size, report.entries, report.tree_size) != (total, total, total) or report.root != root:
                raise StorageError(f"migration of PostgreSQL at {where} went wrong: {size} of {total} "
                                   f"entries read, the new tables hold {report.entries}; nothing was "
                                   "changed", where)
            conn.execute("DROP TABLE krepis_journal, krepis_state")
            conn.execute("UPDATE krepis_meta SET value = %s WHERE key = 'format'", (str(FORMAT_VERSION),))
        if progress:
            progress(total, total)
        return MigrationResult(where, 1, FORMAT_VERSION, total, len(counters))
    except JournalError:
        raise
    except psycopg.Error as exc:
        raise StorageError(f"migration of PostgreSQL at {where} failed (nothing was changed): "
                           f"{_first_line(exc)}", where) from None
    finally:
        conn.close()


def _counters(conn: Any, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in conn.execute("SELECT name, value FROM krepis_stats ORDER BY name").fetchall():
        try:
            out[counter_name(name)] = int(value)
        except ValueError as exc:
            raise _bad(where, f"format-1 counter {name!r:.60}: {exc}") from None
    return out


def _copy_entries(conn: Any, engine: Any, where: str, total: int,
                  progress: Progress | None) -> tuple[int, bytes]:
    """Append every format-1 entry, checked, in sequence order; the number read and the root of
    the tree over their canonical bytes."""
    frontier: list[bytes] = []
    size = 0
    no_counters: dict[str, Any] = {"names": [], "ks": []}
    batch: list[tuple[TransactionLog, bytes]] = []
    with conn.cursor(name="krepis_migrate_rows") as rows, conn.cursor() as cur:
        rows.itersize = _CHUNK
        rows.execute("SELECT seq, timestamp, request_id, entry FROM krepis_journal ORDER BY seq")
        for seq, ts, rid, entry in rows:
            try:
                log = format1_entry(entry)
            except ValueError as exc:
                raise _bad(where, f"format-1 entry {seq} (its sequence number) is not a valid "
                                  f"TransactionLog: {exc}") from None
            if log.timestamp != ts or log.request_id != rid:
                raise _bad(where, f"format-1 entry {seq} (its sequence number) is not a valid "
                                  f"TransactionLog: its columns say timestamp {ts} and request id "
                                  f"{rid[:60]!r}, its JSON {log.timestamp} and {log.request_id[:60]!r}")
            canonical = encode_log(log)
            batch.append((log, canonical))
            size = append_leaf(frontier, size, leaf_hash(canonical))
            if len(batch) >= _CHUNK:
                engine._append(cur, [WriteRequest(batch, ())], no_counters)
                batch = []
                if progress:
                    progress(size, total)
        if batch:
            engine._append(cur, [WriteRequest(batch, ())], no_counters)
    return size, root_from_frontier(frontier)
