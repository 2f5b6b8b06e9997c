"""Journals to read: realistic entries, and the same rows in krepis and in sqlite3."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from .._model import LogStatus, TransactionLog, encode_log, make_log, now_ms
from ..journal import SovereignJournal
from ..storage import WriteRequest

RARE_OP = "rare_op"
COUNTER = b"bench_op"  # counted once per entry written by fill_pair

_OPS = tuple(f"op_{name}" for name in (
    "charge", "refund", "login", "logout", "search", "upload", "download", "render", "notify",
    "sync", "auth", "invoice", "quote", "ship", "track", "review", "report", "export", "import",
    "audit"))

#: The query rows' sqlite3 table: the entry's columns and the indexes equivalent to krepis' four
#: (request id; op and time; status and time; time).
SQLITE_QUERY_SCHEMA = """
CREATE TABLE journal (seq INTEGER PRIMARY KEY, timestamp INTEGER NOT NULL, op_name TEXT NOT NULL,
                      request_id TEXT NOT NULL, status TEXT NOT NULL, duration_us INTEGER, error TEXT);
CREATE INDEX journal_request ON journal (request_id);
CREATE INDEX journal_op_time ON journal (op_name, timestamp);
CREATE INDEX journal_status_time ON journal (status, timestamp);
CREATE INDEX journal_time ON journal (timestamp);
"""

def realistic_entries(n: int, seed: int = 6962) -> Iterator[TransactionLog]:
    """Requests as a service journals them: a uuid4 request id per request, a Started and a
    Completed entry each (about 1% Failed instead), 20 op names, one op in 10,000 rare, about
    200 entries per second."""
    import random
    import uuid

    rnd = random.Random(seed)
    base = now_ms() - n * 5
    done = 0
    i = 0
    while done < n:
        rid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        op = RARE_OP if i % 5000 == 2500 else _OPS[rnd.randrange(len(_OPS))]
        ts = base + done * 5
        yield TransactionLog(ts, op, rid, LogStatus.Started)
        done += 1
        if done < n:
            if rnd.random() < 0.01:
                yield TransactionLog(ts + 3, op, rid, LogStatus.Failed, duration_us=3000,
                                     error="TimeoutError: upstream did not answer")
            else:
                yield TransactionLog(ts + 2, op, rid, LogStatus.Completed, duration_us=2000 + i % 997)
            done += 1
        i += 1

def fill_pair(krepis_path: str, sqlite_path: str, entries: int,
              progress: Callable[[int], None] | None = None) -> None:
    """The same realistic entries into a krepis store (each counted in ``bench_op``) and an
    sqlite3 database, 64 per commit (bigger bulk transactions would leave LMDB's file with more
    free pages than a journal written by ordinary commits has)."""
    db = sqlite3.connect(sqlite_path, isolation_level=None)
    db.executescript(SQLITE_QUERY_SCHEMA)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # filling only; the krepis side does not sync either
    with SovereignJournal(krepis_path, flush="interval:1000ms", retention="off") as journal:
        storage = journal._storage
        batch: list[TransactionLog] = []
        written = [storage.next_seq()]  # the same sequence numbers on both sides

        def flush() -> None:
            storage.write_batch([WriteRequest([(log, encode_log(log)) for log in batch],
                                              [COUNTER] * len(batch))])
            db.execute("BEGIN")
            first = written[0]
            db.executemany("INSERT INTO journal (seq, timestamp, op_name, request_id, status, duration_us, "
                           "error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(first + i, g.timestamp, g.op_name, g.request_id, g.status.value,
                             g.duration_us, g.error) for i, g in enumerate(batch)])
            written[0] += len(batch)
            db.execute("COMMIT")
            if progress:
                progress(len(batch))
            batch.clear()

        for log in realistic_entries(entries):
            batch.append(log)
            if len(batch) >= 64:  # commits of the size group commit makes under load
                flush()
        if batch:
            flush()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()

class _SqliteReader:
    """The sqlite3 side of each query, returning the same TransactionLog objects."""

    _COLS = "timestamp, op_name, request_id, status, duration_us, error, seq"

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def close(self) -> None:
        self.db.close()

    def rows(self, where: str, params: tuple[Any, ...], limit: int | None = None) -> list[TransactionLog]:
        sql = (f"SELECT {self._COLS} FROM journal {where} ORDER BY timestamp DESC, seq DESC"
               + (f" LIMIT {limit}" if limit is not None else ""))
        status = _STATUS_BY_NAME
        return [make_log(t, o, r, status[s], d, e, q) for t, o, r, s, d, e, q in self.db.execute(sql, params)]

_STATUS_BY_NAME = {s.value: s for s in LogStatus}
