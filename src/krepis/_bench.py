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

from . import __version__
from ._async import AsyncSovereignJournal
from ._journal import SovereignJournal
from ._model import LogStatus, TransactionLog, encode_log, now_ms
from ._storage import WriteRequest

__all__ = ["BenchConfig", "Row", "run_bench"]

LINE = b"x" * 99 + b"\n"


@dataclass
class BenchConfig:
    seconds: float = 3.0  # per write row
    large: int = 1_000_000  # entries of the large journal for the read rows
    small: int = 2_000
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

def bench_fsync(path: str, seconds: float) -> Row:
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
    with SovereignJournal(path, flush="sync") as journal:
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
    with SovereignJournal(path, flush=flush) as journal:
        def op(i: int) -> None:
            journal.record(_entry(i), increment="bench_op")

        if threads == 1:
            return _timed_loop(op, seconds)
        return _threaded(op, threads, seconds)


def bench_asyncio(path: str, seconds: float, tasks: int) -> Row:
    async def main() -> Row:
        async with AsyncSovereignJournal(path, flush="sync") as journal:
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
    from ._kernel import Kernel

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
    with SovereignJournal(path, flush="interval:1000ms") as journal:
        storage = journal._storage
        base = now_ms() - entries
        ops = ("kernel_init", "op_increment_stats", "op_log_from_js", "kernel_shutdown")
        batch = 10_000
        for start in range(0, entries, batch):
            rows = []
            for i in range(start, min(entries, start + batch)):
                rid = f"{i:08x}-4c1e-4b6f-9a2e-5d3c7b8a{i % 9999:04d}"
                log = TransactionLog(base + i, ops[i % 4], rid, LogStatus.Completed)
                rows.append((log.timestamp, rid.encode(), encode_log(log)))
            storage.write_batch([WriteRequest(rows, [b"bench_op"] * len(rows))])
            if progress:
                progress(len(rows))


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
        with SovereignJournal(path) as journal:
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

    schema = f"krepis_bench_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
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
            ("fsync limit: append ~100 B + fdatasync", lambda: bench_fsync(path("fsync.log"), s)),
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
        with SovereignJournal(large) as journal:
            recover_us = _per_call_us(lambda: journal.recover_op_count("bench_op"), 2000)
            recent_us = _per_call_us(lambda: journal.get_recent_logs(100), 200)
            count_us = _per_call_us(journal.journal_count, 2000)
            entries = journal.journal_count()
        open_large = _open_and_recover_us(large)
        open_small = _open_and_recover_us(small)
        apparent, allocated = _disk_bytes(large)
        note("reads")

    base = rows[0].ops_per_s
    table = [r.summary(base) for r in rows]
    by_name = {r.name: r.ops_per_s for r in rows}
    names = [r.name for r in rows]
    fsync, spec, sqlite_, sync1, sync16, asyncio_, interval, js = (by_name[n] for n in names[:8])
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
        return {"target": text, "measured": round(value, 2), "goal": goal, "unit": unit, "met": met}

    targets = [
        target("sync 1 thread / fsync limit", sync1 / fsync, 0.5),
        target("sync 1 thread / spec design", sync1 / spec, 1.5),
        target(f"sync {cfg.threads} threads / sync 1 thread", sync16 / sync1, 4),
        target(f"sync {cfg.threads} threads / sqlite3", sync16 / sqlite_, 2),
        target(f"asyncio {cfg.tasks} tasks / fsync limit", asyncio_ / fsync, 12),
        target(f"interval:{cfg.interval_ms}ms 1 thread / fsync limit", interval / fsync, 12),
        target("JS op_increment_stats() calls/s", js, 10_000, "/s"),
        target("recover_op_count", recover_us, 10, "µs", lower=True),
        target("get_recent_logs(100)", recent_us, 200, "µs", lower=True),
        target(f"open+recover {cfg.large:,} / {cfg.small:,} entries", open_large / open_small, 2,
               lower=True),
    ]
    return {"machine": machine(), "config": asdict(cfg), "rows": table, "reads": reads,
            "targets": targets}
