"""``krepis migrate`` for PostgreSQL journals: format 1 to the current format, in one
transaction."""

from __future__ import annotations

import struct
from hashlib import sha256

from ..._errors import CorruptStorageError, JournalError, StorageError
from .._migration import MigrationResult, Progress

__all__ = ["migrate_postgres"]

_U64 = struct.Struct("<Q")

_SEQ = struct.Struct(">Q")

_CHUNK = 4096

def migrate_postgres(url: str, progress: Progress | None) -> MigrationResult:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the postgres extra is missing
        raise StorageError("a postgresql:// storage needs psycopg (the 'postgres' extra)") from exc
    from ...tlog._merkle import append_leaf
    from ._schema import _LOCK_ID, FORMAT_VERSION, SCHEMA, _first_line, _params, redact

    where = redact(url)
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
            conn.execute(SCHEMA)
            total = conn.execute("SELECT count(*) FROM krepis_journal").fetchone()[0]  # type: ignore[index]
            # New sequence numbers: format 1's order, numbered from 0 without gaps.
            conn.execute("CREATE TEMP TABLE krepis_renumber ON COMMIT DROP AS SELECT seq AS old, "
                         "row_number() OVER (ORDER BY seq) - 1 AS new FROM krepis_journal")
            # PostgreSQL's JSON operators cannot produce a text holding NUL (\u0000): entries whose
            # JSON has one are decoded here instead.
            conn.execute("""
                INSERT INTO krepis_entries (seq, timestamp, op_name, request_id, status, duration_us,
                                            error, leaf)
                SELECT m.new, timestamp, e->>'op_name', request_id,
                       CASE e->>'status' WHEN 'Started' THEN 1 WHEN 'Completed' THEN 2
                                         WHEN 'Failed' THEN 3 END,
                       (e->>'duration_us')::bigint, convert_to(e->>'error', 'UTF8'),
                       sha256('\\x00'::bytea || convert_to(entry, 'UTF8'))
                FROM (SELECT seq, timestamp, request_id, entry, entry::json AS e FROM krepis_journal
                      WHERE strpos(entry, '\\u0000') = 0) j
                JOIN krepis_renumber m ON m.old = j.seq
            """)
            special = conn.execute(
                "SELECT m.new, entry FROM krepis_journal j JOIN krepis_renumber m ON m.old = j.seq "
                "WHERE strpos(entry, '\\u0000') > 0").fetchall()
            if special:
                from ..._model import decode_log, encode_log
                from .._codec import STATUS_CODE

                rows = []
                for new_seq, text in special:
                    log = decode_log(text.encode("utf-8"))
                    rows.append((new_seq, log.timestamp, log.op_name, log.request_id,
                                 STATUS_CODE[log.status], log.duration_us,
                                 None if log.error is None else log.error.encode("utf-8"),
                                 sha256(b"\x00" + encode_log(log)).digest()))
                with conn.cursor() as plain:
                    plain.executemany("INSERT INTO krepis_entries (seq, timestamp, op_name, request_id, "
                                      "status, duration_us, error, leaf) VALUES "
                                      "(%s, %s, %s, %s, %s, %s, %s, %s)", rows)
            frontier: list[bytes] = []
            size = 0
            nodes: list[tuple[int, int, bytes]] = []

            def on_node(level: int, index: int, node: bytes) -> None:
                nodes.append((level, index, node))

            with conn.cursor(name="krepis_migrate_leaves") as cur:
                cur.itersize = 10000
                cur.execute("SELECT leaf FROM krepis_entries ORDER BY seq")
                for (leaf,) in cur:
                    size = append_leaf(frontier, size, bytes(leaf), on_node)
                    if progress and size % 10000 == 0:
                        progress(size, int(total))
            if size != total:
                raise StorageError(f"migration of {where} copied {size} of {total} entries", where)
            with conn.cursor() as plain:
                plain.executemany("INSERT INTO krepis_tree (level, idx, hash) VALUES (%s, %s, %s)", nodes)
            conn.execute("UPDATE krepis_log SET next_seq = %s, first_seq = 0, epoch = 0, frontier = %s, "
                         "entries = %s WHERE id = 1", (size, b"".join(frontier), size))
            n_counters = conn.execute("SELECT count(*) FROM krepis_stats").fetchone()[0]  # type: ignore[index]
            conn.execute("DROP TABLE krepis_journal, krepis_state")
            conn.execute("UPDATE krepis_meta SET value = %s WHERE key = 'format'", (str(FORMAT_VERSION),))
        if progress:
            progress(int(total), int(total))
        return MigrationResult(where, 1, FORMAT_VERSION, int(total), int(n_counters))
    except JournalError:
        raise
    except psycopg.Error as exc:
        raise StorageError(f"migration of PostgreSQL at {where} failed (nothing was changed): "
                           f"{_first_line(exc)}", where) from None
    finally:
        conn.close()
