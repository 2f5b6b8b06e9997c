"""``krepis bench``: krepis against the disk's fsync limit and the alternatives, side by side.

Every row runs in the same process, on the same disk, one after another, so ratios between rows
are meaningful even on a noisy machine; absolute numbers are not.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import lmdb

from ._model import LogStatus, TransactionLog, encode_log, make_log, now_ms
from ._version import __version__
from .journal import AsyncSovereignJournal, SovereignJournal
from .storage import WriteRequest

__all__ = ["BenchConfig", "Row", "run_bench"]

LINE = b"x" * 99 + b"\n"


@dataclass
class BenchConfig:
    seconds: float = 3.0  # per write row
    large: int = 1_000_000  # entries of the large journal for the read rows
    small: int = 2_000
    query_small: int = 10_000  # the small journal of the query rows (growth to `large`)
    threads: int = 16
    tasks: int = 256
    interval_ms: int = 10
    directory: str | None = None  # where the temporary stores go (default: cwd)
    postgres_url: str | None = None  # adds PostgreSQL rows, in a temporary schema

    @classmethod
    def quick(cls, directory: str | None = None) -> BenchConfig:
        return cls(seconds=0.6, large=100_000, directory=directory)


@dataclass
class Row:
    name: str
    ops: int
    seconds: float
    latencies_us: list[float] = field(repr=False, default_factory=list)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_us:
            return 0.0
        data = sorted(self.latencies_us)
        return data[min(len(data) - 1, int(q * len(data)))]

    def summary(self, base: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "ops": self.ops,
            "seconds": round(self.seconds, 4),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_us": round(self.percentile(0.50), 1),
            "p99_us": round(self.percentile(0.99), 1),
            "ratio": round(self.ops_per_s / base, 3) if base else None,
        }


def _entry(i: int) -> TransactionLog:
    return TransactionLog(now_ms(), "bench_op", f"req-{i:08d}", LogStatus.Completed)


def _timed_loop(op: Callable[[int], object], seconds: float, stop: threading.Event | None = None) -> Row:
    """Call op(i) back to back for `seconds`; record each call's latency."""
    lat: list[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    i = 0
    start = clock()
    while True:
        t0 = clock()
        op(i)
        t1 = clock()
        lat.append((t1 - t0) * 1e6)
        i += 1
        if t1 >= end or (stop is not None and stop.is_set()):
            break
    return Row("", i, clock() - start, lat)


def _threaded(op: Callable[[int], object], threads: int, seconds: float) -> Row:
    rows: list[Row] = []
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        rows.append(_timed_loop(op, seconds))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return Row("", sum(r.ops for r in rows), elapsed, [x for r in rows for x in r.latencies_us])


# --- rows -----------------------------------------------------------------------------------

def bench_physical(path: str, seconds: float) -> Row:
    """The disk's ceiling for one durable writer: ~100 B written in place in a preallocated file,
    then fdatasync. No file size change, so no file-system journal commit: only the data flush."""
    slots = 4096
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, slots * len(LINE))
        os.write(fd, LINE * slots)
        os.fsync(fd)

        def op(i: int) -> None:
            os.pwrite(fd, LINE, (i % slots) * len(LINE))
            os.fdatasync(fd)

        return _timed_loop(op, seconds)
    finally:
        os.close(fd)


def bench_fsync(path: str, seconds: float) -> Row:
    """Appending ~100 B then fdatasync: each flush also commits the file's new size through the
    file system's journal, so this is slower than the physical limit."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        def op(_: int) -> None:
            os.write(fd, LINE)
            os.fdatasync(fd)

        return _timed_loop(op, seconds)
    finally:
        os.close(fd)


def bench_spec_design(path: str, seconds: float) -> Row:
    """The spec's kernel: write+flush the log, then update+flush the counter (two commits)."""
    with SovereignJournal(path, flush="sync", retention="off") as journal:
        def op(i: int) -> None:
            journal.log_transaction(_entry(i))
            journal.increment_op_count("bench_op")

        return _timed_loop(op, seconds)


def bench_sqlite(path: str, seconds: float) -> tuple[Row, float]:
    """What a Python user would reach for: sqlite3, WAL, synchronous=FULL, a transaction per op."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE journal (id INTEGER PRIMARY KEY, timestamp INTEGER, entry TEXT)")
        db.execute("CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER)")
        db.execute("CREATE INDEX journal_ts ON journal(timestamp)")

        def op(i: int) -> None:
            log = _entry(i)
            db.execute("BEGIN")
            db.execute("INSERT INTO journal (timestamp, entry) VALUES (?, ?)",
                       (log.timestamp, log.to_json()))
            db.execute("INSERT INTO stats VALUES ('bench_op', 1) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + 1")
            db.execute("COMMIT")

        row = _timed_loop(op, seconds)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = db.execute("SELECT count(*) FROM journal").fetchone()[0]
    finally:
        db.close()
    size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    return row, size / max(rows, 1)


def bench_record(path: str, seconds: float, *, flush: str, threads: int = 1) -> Row:
    with SovereignJournal(path, flush=flush, retention="off") as journal:
        def op(i: int) -> None:
            journal.record(_entry(i), increment="bench_op")

        if threads == 1:
            return _timed_loop(op, seconds)
        return _threaded(op, threads, seconds)


def bench_asyncio(path: str, seconds: float, tasks: int) -> Row:
    async def main() -> Row:
        async with AsyncSovereignJournal(path, flush="sync", retention="off") as journal:
            lat: list[float] = []
            counts = [0] * tasks
            end = time.perf_counter() + seconds

            async def worker(n: int) -> None:
                clock = time.perf_counter
                i = 0
                while True:
                    t0 = clock()
                    await journal.record(_entry(i), increment="bench_op")
                    t1 = clock()
                    lat.append((t1 - t0) * 1e6)
                    i += 1
                    if t1 >= end:
                        break
                counts[n] = i

            start = time.perf_counter()
            await asyncio.gather(*(worker(n) for n in range(tasks)))
            return Row("", sum(counts), time.perf_counter() - start, lat)

    return asyncio.run(main())


def bench_js_ops(path: str, seconds: float, flush: str) -> Row:
    """A Deno script calling op_increment_stats in one loop: the full op round trip, journaled."""
    from .kernel import Kernel

    reported: list[Any] = []
    kernel = Kernel(path, flush=flush)
    kernel.op("bench_report")(reported.append)
    with kernel:
        kernel.run_script(f"""
            const lat = [];
            const end = performance.now() + {seconds * 1000};
            const start = performance.now();
            let t1 = start;
            while (t1 < end) {{
              const t0 = performance.now();
              Krepis.ops.op_increment_stats();
              t1 = performance.now();
              lat.push((t1 - t0) * 1000);
            }}
            Krepis.ops.bench_report({{ ops: lat.length, seconds: (t1 - start) / 1000, lat }});
        """, timeout=seconds + 120)
    result = reported[0]
    return Row("", int(result["ops"]), float(result["seconds"]), [float(x) for x in result["lat"]])


def fill(path: str, entries: int, progress: Callable[[int], None] | None = None) -> None:
    """Write `entries` realistic entries quickly: big transactions, synced once at the end."""
    with SovereignJournal(path, flush="interval:1000ms", retention="off") as journal:
        storage = journal._storage
        base = now_ms() - entries
        ops = ("kernel_init", "op_increment_stats", "op_log_from_js", "kernel_shutdown")
        batch = 10_000
        for start in range(0, entries, batch):
            rows = []
            for i in range(start, min(entries, start + batch)):
                rid = f"{i:08x}-4c1e-4b6f-9a2e-5d3c7b8a{i % 9999:04d}"
                log = TransactionLog(base + i, ops[i % 4], rid, LogStatus.Completed)
                rows.append((log, encode_log(log)))
            storage.write_batch([WriteRequest(rows, [b"bench_op"] * len(rows))])
            if progress:
                progress(len(rows))


# --- the read section: indexed queries against sqlite3 with the equivalent indexes -------------

RARE_OP = "rare_op"
_OPS = tuple(f"op_{name}" for name in (
    "charge", "refund", "login", "logout", "search", "upload", "download", "render", "notify",
    "sync", "auth", "invoice", "quote", "ship", "track", "review", "report", "export", "import",
    "audit"))
_SQLITE_SCHEMA = """
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
    """The same realistic entries into a krepis store and an sqlite3 database, 64 per commit
    (bigger bulk transactions would leave LMDB's file with more free pages than a journal
    written by ordinary commits has)."""
    db = sqlite3.connect(sqlite_path, isolation_level=None)
    db.executescript(_SQLITE_SCHEMA)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # filling only; the krepis side does not sync either
    with SovereignJournal(krepis_path, flush="interval:1000ms", retention="off") as journal:
        storage = journal._storage
        batch: list[TransactionLog] = []
        written = [storage.next_seq()]  # the same sequence numbers on both sides

        def flush() -> None:
            storage.write_batch([WriteRequest([(log, encode_log(log)) for log in batch], ())])
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


NO_TREE = "[Merkle hashing off, for its cost] "


@contextmanager
def _no_tree_hashing() -> Iterator[None]:
    """Leaves unhashed and no subtree hashes (the frontier keeps its shape): only to measure what
    the tree costs a write. The store it writes is useless and is thrown away."""
    from .storage.lmdb import _store as adapter

    class _Zero:
        def digest(self) -> bytes:
            return bytes(32)

    def no_hash(_data: bytes = b"") -> _Zero:
        return _Zero()

    def no_nodes(frontier: list[bytes], size: int, leaf: bytes, on_node: Any = None) -> int:
        n = size
        while n & 1:
            frontier.pop()
            n >>= 1
        frontier.append(leaf)
        return size + 1

    names = ("sha256", "append_leaf")
    saved = [getattr(adapter, name) for name in names]
    for name, stub in zip(names, (no_hash, no_nodes), strict=True):
        setattr(adapter, name, stub)
    try:
        yield
    finally:
        for name, original in zip(names, saved, strict=True):
            setattr(adapter, name, original)


def _without_tree(fn: Callable[[], Row]) -> Row:
    with _no_tree_hashing():
        return fn()


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


@contextmanager
def _postgres_schema(url: str) -> Iterator[str]:
    """A URL whose tables live in a new, temporary schema of the database; dropped afterwards."""
    import psycopg

    from .storage.postgres import _url as _pgurl

    params: dict[str, Any] = dict(_pgurl.parse(url).params)  # libpq never sees the URL
    schema = f"krepis_bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _pgurl.build({**params, "options": f"-csearch_path={schema}"})
    finally:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _postgres_plan(cfg: BenchConfig) -> list[tuple[str, Callable[[], Row]]]:
    assert cfg.postgres_url
    url = cfg.postgres_url

    def run(kind: str) -> Row:
        with _postgres_schema(url) as scoped:
            if kind == "1":
                return bench_record(scoped, cfg.seconds, flush="sync")
            if kind == "threads":
                return bench_record(scoped, cfg.seconds, flush="sync", threads=cfg.threads)
            return bench_asyncio(scoped, cfg.seconds, cfg.tasks)

    return [
        ("PostgreSQL record(), sync, 1 thread", lambda: run("1")),
        (f"PostgreSQL record(), sync, {cfg.threads} threads", lambda: run("threads")),
        (f"PostgreSQL asyncio record(), sync, {cfg.tasks} tasks", lambda: run("asyncio")),
    ]


# --- the whole run --------------------------------------------------------------------------

@contextmanager
def _workdir(directory: str | None) -> Iterator[str]:
    base = tempfile.mkdtemp(prefix=".krepis-bench-", dir=directory or os.getcwd())
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "lmdb": ".".join(map(str, lmdb.version())),
        "sqlite": sqlite3.sqlite_version,
        "krepis": __version__,
    }


def run_bench(cfg: BenchConfig, step: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run every row; `step(label, advance)` reports progress. Returns a JSON-ready dict."""
    def note(label: str, advance: int = 1) -> None:
        if step:
            step(label, advance)

    s = cfg.seconds
    rows: list[Row] = []
    with _workdir(cfg.directory) as work:
        def path(name: str) -> str:
            return os.path.join(work, name)

        plan: list[tuple[str, Callable[[], Row]]] = [
            ("physical limit: overwrite ~100 B in place + fdatasync",
             lambda: bench_physical(path("physical.dat"), s)),
            ("append ~100 B + fdatasync (file grows: fs journal too)",
             lambda: bench_fsync(path("fsync.log"), s)),
            ("spec design: log write+flush, then counter write+flush",
             lambda: bench_spec_design(path("spec"), s)),
        ]
        sqlite_bytes = [0.0]

        def sqlite_row() -> Row:
            row, sqlite_bytes[0] = bench_sqlite(path("bench.sqlite"), s)
            return row

        plan += [
            ("sqlite3 WAL synchronous=FULL, 1 txn per op", sqlite_row),
            ("krepis record(), sync, 1 thread", lambda: bench_record(path("k1"), s, flush="sync")),
            (f"krepis record(), sync, {cfg.threads} threads",
             lambda: bench_record(path("k16"), s, flush="sync", threads=cfg.threads)),
            (f"krepis asyncio record(), sync, {cfg.tasks} tasks",
             lambda: bench_asyncio(path("kasync"), s, cfg.tasks)),
            (f"krepis record(), interval:{cfg.interval_ms}ms, 1 thread",
             lambda: bench_record(path("kint"), s, flush=f"interval:{cfg.interval_ms}ms")),
            (f"JS op_increment_stats() loop in Deno, interval:{cfg.interval_ms}ms",
             lambda: bench_js_ops(path("kjs"), s, f"interval:{cfg.interval_ms}ms")),
            (f"{NO_TREE}krepis record(), interval:{cfg.interval_ms}ms, 1 thread",
             lambda: _without_tree(lambda: bench_record(path("kint-nt"), s,
                                                        flush=f"interval:{cfg.interval_ms}ms"))),
            (f"{NO_TREE}krepis asyncio record(), sync, {cfg.tasks} tasks",
             lambda: _without_tree(lambda: bench_asyncio(path("kasync-nt"), s, cfg.tasks))),
        ]
        if cfg.postgres_url:
            plan += _postgres_plan(cfg)
        for label, fn in plan:
            note(label, 0)
            row = fn()
            row.name = label
            rows.append(row)
            note(label)

        # reads
        note(f"filling a journal of {cfg.large:,} entries", 0)
        large, small = path("large"), path("small")
        fill(large, cfg.large)
        fill(small, cfg.small)
        note(f"filling a journal of {cfg.large:,} entries")
        note("reads", 0)
        with SovereignJournal(large, retention="off") as journal:
            recover_us = _per_call_us(lambda: journal.recover_op_count("bench_op"), 2000)
            recent_us = _per_call_us(lambda: journal.get_recent_logs(100), 200)
            count_us = _per_call_us(journal.journal_count, 2000)
            entries = journal.journal_count()
        open_large = _open_and_recover_us(large)
        open_small = _open_and_recover_us(small)
        apparent, allocated = _disk_bytes(large)
        note("reads")
        query_small = min(cfg.query_small, cfg.large)
        queries = bench_queries(work, cfg.large, query_small, note)

    base = rows[0].ops_per_s
    table = [r.summary(base) for r in rows]
    by_name = {r.name: r.ops_per_s for r in rows}
    names = [r.name for r in rows]
    physical, _append, spec, sqlite_, sync1, sync16, asyncio_, interval, js, interval_nt, asyncio_nt = (
        by_name[n] for n in names[:11])
    fsync = physical
    reads = {
        "recover_op_count_us": round(recover_us, 2),
        "get_recent_logs_100_us": round(recent_us, 1),
        "journal_count_us": round(count_us, 2),
        "open_recover_large_us": round(open_large, 1),
        "open_recover_small_us": round(open_small, 1),
        "large_entries": entries,
        "small_entries": cfg.small,
        "bytes_per_entry": round(apparent / entries, 1),
        "allocated_bytes_per_entry": round(allocated / entries, 1),
        "sqlite_bytes_per_entry": round(sqlite_bytes[0], 1),
    }

    def target(text: str, value: float, goal: float, unit: str = "×", lower: bool = False) -> dict[str, Any]:
        met = value <= goal if lower else value >= goal
        return {"target": text, "measured": round(value, 2), "goal": goal, "unit": unit, "met": met,
                "lower": lower}

    targets = [
        target("sync 1 thread / physical limit", sync1 / fsync, 0.8),
        target("sync 1 thread / sqlite3 WAL FULL", sync1 / sqlite_, 1.2),
        target("sync 1 thread / spec design", sync1 / spec, 1.5),
        target(f"sync {cfg.threads} threads / sync 1 thread", sync16 / sync1, 4),
        target(f"sync {cfg.threads} threads / sqlite3", sync16 / sqlite_, 2),
        target(f"asyncio {cfg.tasks} tasks / physical limit", asyncio_ / fsync, 12),
        target(f"interval:{cfg.interval_ms}ms 1 thread / physical limit", interval / fsync, 12),
        target("JS op_increment_stats() calls/s", js, 10_000, "/s"),
        target("recover_op_count", recover_us, 10, "µs", lower=True),
        target("get_recent_logs(100)", recent_us, 200, "µs", lower=True),
        target(f"open+recover {cfg.large:,} / {cfg.small:,} entries", open_large / open_small, 2,
               lower=True),
    ]
    targets.append(target(f"Merkle tree cost: interval:{cfg.interval_ms}ms 1 thread with / without",
                          interval / interval_nt, 0.9))
    targets.append(target(f"Merkle tree cost: asyncio {cfg.tasks} tasks with / without",
                          asyncio_ / asyncio_nt, 0.9))
    targets.append(target("Merkle tree bytes per entry (tile hashes and frontier)",
                          queries[str(cfg.large)]["bytes_per_entry"]["tree"], 40, "B", lower=True))
    big, little = queries[str(cfg.large)], queries[str(query_small)]
    for name in QUERY_NAMES:
        targets.append(target(f"{name}: krepis / sqlite3 time, {cfg.large:,} entries",
                              big[name]["ratio"], 2, lower=True))
    for name in QUERY_NAMES:
        targets.append(target(f"{name}: time at {cfg.large:,} / at {query_small:,} entries",
                              big[name]["krepis_us"] / little[name]["krepis_us"], 2, lower=True))
    size = big["bytes_per_entry"]
    targets.append(target("bytes per entry, indexes included: krepis / sqlite3",
                          size["krepis"] / size["sqlite"], 1, lower=True))
    targets.append(target("RSS after a request-id lookup / after opening", queries["rss"]["ratio"], 2,
                          lower=True))
    targets.append(target("krepis logs --request-id, minus process start",
                          queries["cli"]["logs_request_id_ms"] - queries["cli"]["process_start_ms"], 10,
                          "ms", lower=True))
    archived = queries["archive"]
    targets.append(target("archive: bytes per archived entry (segments, index, dictionary)",
                          archived["bytes_per_entry"], 20, "B", lower=True))
    targets.append(target("archive: entries archived per second", archived["entries_per_s"], 200_000, "/s"))
    config = asdict(cfg)
    if config.get("postgres_url"):  # never print a password
        from .storage.postgres._store import redact

        config["postgres_url"] = redact(config["postgres_url"])
    return {"machine": machine(), "config": config, "rows": table, "reads": reads,
            "queries": queries, "targets": targets}


QUERY_NAMES = ("request-id lookup", "rare op, all matches", "status=Failed, limit 20",
               "op + 1-second window", "get_recent_logs(100)")
