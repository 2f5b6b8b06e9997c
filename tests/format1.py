"""Storage format 1 (krepis 0.1), written and read by the rules of its contract, for the
migration tests. The small committed store in ``fixtures/format1-store`` was written by krepis
0.1's own code; this module makes bigger ones and reads either kind back."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import lmdb

from krepis import LogStatus, TransactionLog

# The PostgreSQL tables of format 1, as krepis 0.1 created them.
PG_SCHEMA_1 = """
CREATE TABLE krepis_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE krepis_journal (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    timestamp bigint NOT NULL CHECK (timestamp >= 0),
    request_id text NOT NULL,
    entry text NOT NULL
);
CREATE INDEX krepis_journal_time ON krepis_journal (timestamp, seq);
CREATE INDEX krepis_journal_request ON krepis_journal (request_id, timestamp, seq);
CREATE TABLE krepis_stats (name text PRIMARY KEY, value bigint NOT NULL CHECK (value >= 0));
CREATE TABLE krepis_state (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO krepis_meta VALUES ('format', '1');
"""


def write_lmdb_store(path: Path, logs: list[TransactionLog], counters: dict[str, int],
                     first_seq: int = 1) -> None:
    """A format-1 LMDB store holding ``logs`` in this append order (sequence from first_seq)."""
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=1 << 34, max_dbs=8, sync=False)
    try:
        with env.begin(write=True) as txn:
            journal = env.open_db(b"journal", txn=txn)
            stats = env.open_db(b"stats", txn=txn)
            meta = env.open_db(b"meta", txn=txn)
            seq = first_seq - 1
            for log in logs:
                seq += 1
                key = b"%019d:%020d:%b" % (log.timestamp, seq, log.request_id.encode())
                txn.put(key, log.to_json().encode(), db=journal)
            for name, value in counters.items():
                txn.put(b"op_count:" + name.encode(), struct.pack("<Q", value), db=stats)
            txn.put(b"format", b"1", db=meta)
            txn.put(b"seq", struct.pack("<Q", seq), db=meta)
        env.sync(True)
    finally:
        env.close()
    (path / "lock.mdb").unlink()


def read_lmdb_store(path: Path) -> tuple[list[TransactionLog], dict[str, int]]:
    """Every entry of a format-1 store in append (sequence) order, and the counters."""
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            rows = list(txn.cursor(db=env.open_db(b"journal", txn=txn, create=False)))
            stats = list(txn.cursor(db=env.open_db(b"stats", txn=txn, create=False)))
    finally:
        env.close()
    rows.sort(key=lambda kv: int(kv[0][20:40]))
    logs = [_log(json.loads(v)) for _, v in rows]
    return logs, {k[9:].decode(): struct.unpack("<Q", v)[0] for k, v in stats}


def _log(d: dict[str, Any]) -> TransactionLog:
    return TransactionLog(d["timestamp"], d["op_name"], d["request_id"], LogStatus(d["status"]),
                          d.get("duration_us"), d.get("error"))
