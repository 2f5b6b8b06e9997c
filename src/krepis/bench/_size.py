"""The size rows: bytes on disk per entry of a journal written one entry per call, against
sqlite3 holding the same rows with the equivalent indexes."""
from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from .._model import TransactionLog
from ..journal import SovereignJournal
from ._data import SQLITE_QUERY_SCHEMA, realistic_entries


def allocated_bytes(*paths: str) -> dict[str, int]:
    """The bytes allocated on disk (``st_blocks`` × 512) of every regular file at or under each
    path, by path relative to the path's parent: nothing is left out (a commit log, LMDB's free
    pages, a lock file, a WAL). Paths that do not exist count nothing; links are not followed."""
    out: dict[str, int] = {}
    for path in paths:
        if not os.path.lexists(path):
            continue
        base = os.path.dirname(path)
        if os.path.isdir(path) and not os.path.islink(path):
            for root, _dirs, files in os.walk(path):
                for name in files:
                    full = os.path.join(root, name)
                    out[os.path.relpath(full, base)] = os.lstat(full).st_blocks * 512
        else:
            out[os.path.relpath(path, base)] = os.lstat(path).st_blocks * 512
    return out


def _sqlite_files(path: str) -> tuple[str, ...]:
    return path, path + "-wal", path + "-shm", path + "-journal"


def _write_krepis(location: str, logs: list[TransactionLog]) -> None:
    with SovereignJournal(location, flush="interval:100ms", retention="off") as journal:
        for log in logs:
            journal.log_transaction(log)


def _write_sqlite(path: str, logs: list[TransactionLog]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")  # the size does not depend on it
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal'").fetchone():
            db.executescript(SQLITE_QUERY_SCHEMA)
        for g in logs:
            db.execute("BEGIN")
            db.execute("INSERT INTO journal (timestamp, op_name, request_id, status, duration_us, error) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (g.timestamp, g.op_name, g.request_id, g.status.value, g.duration_us, g.error))
            db.execute("COMMIT")
    finally:
        db.close()


def bench_sizes(work: str, sizes: tuple[int, ...], note: Callable[[str], None]) -> list[dict[str, Any]]:
    """Write the same realistic entries, one per call (krepis: ``log_transaction``; sqlite3: one
    transaction per row, WAL), and measure both at rest (closed) at each size in ``sizes``
    (ascending): every file of the krepis store against every file of the sqlite3 database."""
    store, db = os.path.join(work, "size-store"), os.path.join(work, "size.sqlite")
    entries = realistic_entries(sizes[-1])
    out: list[dict[str, Any]] = []
    done = 0
    for n in sizes:
        note(f"writing {n:,} entries one per call: krepis and sqlite3")
        more = list(itertools.islice(entries, n - done))
        _write_krepis(store, more)
        _write_sqlite(db, more)
        done = n
        k, s = allocated_bytes(store), allocated_bytes(*_sqlite_files(db))
        out.append({"entries": n, "krepis_bytes_per_entry": round(sum(k.values()) / n, 1),
                    "sqlite_bytes_per_entry": round(sum(s.values()) / n, 1),
                    "ratio": round(sum(k.values()) / sum(s.values()), 3),
                    "krepis_files": k, "sqlite_files": s})
    return out
