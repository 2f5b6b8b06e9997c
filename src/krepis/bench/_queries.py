"""The query rows: five queries side by side with sqlite3 on the same rows, and two lookups."""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from .._model import LogStatus
from ..journal import SovereignJournal
from ._data import COUNTER, RARE_OP, _SqliteReader, fill_pair


def _query_pairs(journal: SovereignJournal, sql: _SqliteReader, entries: int
                 ) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """(name, krepis call, sqlite3 call) for each query of the read section."""
    probe = journal.entry(entries // 2)  # the middle entry (sequence numbers start at 0)
    rid, op, t = probe.request_id, probe.op_name, probe.timestamp
    window = (t - 500, t + 500)
    return [
        ("request-id lookup", lambda: journal.query(request_id=rid),
         lambda: sql.rows("WHERE request_id = ?", (rid,))),
        ("rare op, all matches", lambda: journal.query(op_name=RARE_OP),
         lambda: sql.rows("WHERE op_name = ?", (RARE_OP,))),
        ("status=Failed, limit 20", lambda: journal.query(status=LogStatus.Failed, limit=20),
         lambda: sql.rows("WHERE status = ?", ("Failed",), 20)),
        ("op + 1-second window", lambda: journal.query(op_name=op, since=window[0], until=window[1]),
         lambda: sql.rows("WHERE op_name = ? AND timestamp >= ? AND timestamp < ?", (op, *window))),
        ("get_recent_logs(100)", lambda: journal.get_recent_logs(100),
         lambda: sql.rows("", (), 100)),
    ]

def _same_answers(pairs: list[tuple[str, Callable[[], object], Callable[[], object]]]) -> None:
    for name, ours, theirs in pairs:
        a, b = ours(), theirs()
        if a != b or [g.seq for g in a] != [g.seq for g in b]:  # type: ignore[attr-defined]
            raise AssertionError(f"bench query {name!r}: krepis and sqlite3 disagree")

def _query_times(path: str, sqlite_path: str, entries: int) -> dict[str, dict[str, float]]:
    with SovereignJournal(path, create=False, retention="off") as journal:
        sql = _SqliteReader(sqlite_path)
        try:
            pairs = _query_pairs(journal, sql, entries)
            _same_answers(pairs)
            out: dict[str, dict[str, float]] = {}
            for name, ours, theirs in pairs:
                repeat = 50 if "rare" in name else 200
                krepis_us = _per_call_us(ours, repeat)
                sqlite_us = _per_call_us(theirs, repeat)
                out[name] = {"krepis_us": round(krepis_us, 1), "sqlite_us": round(sqlite_us, 1),
                             "ratio": round(krepis_us / sqlite_us, 2)}
            return out
        finally:
            sql.close()

def query_rows(krepis_path: str, sqlite_path: str, entries: int) -> dict[str, Any]:
    """Fill a krepis store and an sqlite3 database with the same ``entries`` realistic entries,
    time each query on both (after checking both give the same answer), and ``recover_op_count``
    and ``journal_count`` on krepis. The sqlite3 database is removed; the krepis store stays."""
    fill_pair(krepis_path, sqlite_path, entries)
    try:
        out: dict[str, Any] = _query_times(krepis_path, sqlite_path, entries)
    finally:
        for name in (sqlite_path, sqlite_path + "-wal", sqlite_path + "-shm"):
            if os.path.exists(name):
                os.unlink(name)
    with SovereignJournal(krepis_path, create=False, retention="off") as journal:
        if journal.recover_op_count(COUNTER.decode()) != entries or journal.journal_count() != entries:
            raise AssertionError(f"bench journal of {entries} entries counts otherwise")
        out["recover_op_count"] = {"krepis_us": round(_per_call_us(
            lambda: journal.recover_op_count(COUNTER.decode()), 2000), 2)}
        out["journal_count"] = {"krepis_us": round(_per_call_us(journal.journal_count, 2000), 2)}
    return out


def _per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """Median of 5 timings of `repeat` calls, in µs per call."""
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        samples.append((time.perf_counter() - t0) / repeat * 1e6)
    return statistics.median(samples)


QUERY_NAMES = ("request-id lookup", "rare op, all matches", "status=Failed, limit 20",
               "op + 1-second window", "get_recent_logs(100)")
