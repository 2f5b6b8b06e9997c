"""The PostgreSQL adapter: one journal shared by several kernels on several machines.

Tables (created on first use, versioned in ``krepis_meta``):

* ``krepis_journal(seq bigint identity, timestamp bigint, request_id text, entry text)`` — the
  server assigns ``seq``, one total order across every node; rows read back ordered by
  (timestamp, seq), like LMDB's keys. ``entry`` is the spec's compact JSON, byte for byte.
* ``krepis_stats(name text, value bigint)`` — the counters.
* ``krepis_state(key text, value bigint)`` — the entry count (so counting is O(1)).

A write batch is one statement, hence one transaction: the entries, the counter upserts (in name
order, so concurrent writers never deadlock) and the entry count. It returns after PostgreSQL's
commit: the WAL is flushed, and acknowledged by a synchronous standby where one is configured.
A write whose connection breaks during commit has an unknown outcome; it is reported as such and
never retried, so no entry is ever stored twice.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .._errors import ClosedError, CorruptStorageError, JournalError, StorageError
from . import EntryFilter, Storage, WriteRequest, _pgurl

__all__ = ["FORMAT_VERSION", "PostgresStorage", "is_postgres_url", "redact"]

FORMAT_VERSION = 1
_LOCK_ID = 0x6B726570  # advisory lock serializing schema creation ("krep")
_CONNECT_TIMEOUT = 10
_TABLES = ("krepis_journal", "krepis_stats", "krepis_state")
_POOL_MAX = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS krepis_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS krepis_journal (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    timestamp bigint NOT NULL CHECK (timestamp >= 0),
    request_id text NOT NULL,
    entry text NOT NULL
);
CREATE INDEX IF NOT EXISTS krepis_journal_time ON krepis_journal (timestamp, seq);
CREATE INDEX IF NOT EXISTS krepis_journal_request ON krepis_journal (request_id, timestamp, seq);
CREATE TABLE IF NOT EXISTS krepis_stats (
    name text PRIMARY KEY,
    value bigint NOT NULL CHECK (value >= 0)
);
CREATE TABLE IF NOT EXISTS krepis_state (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO krepis_state (key, value) VALUES ('entries', 0) ON CONFLICT DO NOTHING;
"""

_WRITE = """
WITH new_entries AS (
    INSERT INTO krepis_journal (timestamp, request_id, entry)
    SELECT t, r, e FROM unnest(%(ts)s::bigint[], %(rid)s::text[], %(entry)s::text[])
         WITH ORDINALITY AS x(t, r, e, n)
    ORDER BY n
    RETURNING 1
), counted AS (
    UPDATE krepis_state SET value = value + (SELECT count(*) FROM new_entries)
    WHERE key = 'entries' AND %(n_entries)s > 0
    RETURNING 1
), bumped AS (
    INSERT INTO krepis_stats (name, value)
    SELECT name, k FROM unnest(%(names)s::text[], %(ks)s::bigint[]) AS c(name, k) ORDER BY name
    ON CONFLICT (name) DO UPDATE SET value = krepis_stats.value + EXCLUDED.value
    RETURNING name, value
)
SELECT name, value FROM bumped
"""
# (PostgreSQL runs every data-modifying CTE to completion, whether or not the query reads it.)


def is_postgres_url(location: object) -> bool:
    return _pgurl.is_postgres_url(location)


def redact(url: str) -> str:
    """The URL without its password, for messages and ``journal.path`` (see ``_pgurl``)."""
    return _pgurl.redact(url)


def _params(url: str) -> dict[str, Any]:
    """libpq keyword parameters parsed by ``_pgurl`` (libpq never parses the URL itself)."""
    params: dict[str, Any] = dict(_pgurl.parse(url).params)
    params.setdefault("connect_timeout", str(_CONNECT_TIMEOUT))
    params.setdefault("application_name", "krepis")
    return params


class PostgresStorage(Storage):
    """The journal in PostgreSQL tables; see the module docstring for the layout."""

    def __init__(self, url: str, *, durable: bool = True, create: bool = True) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise StorageError("a postgresql:// storage needs psycopg: pip install 'krepis[postgres]'",
                               redact(url)) from exc
        self._psycopg = psycopg
        self.location = redact(url)
        self._closed = False
        self._lock = threading.Lock()
        try:
            params = _params(url)
        except _pgurl.UrlError as exc:
            raise StorageError(f"{exc} ({self.location})", self.location) from None
        _pgurl.install_log_filter()
        self._params = params
        self._durable = durable
        first = self._connect_once()  # a direct connection gives libpq's own error message
        try:
            self._ensure_schema(first, create)
        finally:
            first.close()

        def configure(conn: Any) -> None:
            conn.autocommit = True
            if not durable:
                conn.execute("SET synchronous_commit = off")

        self._pool = ConnectionPool(kwargs={**params, "autocommit": True}, configure=configure,
                                    min_size=1, max_size=_POOL_MAX, open=False,
                                    timeout=float(params["connect_timeout"]) + 5,
                                    name="krepis", check=ConnectionPool.check_connection)
        self._pool.open(wait=False)

    # -- connections and errors ------------------------------------------------------------
    def _connect_once(self) -> Any:
        try:
            return self._psycopg.connect(**self._params, autocommit=True)
        except self._psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL at {self.location}: {_first_line(exc)}",
                self.location) from None

    def _error(self, exc: BaseException, doing: str) -> JournalError:
        psycopg = self._psycopg
        if isinstance(exc, JournalError):
            return exc
        if isinstance(exc, psycopg.OperationalError) and doing == "writing":
            return StorageError(
                f"PostgreSQL at {self.location} failed while {doing}; the connection broke, so "
                f"whether this write committed is unknown (it was not retried): {_first_line(exc)}",
                self.location)
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return CorruptStorageError(
                f"PostgreSQL at {self.location}: the krepis tables are missing ({_first_line(exc)})",
                self.location)
        return StorageError(f"PostgreSQL at {self.location} failed while {doing}: {_first_line(exc)}",
                            self.location)

    def _run(self, doing: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self._closed:
            raise ClosedError(f"the journal at {self.location} is closed")
        try:
            with self._pool.connection() as conn, conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise StorageError(f"cannot connect to PostgreSQL at {self.location} "
                                   f"(no connection within the pool timeout)", self.location) from None
            raise self._error(exc, doing) from None

    def _ensure_schema(self, conn: Any, create: bool) -> None:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                row = conn.execute(
                    "SELECT to_regclass('krepis_meta') IS NOT NULL").fetchone()
                if not (row and row[0]) and not create:
                    raise StorageError(f"there is no krepis journal at {self.location}",
                                       self.location)
                if row and row[0]:
                    fmt = conn.execute("SELECT value FROM krepis_meta WHERE key = 'format'").fetchone()
                    if fmt is None or fmt[0] != str(FORMAT_VERSION):
                        raise CorruptStorageError(
                            f"PostgreSQL at {self.location} holds krepis tables of format "
                            f"{fmt[0] if fmt else 'unknown'}; this krepis reads format {FORMAT_VERSION}",
                            self.location)
                if not create:  # opening only: check, never create or insert anything
                    missing = [t for t in _TABLES if conn.execute(
                        "SELECT to_regclass(%s) IS NULL", (t,)).fetchone()[0]]
                    if missing:
                        raise CorruptStorageError(
                            f"PostgreSQL at {self.location}: the krepis tables are incomplete "
                            f"(missing: {', '.join(missing)}); nothing was created",
                            self.location)
                    return
                conn.execute(SCHEMA)
                conn.execute("INSERT INTO krepis_meta (key, value) VALUES ('format', %s) "
                             "ON CONFLICT DO NOTHING", (str(FORMAT_VERSION),))
        except JournalError:
            raise
        except self._psycopg.Error as exc:
            raise StorageError(f"cannot prepare the krepis tables at {self.location}: "
                               f"{_first_line(exc)}", self.location) from None

    # -- the port --------------------------------------------------------------------------
    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        ts: list[int] = []
        rids: list[str] = []
        entries: list[str] = []
        totals: dict[str, int] = {}
        for req in requests:
            for t, rid, value in req.entries:
                ts.append(t)
                rids.append(rid.decode("utf-8"))
                entries.append(value.decode("utf-8"))
            for name in req.increments:
                key = name.decode("utf-8")
                totals[key] = totals.get(key, 0) + 1
        names = sorted(totals)
        rows = self._run("writing", _WRITE, {
            "ts": ts, "rid": rids, "entry": entries, "n_entries": len(entries),
            "names": names, "ks": [totals[n] for n in names]})
        final = {name: int(value) for name, value in rows}
        # Hand out the values in request order: the batch added totals[name] to each counter.
        next_value = {name: final[name] - totals[name] for name in names}
        results: list[list[int]] = []
        for req in requests:
            values = []
            for name in req.increments:
                key = name.decode("utf-8")
                next_value[key] += 1
                values.append(next_value[key])
            results.append(values)
        return results

    def get_count(self, name: bytes) -> int:
        rows = self._run("reading a counter", "SELECT value FROM krepis_stats WHERE name = %s",
                         (name.decode("utf-8"),))
        return int(rows[0][0]) if rows else 0

    def get_counts(self) -> dict[str, int]:
        rows = self._run("reading counters", "SELECT name, value FROM krepis_stats ORDER BY name")
        return {name: int(value) for name, value in rows}

    def entry_count(self) -> int:
        rows = self._run("counting entries", "SELECT value FROM krepis_state WHERE key = 'entries'")
        return int(rows[0][0]) if rows else 0

    def scan(
        self, flt: EntryFilter, *, newest_first: bool, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        if limit <= 0:
            return []
        where: list[str] = []
        params: list[object] = []
        if flt.since is not None:
            where.append("timestamp >= %s")
            params.append(flt.since)
        if flt.until is not None:
            where.append("timestamp < %s")
            params.append(flt.until)
        if flt.request_id is not None:
            where.append("request_id = %s")
            params.append(flt.request_id.decode("utf-8"))
        if after is not None:
            a_ts, a_seq = (int(x) for x in after.split(b":"))
            where.append("(timestamp, seq) < (%s, %s)" if newest_first else "(timestamp, seq) > (%s, %s)")
            params += [a_ts, a_seq]
        order = "DESC" if newest_first else "ASC"
        sql = ("SELECT timestamp, seq, entry FROM krepis_journal"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY timestamp {order}, seq {order} LIMIT %s")
        rows = self._run("reading the journal", sql, [*params, limit])
        return [(b"%d:%d" % (t, s), e.encode("utf-8")) for t, s, e in rows]

    def clear(self) -> None:
        self._run("clearing", "BEGIN; TRUNCATE krepis_journal, krepis_stats; "
                              "UPDATE krepis_state SET value = 0 WHERE key = 'entries'; COMMIT")

    def sync(self) -> None:
        # A transaction that writes nothing still flushes the WAL written before it when it
        # commits with synchronous_commit on.
        self._run("syncing", "BEGIN; SET LOCAL synchronous_commit = on; "
                             "SELECT pg_current_xact_id(); COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()


def _first_line(exc: BaseException) -> str:
    """The first line of an engine's message, with every known password removed."""
    text = _pgurl.scrub(str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0]

