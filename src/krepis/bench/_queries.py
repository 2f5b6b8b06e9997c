"""The read rows: queries side by side with sqlite3, lookups, archive, opening, disk use."""
from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from typing import Any

import lmdb

from .._model import LogStatus
from ..journal import SovereignJournal
from ._data import (
    RARE_OP,
    _SqliteReader,
    fill_pair,
)


def _query_pairs(journal: SovereignJournal, sql: _SqliteReader, entries: int
                 ) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """(name, krepis call, sqlite3 call) for each query of the read section."""
    probe = journal.query(order="append", after=entries // 2, newest_first=False, limit=1)[0]
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

_RSS_PROBE = """
import sys
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
from krepis import SovereignJournal
j = SovereignJournal(sys.argv[1], create=False, retention="off")
j.journal_count()
opened = rss()
j.query(request_id=sys.argv[2])
print(opened, rss())
"""

def _rss_after_lookup(path: str, rid: str) -> tuple[int, int]:
    """(RSS after opening, RSS after one request-id lookup) of a fresh process, in bytes."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, path, rid], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1])

def _cli_lookup_ms(path: str, rid: str) -> tuple[float, float]:
    """(median ms of `krepis logs --request-id R --json`, median ms of `krepis --version`)."""
    import subprocess
    import sys

    exe = [sys.executable, "-m", "krepis"]
    # As a user's shell runs it: Python caches compiled modules (some sandboxes turn that off
    # with PYTHONDONTWRITEBYTECODE, which makes every start compile krepis again).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def timed(args: list[str]) -> float:
        subprocess.run(exe + args, capture_output=True, check=True, env=env)  # warm-up
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            subprocess.run(exe + args, capture_output=True, check=True, env=env)
            samples.append((time.perf_counter() - t0) * 1000)
        return statistics.median(samples)

    return timed(["logs", "--storage", path, "--request-id", rid, "--json"]), timed(["--version"])

def _sqlite_bytes(path: str) -> int:
    db = sqlite3.connect(path)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    return int(pages) * int(size)

def _tree_bytes(path: str, entries: int) -> float:
    """Bytes per entry of the Merkle tree's own records: the tile-hash database and the frontier."""
    env = lmdb.open(path, max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            stat = txn.stat(env.open_db(b"tree", txn=txn, create=False))
            pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            frontier = len(txn.get(b"tree", db=env.open_db(b"meta", txn=txn, create=False)) or b"")
    finally:
        env.close()
    return (pages * 4096 + frontier) / entries

def bench_queries(work: str, large: int, small: int, note: Callable[[str, int], None]) -> dict[str, Any]:
    """The read section: each query on krepis and sqlite3 at ``small`` and ``large`` entries."""
    out: dict[str, Any] = {"sizes": [small, large]}
    for n in (small, large):
        k, s = os.path.join(work, f"q{n}"), os.path.join(work, f"q{n}.sqlite")
        note(f"filling krepis and sqlite3 with {n:,} realistic entries", 0)
        fill_pair(k, s, n)
        note(f"querying {n:,} entries", 0)
        out[str(n)] = _query_times(k, s, n)
        apparent, allocated = _disk_bytes(k)
        out[str(n)]["bytes_per_entry"] = {"krepis": round(apparent / n, 1),
                                          "krepis_allocated": round(allocated / n, 1),
                                          "sqlite": round(_sqlite_bytes(s) / n, 1),
                                          "tree": round(_tree_bytes(k, n), 2)}
        if n == large:
            with SovereignJournal(k, create=False, retention="off") as journal:
                rid = journal.entry(n // 3).request_id
            opened, after = _rss_after_lookup(k, rid)
            out["rss"] = {"opened_mib": round(opened / 2**20, 1), "after_lookup_mib": round(after / 2**20, 1),
                          "ratio": round(after / opened, 2)}
            cli_ms, start_ms = _cli_lookup_ms(k, rid)
            out["cli"] = {"logs_request_id_ms": round(cli_ms, 1), "process_start_ms": round(start_ms, 1)}
            note(f"archiving {n:,} entries", 0)
            out["archive"] = bench_archive(k, os.path.join(work, "archive"), rid)
            note(f"archiving {n:,} entries", 0)
        for name in (k, s, s + "-wal", s + "-shm"):
            if os.path.isdir(name):
                shutil.rmtree(name, ignore_errors=True)
            elif os.path.exists(name):
                os.unlink(name)
        note(f"querying {n:,} entries", 1)
    return out

def bench_archive(path: str, directory: str, rid: str) -> dict[str, Any]:
    """Archive every full bundle of the journal at ``path`` into ``directory``: entries per
    second (the dictionary's training included), bytes per archived entry (every file of the
    archive: segments with their indexes, the dictionary, the manifest), a request-id lookup in
    the archive, and the live store's size before and after."""
    with SovereignJournal(path, create=False, retention="off") as journal:
        before = journal.journal_count()
        start = time.perf_counter()
        report = journal.archive(directory, keep_last=0)
        seconds = time.perf_counter() - start
        files = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        lookup_ms = _per_call_us(lambda: journal.query(request_id=rid, archive=directory), 5) / 1000
        found = journal.query(request_id=rid, archive=directory)
        if not found:
            raise AssertionError(f"request id {rid} not found in the archive")
        after = journal.journal_count()
    shutil.rmtree(directory, ignore_errors=True)
    return {"entries": report.entries, "entries_per_s": round(report.entries / seconds),
            "bytes_per_entry": round(files / max(1, report.entries), 2),
            "segment_bytes_per_entry": round(report.bytes / max(1, report.entries), 2),
            "request_id_lookup_ms": round(lookup_ms, 2), "live_entries_before": before,
            "live_entries_after": after}

def _per_call_us(fn: Callable[[], object], repeat: int) -> float:
    """Median of 5 timings of `repeat` calls, in µs per call."""
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        samples.append((time.perf_counter() - t0) / repeat * 1e6)
    return statistics.median(samples)

def _open_and_recover_us(path: str) -> float:
    samples = []
    for _ in range(15):
        t0 = time.perf_counter()
        with SovereignJournal(path, retention="off") as journal:
            journal.recover_op_count("bench_op")
            journal.journal_count()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)

def _disk_bytes(path: str) -> tuple[int, int]:
    """(apparent size, allocated bytes) of data.mdb."""
    st = os.stat(os.path.join(path, "data.mdb"))
    return st.st_size, st.st_blocks * 512

QUERY_NAMES = ("request-id lookup", "rare op, all matches", "status=Failed, limit 20",
               "op + 1-second window", "get_recent_logs(100)")
