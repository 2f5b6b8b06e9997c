"""The write rows: the disk's limits, sqlite3, and krepis under each policy and concurrency."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .._model import LogStatus, TransactionLog, now_ms
from ..journal import AsyncSovereignJournal, SovereignJournal

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
    from ..kernel import Kernel

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

NO_TREE = "[Merkle hashing off, for its cost] "

@contextmanager
def _no_tree_hashing() -> Iterator[None]:
    """Leaves unhashed and no subtree hashes (the frontier keeps its shape): only to measure what
    the tree costs a write. The store it writes is useless and is thrown away."""
    from ..storage.lmdb import _apply, _tail, _views

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

    places: list[tuple[Any, str, Any]] = [(_tail, "sha256", no_hash), (_apply, "append_leaf", no_nodes),
                                          (_views, "append_leaf", no_nodes)]
    saved = [getattr(module, name) for module, name, _stub in places]
    for module, name, stub in places:
        setattr(module, name, stub)
    try:
        yield
    finally:
        for (module, name, _stub), original in zip(places, saved, strict=True):
            setattr(module, name, original)

def _without_tree(fn: Callable[[], Row]) -> Row:
    with _no_tree_hashing():
        return fn()

@contextmanager
def _postgres_schema(url: str) -> Iterator[str]:
    """A URL whose tables live in a new, temporary schema of the database; dropped afterwards."""
    import psycopg

    from ..storage.postgres import _url as _pgurl

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
