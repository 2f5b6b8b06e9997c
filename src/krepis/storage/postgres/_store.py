"""The PostgreSQL adapter: one journal shared by several kernels on several machines.

Tables of storage format 2 (created on first use, versioned in ``krepis_meta``; see
``docs/storage-format.md``):

* ``krepis_entries`` — one row per entry, keyed by ``seq`` (the store-wide append order, with
  no gaps: the Merkle tree's leaf index), with its fields as columns, the RFC 6962 leaf hash,
  and an index per lookup: (timestamp, seq), (request_id, status, timestamp, seq),
  (op_name, status, timestamp, seq), (status, timestamp, seq).
* ``krepis_log`` — one row: the next sequence number, the Merkle tree (first seq, epoch,
  frontier) and the entry count. Every write batch that appends entries locks it, so sequence
  numbers and the tree advance in one total order across every node.
* ``krepis_tree`` — hashes of the perfect subtrees of height 8, 16, … (the tlog tiles above 0).
* ``krepis_stats(name, value)`` — the counters.

A write batch is one transaction: the entries, the tree, the counter upserts (in name order, so
concurrent writers never deadlock) and the entry count. It returns after PostgreSQL's commit: the
WAL is flushed, and acknowledged by a synchronous standby where one is configured. A write whose
connection breaks during commit has an unknown outcome; it is reported as such and never
retried, so no entry is ever stored twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

from ..._errors import ClosedError, CorruptStorageError, JournalError, NeedsMigrationError, StorageError
from ..._model import TransactionLog, encode_log, make_log
from ...tlog._merkle import append_leaf, root_from_frontier
from .._codec import STATUS_CODE, STATUS_OF
from .._port import (
    LogAudit,
    Query,
    Storage,
    TreeHead,
    VerifyReport,
    WriteRequest,
    check_checkpoint,
    check_drop_prefix,
    check_setting,
    decode_setting,
)
from . import _url as _pgurl
from ._schema import (
    _APPEND,
    _BUMP,
    _COLUMNS,
    _LOCK_ID,
    _LOCK_LOG,
    _OP_NAMES,
    _POOL_MAX,
    _TABLES,
    FORMAT_VERSION,
    SCHEMA,
    _connection_lost,
    _first_line,
    _params,
    redact,
)

__all__ = ["PostgresStorage"]


class PostgresStorage(Storage):
    """The journal in PostgreSQL tables; see the module docstring for the layout."""

    def __init__(self, url: str, *, durable: bool = True, create: bool = True) -> None:
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise StorageError("a postgresql:// storage needs psycopg: pip install "
                               "'krepis-journal[postgres]' (or '.[postgres]' in a checkout)",
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
        if isinstance(exc, psycopg.OperationalError) and doing == "writing" and _connection_lost(exc):
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

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the journal at {self.location} is closed")

    def _run(self, doing: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        self._check_open()
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
                    if fmt is not None and fmt[0] == "1":
                        raise NeedsMigrationError(
                            f"PostgreSQL at {self.location} holds krepis tables of format 1 (written "
                            f"by krepis 0.1); this krepis reads format {FORMAT_VERSION}. Convert them "
                            f"once with: krepis migrate --storage URL", self.location)
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
        totals: dict[str, int] = {}
        for req in requests:
            for name in req.increments:
                key = name.decode("utf-8")
                totals[key] = totals.get(key, 0) + 1
        names = sorted(totals)
        bump = {"names": names, "ks": [totals[n] for n in names]}
        if not any(req.entries for req in requests):
            rows = self._run("writing", _BUMP, bump)
        else:
            rows = self._transaction("writing", lambda cur: self._append(cur, requests, bump))
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

    def _lock_log(self, cur: Any) -> Any:
        """Lock the one ``krepis_log`` row (appends, clears and checkpoints take it in turn)."""
        cur.execute(_LOCK_LOG)
        return self._log_row(cur.fetchone())

    def _append(self, cur: Any, requests: Sequence[WriteRequest], bump: dict[str, Any]) -> list[Any]:
        """Inside the write transaction: lock the log row, append, advance the tree, bump."""
        row = self._lock_log(cur)
        seq, first_seq, raw_frontier = int(row[0]), int(row[1]), bytes(row[3])
        frontier = [raw_frontier[i:i + 32] for i in range(0, len(raw_frontier), 32)]
        size = seq - first_seq
        if size < 0 or len(frontier) != size.bit_count() or len(raw_frontier) % 32:
            raise CorruptStorageError(
                f"PostgreSQL at {self.location}: the Merkle tree record does not match the sequence",
                self.location)
        cols: dict[str, list[Any]] = {k: [] for k in ("seq", "ts", "op", "rid", "st", "dur", "err",
                                                      "leaf", "nl", "ni", "nh")}

        def on_node(level: int, index: int, node: bytes) -> None:
            cols["nl"].append(level)
            cols["ni"].append(index)
            cols["nh"].append(node)

        n = 0
        for req in requests:
            for log, canonical in req.entries:
                leaf = sha256(b"\x00" + canonical).digest()
                cols["seq"].append(seq)
                cols["ts"].append(log.timestamp)
                cols["op"].append(log.op_name)
                cols["rid"].append(log.request_id)
                cols["st"].append(STATUS_CODE[log.status])
                cols["dur"].append(log.duration_us)
                cols["err"].append(None if log.error is None else log.error.encode("utf-8"))
                cols["leaf"].append(leaf)
                size = append_leaf(frontier, size, leaf, on_node)
                seq += 1
                n += 1
        cur.execute(_APPEND, {**cols, "next": seq, "frontier": b"".join(frontier), "n": n})
        if not bump["names"]:
            return []
        cur.execute(_BUMP, bump)
        return list(cur.fetchall())

    def _transaction(self, doing: str, body: Any) -> Any:
        self._check_open()
        try:
            with self._pool.connection() as conn:
                with conn.transaction(), conn.cursor() as cur:
                    return body(cur)
        except Exception as exc:
            if type(exc).__name__ == "PoolTimeout":
                raise StorageError(f"cannot connect to PostgreSQL at {self.location} "
                                   f"(no connection within the pool timeout)", self.location) from None
            raise self._error(exc, doing) from None

    def get_count(self, name: bytes) -> int:
        rows = self._run("reading a counter", "SELECT value FROM krepis_stats WHERE name = %s",
                         (name.decode("utf-8"),))
        return int(rows[0][0]) if rows else 0

    def get_counts(self) -> dict[str, int]:
        rows = self._run("reading counters", "SELECT name, value FROM krepis_stats ORDER BY name")
        return {name: int(value) for name, value in rows}

    def entry_count(self) -> int:
        return int(self._read_log("counting entries", "SELECT entries FROM krepis_log WHERE id = 1")[0])

    def next_seq(self) -> int:
        return int(self._read_log("reading the sequence", "SELECT next_seq FROM krepis_log WHERE id = 1")[0])

    def _log_row(self, row: tuple[Any, ...] | None) -> tuple[Any, ...]:
        """The one krepis_log row; its absence is damage, never an empty journal."""
        if row is None:
            raise CorruptStorageError(f"PostgreSQL at {self.location}: the krepis_log row is missing",
                                      self.location)
        return row

    def _read_log(self, doing: str, sql: str) -> tuple[Any, ...]:
        """One autocommit read of the krepis_log row (``sql`` selects it)."""
        rows = self._run(doing, sql)
        return self._log_row(rows[0] if rows else None)

    def tree_head(self) -> TreeHead:
        seq, first_seq, epoch, raw = self._read_log(
            "reading the tree", "SELECT next_seq, first_seq, epoch, frontier FROM krepis_log WHERE id = 1")
        raw = bytes(raw)
        frontier = [raw[i:i + 32] for i in range(0, len(raw), 32)]
        return TreeHead(int(seq) - int(first_seq), root_from_frontier(frontier), int(first_seq),
                        int(epoch))

    def op_names(self) -> list[str]:
        rows = self._run("reading op names", f"{_OP_NAMES} UNION SELECT name FROM krepis_ops")
        return sorted(name for (name,) in rows)

    def get_entry(self, seq: int) -> TransactionLog | None:
        self._check_open()  # as every operation, even one that has nothing to read
        if not 0 <= seq < 2**63:
            return None
        rows = self._run("reading the journal",
                         f"SELECT {_COLUMNS} FROM krepis_entries WHERE seq = %s", (seq,))
        return self._decode(rows[0]) if rows else None

    def _decode(self, row: tuple[Any, ...]) -> TransactionLog:
        seq, ts, op, rid, status, duration, raw_error = row
        st = STATUS_OF.get(status)
        try:
            error = None if raw_error is None else bytes(raw_error).decode("utf-8")
        except UnicodeDecodeError:
            error = ""
        if st is None or not op or not rid or error == "":
            raise CorruptStorageError(
                f"PostgreSQL at {self.location}: entry {seq} is not a valid TransactionLog",
                self.location)
        return make_log(int(ts), op, rid, st, None if duration is None else int(duration), error,
                        int(seq))

    def scan(self, query: Query, *, after: TransactionLog | None, limit: int) -> list[TransactionLog]:
        self._check_open()  # as every operation, even one that has nothing to read
        if limit <= 0 or query.op_names == () or query.statuses == ():
            return []
        desc = query.newest_first
        order = "DESC" if desc else "ASC"
        where: list[str] = []
        params: list[object] = []
        if query.since is not None:
            where.append("timestamp >= %s")
            params.append(query.since)
        if query.until is not None:
            where.append("timestamp < %s")
            params.append(query.until)
        if query.request_id is not None:
            where.append("request_id = %s")
            params.append(query.request_id)
        if query.order == "append":
            if after is not None and after.seq is not None:
                where.append("seq < %s" if desc else "seq > %s")
                params.append(after.seq)
            if query.op_names is not None:
                where.append("op_name = ANY(%s)")
                params.append(list(query.op_names))
            if query.statuses is not None:
                where.append("status = ANY(%s)")
                params.append([STATUS_CODE[s] for s in query.statuses])
            sql = (f"SELECT {_COLUMNS} FROM krepis_entries"
                   + (" WHERE " + " AND ".join(where) if where else "")
                   + f" ORDER BY seq {order} LIMIT %s")
            rows = self._run("reading the journal", sql, [*params, limit])
            return [self._decode(r) for r in rows]
        if after is not None and after.seq is not None:
            where.append("(timestamp, seq) < (%s, %s)" if desc else "(timestamp, seq) > (%s, %s)")
            params += [after.timestamp, after.seq]
        # One index range per (op, status) or (request id, status) pair, each read in order with
        # the limit, merged by the outer ORDER BY: O(log n + results) for any combination.
        branches: list[tuple[str, list[object]]] = []
        ops = query.op_names if query.op_names is not None else (None,)
        by_status: list[tuple[str, list[object]]]
        if query.statuses is not None:
            by_status = [("status = %s", [STATUS_CODE[status]]) for status in query.statuses]
        elif query.request_id is not None or query.op_names is not None:
            # a range per status, and the ranges of every other status: damage the schema's CHECK
            # forbids (empty on a sound store), read so that it is reported, never skipped
            by_status = [("status = %s", [code]) for code in STATUS_OF]
            by_status.append(("(status < %s OR status > %s OR status IS NULL)",
                              [min(STATUS_OF), max(STATUS_OF)]))
        else:
            by_status = [("", [])]
        for op in ops:
            for status_cond, status_params in by_status:
                cond, extra = list(where), list(params)
                if op is not None:
                    cond.append("op_name = %s")
                    extra.append(op)
                if status_cond:
                    cond.append(status_cond)
                    extra += status_params
                branches.append((
                    f"(SELECT {_COLUMNS} FROM krepis_entries"
                    + (" WHERE " + " AND ".join(cond) if cond else "")
                    + f" ORDER BY timestamp {order}, seq {order} LIMIT %s)", [*extra, limit]))
        if len(branches) == 1:
            sql, all_params = branches[0][0][1:-1], branches[0][1]
        else:
            sql = (" UNION ALL ".join(b for b, _ in branches)
                   + f" ORDER BY timestamp {order}, seq {order} LIMIT %s")
            all_params = [p for _, ps in branches for p in ps] + [limit]
        rows = self._run("reading the journal", sql, all_params)
        return [self._decode(r) for r in rows]

    def add_checkpoint(self, epoch: int, size: int, origin: str, note: str) -> None:
        def body(cur: Any) -> None:
            row = self._lock_log(cur)  # serialized with writers and clears
            cur.execute("SELECT epoch, size, origin, note FROM krepis_checkpoints")
            kept = [(int(e), int(n), o, t) for e, n, o, t in cur.fetchall()]
            check_checkpoint(epoch, size, origin, int(row[2]), int(row[0]) - int(row[1]), kept)
            cur.execute("INSERT INTO krepis_checkpoints VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (epoch, size, origin) DO UPDATE SET note = EXCLUDED.note",
                        (epoch, size, origin, note))

        self._transaction("storing a checkpoint", body)

    def checkpoints(self) -> list[tuple[int, int, str, str]]:
        rows = self._run("reading checkpoints", "SELECT epoch, size, origin, note FROM krepis_checkpoints "
                                                "ORDER BY epoch, size, origin")
        return [(int(e), int(n), o, t) for e, n, o, t in rows]

    def tree_node(self, level: int, index: int) -> bytes | None:
        rows = self._run("reading the tree", "SELECT hash FROM krepis_tree WHERE level = %s AND idx = %s",
                         (level, index))
        return bytes(rows[0][0]) if rows else None

    def leaf_hashes(self, first_seq: int, start: int, count: int) -> list[bytes]:
        self._check_open()  # as every operation, even one that has nothing to read
        if count <= 0:
            return []
        lo = first_seq + start
        rows = self._run("reading the journal",
                         "SELECT seq, leaf FROM krepis_entries WHERE seq >= %s AND seq < %s ORDER BY seq",
                         (lo, lo + count))
        if [int(seq) for seq, _ in rows] != list(range(lo, lo + count)):
            raise CorruptStorageError(f"PostgreSQL at {self.location}: entries {lo}…{lo + count - 1} "
                                      "are not all there", self.location)
        return [bytes(leaf) for _, leaf in rows]

    def verify(self) -> VerifyReport:
        where = f"PostgreSQL at {self.location}"
        self._check_open()
        try:
            with self._pool.connection() as conn:
                conn.autocommit = False
                try:
                    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    return self._verify(conn, where)
                finally:
                    conn.rollback()
                    conn.autocommit = True
        except JournalError:
            raise
        except Exception as exc:
            raise self._error(exc, "verifying") from None

    def _verify(self, conn: Any, where: str) -> VerifyReport:
        row = self._log_row(conn.execute("SELECT next_seq, first_seq, frontier, entries, epoch "
                                         "FROM krepis_log WHERE id = 1").fetchone())
        seq, first_seq, raw, count = int(row[0]), int(row[1]), bytes(row[2]), int(row[3])
        frontier = [raw[i:i + 32] for i in range(0, len(raw), 32)]
        nodes = {(int(level), int(idx)): bytes(h) for level, idx, h in
                 conn.execute("SELECT level, idx, hash FROM krepis_tree").fetchall()}
        live = self._live_mark(conn.execute("SELECT value FROM krepis_meta WHERE key = 'live'").fetchone(),
                               int(row[4]), first_seq)
        audit = LogAudit(where, self.location, first_seq, lambda level, i: nodes.get((level, i)), live)
        with conn.cursor(name="krepis_verify") as cur:
            cur.itersize = 5000
            cur.execute(f"SELECT {_COLUMNS}, leaf FROM krepis_entries ORDER BY seq")
            for *cols, leaf in cur:
                log = self._decode(tuple(cols))
                data = encode_log(log)
                if log.seq == audit.expected and sha256(b"\x00" + data).digest() != bytes(leaf):
                    raise CorruptStorageError(f"{where}: entry {log.seq} does not match its leaf hash",
                                              self.location)
                audit.add(int(log.seq or 0), data)
        if count != seq - live:
            raise CorruptStorageError(f"{where}: the entry count says {count}; there are "
                                      f"{seq - live}", self.location)
        return audit.finish(seq, frontier, len(nodes))

    def clear(self, trace: Callable[[int, int, int], TransactionLog] | None = None) -> None:
        def body(cur: Any) -> None:
            cur.execute("LOCK TABLE krepis_log IN EXCLUSIVE MODE")
            cur.execute("SELECT entries, epoch, (SELECT count(*) FROM krepis_stats) FROM krepis_log "
                        "WHERE id = 1")
            row = self._log_row(cur.fetchone())
            # the op names of the cleared entries stay known (as LMDB's op table keeps them)
            cur.execute(f"INSERT INTO krepis_ops (name) {_OP_NAMES} ON CONFLICT DO NOTHING")
            cur.execute("TRUNCATE krepis_entries, krepis_stats, krepis_tree")
            cur.execute("UPDATE krepis_log SET first_seq = next_seq, epoch = epoch + 1, frontier = '', "
                        "entries = 0 WHERE id = 1")
            if trace is not None:
                log = trace(int(row[0]), int(row[2]), int(row[1]) + 1)
                self._append(cur, [WriteRequest([(log, encode_log(log))], ())], {"names": [], "ks": []})

        self._transaction("clearing", body)

    def get_setting(self, name: str) -> str | None:
        check_setting(name)
        rows = self._run("reading a setting", "SELECT value FROM krepis_meta WHERE key = %s", (name,))
        if not rows:
            return None
        return decode_setting(str(rows[0][0]).encode("utf-8", "surrogatepass"), name, self.location,
                              f"PostgreSQL at {self.location}")

    def set_setting(self, name: str, value: str | None) -> None:
        check_setting(name, value)
        if value is None:
            self._run("storing a setting", "DELETE FROM krepis_meta WHERE key = %s", (name,))
            return
        self._run("storing a setting", "INSERT INTO krepis_meta (key, value) VALUES (%s, %s) ON CONFLICT "
                                       "(key) DO UPDATE SET value = EXCLUDED.value", (name, value))

    def sync(self) -> None:
        # A commit under synchronous_commit = on flushes the WAL up to its own commit record,
        # so every earlier (asynchronous) commit too — but only when the transaction wrote WAL
        # itself: one that merely took a transaction id commits asynchronously. Hence the
        # (no-op) update of a row krepis owns.
        self._run("syncing", "BEGIN; SET LOCAL synchronous_commit = on; "
                             "UPDATE krepis_meta SET value = value WHERE key = 'format'; COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.close()

    # -- archive: the live table's prefix moves out ------------------------------------------
    def _live_mark(self, row: tuple[Any, ...] | None, epoch: int, first_seq: int) -> int:
        """``krepis_meta['live']`` (``"epoch:seq"``) when it is of the current log, else the
        log's first seq."""
        if row is None:
            return first_seq
        try:
            live_epoch, live = (int(part) for part in str(row[0]).split(":"))
        except ValueError:
            raise CorruptStorageError(f"PostgreSQL at {self.location}: malformed live record "
                                      f"{row[0]!r:.40}", self.location) from None
        return live if live_epoch == epoch and live > first_seq else first_seq

    def live_first_seq(self) -> int:
        first_seq, epoch, mark = self._read_log(
            "reading the tree", "SELECT l.first_seq, l.epoch, (SELECT value FROM krepis_meta "
                                "WHERE key = 'live') FROM krepis_log l WHERE id = 1")
        return self._live_mark(None if mark is None else (mark,), int(epoch), int(first_seq))

    def drop_prefix(self, epoch: int, upto_seq: int) -> int:
        def body(cur: Any) -> int:
            row = self._lock_log(cur)  # serialized with writers and clears
            seq, first_seq, current = int(row[0]), int(row[1]), int(row[2])
            check_drop_prefix(self.location, epoch, upto_seq, current, seq)
            cur.execute("SELECT value FROM krepis_meta WHERE key = 'live'")
            live = self._live_mark(cur.fetchone(), epoch, first_seq)
            if upto_seq <= live:
                return 0
            # the op names of archived entries stay known (as LMDB's op table keeps them)
            cur.execute("INSERT INTO krepis_ops (name) SELECT DISTINCT op_name FROM krepis_entries "
                        "WHERE seq >= %s AND seq < %s ON CONFLICT DO NOTHING", (live, upto_seq))
            cur.execute("DELETE FROM krepis_entries WHERE seq >= %s AND seq < %s", (live, upto_seq))
            removed = int(cur.rowcount)
            if removed != upto_seq - live:
                raise CorruptStorageError(f"PostgreSQL at {self.location}: entries {live}…{upto_seq - 1} "
                                          f"are not all there ({removed} found)", self.location)
            cur.execute("UPDATE krepis_log SET entries = entries - %s WHERE id = 1", (removed,))
            cur.execute("INSERT INTO krepis_meta (key, value) VALUES ('live', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (f"{epoch}:{upto_seq}",))
            return removed

        return int(self._transaction("removing archived entries", body))


