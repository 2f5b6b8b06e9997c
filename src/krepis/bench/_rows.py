"""The write rows: the disk's one-writer ceiling, sqlite3, krepis under each policy and
concurrency, and the JavaScript plane.

Each row is a function of a fresh directory (the round's own, removed afterwards) and a duration;
it returns one :class:`Round`: the operations done, the wall time of the loop, and the CPU time of
the run — ``time.process_time()`` of this process (every thread) from the first operation until
the store is closed (so work deferred past the loop, such as LMDB catching up with the commit
log, is counted), plus the CPU of any child process doing the work (the Deno plane).
"""
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
    """What one run measures. Sizes are entries; durations seconds."""

    seconds: float = 3.0  # per round of each write row
    rounds: int = 3  # rounds of every write row, interleaved
    large: int = 1_000_000  # entries of the journal of the query and bulk rows
    query_small: int = 10_000  # the small journal of the query rows (growth to `large`)
    size_entries: int = 300_000  # the larger size row (capped at `large`); the smaller is a third
    threads: int = 16
    tasks: int = 256
    interval_ms: int = 10
    directory: str | None = None  # where the temporary stores go (default: cwd)
    postgres_url: str | None = None  # adds PostgreSQL rows, in a temporary schema

    @classmethod
    def quick(cls, directory: str | None = None) -> BenchConfig:
        return cls(seconds=0.5, rounds=2, large=100_000, directory=directory)

    def __post_init__(self) -> None:
        for name in ("rounds", "large", "query_small", "size_entries", "threads", "tasks", "interval_ms"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"bench {name} must be an int >= 1, got {value!r}")
        if not isinstance(self.seconds, (int, float)) or not self.seconds > 0:
            raise ValueError(f"bench seconds must be a number > 0, got {self.seconds!r}")

    @property
    def sizes(self) -> tuple[int, int]:
        """The two journal sizes of the bytes-per-entry rows: (a third of the larger, the larger)."""
        big = min(self.size_entries, self.large)
        return max(1, big // 3), big


@dataclass
class Round:
    """One round of one write row."""

    ops: int
    seconds: float  # wall time of the loop
    cpu_seconds: float  # CPU of the run: this process from the first op until closed, plus children
    latencies_us: list[float] = field(repr=False, default_factory=list)
    child_cpu_seconds: float = 0.0  # of that, the child process's (the Deno plane)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_seconds / self.ops * 1e6 if self.ops else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_us:
            return 0.0
        data = sorted(self.latencies_us)
        return data[min(len(data) - 1, int(q * len(data)))]


@dataclass(frozen=True)
class WriteRow:
    """A write row: ``key`` for scripts, ``name`` for people, ``run(directory, seconds)``."""

    key: str
    name: str
    run: Callable[[str, float], Round]
    unit: str = "ops/s"


def _entry(i: int) -> TransactionLog:
    return TransactionLog(now_ms(), "bench_op", f"req-{i:08d}", LogStatus.Completed)


def _timed_loop(op: Callable[[int], object], seconds: float) -> tuple[int, float, list[float]]:
    """Call op(i) back to back for `seconds`: (calls, wall seconds, each call's latency in µs)."""
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
        if t1 >= end:
            break
    return i, clock() - start, lat


def _threaded(op: Callable[[int], object], threads: int, seconds: float) -> tuple[int, float, list[float]]:
    done: list[tuple[int, float, list[float]]] = []
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        done.append(_timed_loop(op, seconds))

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return sum(d[0] for d in done), elapsed, [x for d in done for x in d[2]]


def bench_ceiling(directory: str, seconds: float) -> Round:
    """The disk's ceiling for one durable writer: ~100 B written in place in a preallocated file,
    then fdatasync. No file size change, so no file-system journal commit: only the data flush."""
    slots = 4096
    fd = os.open(os.path.join(directory, "ceiling.dat"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, slots * len(LINE))
        os.write(fd, LINE * slots)
        os.fsync(fd)

        def op(i: int) -> None:
            os.pwrite(fd, LINE, (i % slots) * len(LINE))
            os.fdatasync(fd)

        cpu = time.process_time()
        ops, wall, lat = _timed_loop(op, seconds)
        return Round(ops, wall, time.process_time() - cpu, lat)
    finally:
        os.close(fd)


#: The write rows' sqlite3 table: the entry's columns, three indexes, and the counters.
SQLITE_WRITE_SCHEMA = """
CREATE TABLE journal (seq INTEGER PRIMARY KEY, timestamp INTEGER NOT NULL, op_name TEXT NOT NULL,
                      request_id TEXT NOT NULL, status TEXT NOT NULL, duration_us INTEGER, error TEXT);
CREATE INDEX journal_request ON journal (request_id);
CREATE INDEX journal_op_status ON journal (op_name, status);
CREATE INDEX journal_time ON journal (timestamp);
CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def bench_sqlite(directory: str, seconds: float, synchronous: str) -> Round:
    """What a Python user would reach for, doing krepis' work: stdlib sqlite3 in WAL mode, one
    transaction per op holding the entry's row (three indexes) and the counter's upsert."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
    db = sqlite3.connect(os.path.join(directory, "bench.sqlite"), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(SQLITE_WRITE_SCHEMA)

        def op(i: int) -> None:
            log = _entry(i)
            db.execute("BEGIN")
            db.execute("INSERT INTO journal (timestamp, op_name, request_id, status, duration_us, error) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (log.timestamp, log.op_name, log.request_id,
                                                     log.status.value, log.duration_us, log.error))
            db.execute("INSERT INTO stats VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1",
                       (log.op_name,))
            db.execute("COMMIT")

        cpu = time.process_time()
        ops, wall, lat = _timed_loop(op, seconds)
    finally:
        db.close()
    return Round(ops, wall, time.process_time() - cpu, lat)


def bench_record(location: str, seconds: float, *, flush: str, threads: int = 1) -> Round:
    """``record(entry, increment=…)`` from `threads` threads, each call one entry and one count."""
    journal = SovereignJournal(location, flush=flush, retention="off")
    try:
        def op(i: int) -> None:
            journal.record(_entry(i), increment="bench_op")

        cpu = time.process_time()
        ops, wall, lat = _timed_loop(op, seconds) if threads == 1 else _threaded(op, threads, seconds)
    finally:
        journal.close()
    return Round(ops, wall, time.process_time() - cpu, lat)


def bench_asyncio(location: str, seconds: float, tasks: int) -> Round:
    """``AsyncSovereignJournal.record`` from `tasks` tasks, durable (``sync``)."""
    async def main() -> Round:
        journal = AsyncSovereignJournal(location, flush="sync", retention="off")
        try:
            lat: list[float] = []
            counts = [0] * tasks
            cpu = time.process_time()
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
            wall = time.perf_counter() - start
        finally:
            await journal.close()
        return Round(sum(counts), wall, time.process_time() - cpu, lat)

    return asyncio.run(main())


def _children_cpu_seconds() -> float:
    """User + system CPU of this process's live child processes (Linux ``/proc``), in seconds."""
    me, total = os.getpid(), 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        fields = stat[stat.rindex(b")") + 2:].split()  # after the command name, which may hold spaces
        if int(fields[1]) == me:  # field 4, the parent
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return total / os.sysconf("SC_CLK_TCK")


_JS_LOOP = """
Krepis.ops.bench_mark();
const lat = [];
const end = performance.now() + {ms};
const start = performance.now();
let t1 = start;
while (t1 < end) {{
  const t0 = performance.now();
  Krepis.ops.op_increment_stats();
  t1 = performance.now();
  lat.push((t1 - t0) * 1000);
}}
const seconds = (t1 - start) / 1000;
Krepis.ops.bench_mark();
Krepis.ops.bench_report({{ ops: lat.length, seconds, lat }});
"""


def bench_js_ops(location: str, seconds: float, flush: str) -> Round:
    """A Deno script calling ``op_increment_stats`` in one loop: the full op round trip, each call
    counted and journaled. CPU: this process from the loop's start until the kernel is closed,
    plus Deno's own during the loop (its start-up is not counted)."""
    from ..kernel import Kernel

    marks: list[tuple[float, float]] = []
    reported: list[Any] = []
    kernel = Kernel(location, flush=flush, retention="off")
    kernel.op("bench_mark")(lambda: marks.append((time.process_time(), _children_cpu_seconds())))
    kernel.op("bench_report")(reported.append)
    with kernel:
        kernel.run_script(_JS_LOOP.format(ms=seconds * 1000), timeout=seconds + 120)
    own = time.process_time() - marks[0][0]
    child = marks[1][1] - marks[0][1]
    result = reported[0]
    return Round(int(result["ops"]), float(result["seconds"]), own + child,
                 [float(x) for x in result["lat"]], child_cpu_seconds=child)


def write_rows(cfg: BenchConfig) -> list[WriteRow]:
    """Every write row of a run, in the order of its table (rounds take them in turn)."""
    interval = f"interval:{cfg.interval_ms}ms"

    def store(directory: str) -> str:
        return os.path.join(directory, "store")

    rows = [
        WriteRow("ceiling", "disk ceiling: pwrite ~100 B in place + fdatasync, 1 writer", bench_ceiling),
        WriteRow("sqlite_full", "sqlite3 WAL synchronous=FULL, 1 thread",
                 lambda d, s: bench_sqlite(d, s, "FULL")),
        WriteRow("sqlite_normal", "sqlite3 WAL synchronous=NORMAL, 1 thread",
                 lambda d, s: bench_sqlite(d, s, "NORMAL")),
        WriteRow("sync_1", "krepis record(), sync, 1 thread",
                 lambda d, s: bench_record(store(d), s, flush="sync")),
        WriteRow("interval_1", f"krepis record(), {interval}, 1 thread",
                 lambda d, s: bench_record(store(d), s, flush=interval)),
        WriteRow("sync_threads", f"krepis record(), sync, {cfg.threads} threads",
                 lambda d, s: bench_record(store(d), s, flush="sync", threads=cfg.threads)),
        WriteRow("asyncio", f"krepis asyncio record(), sync, {cfg.tasks} tasks",
                 lambda d, s: bench_asyncio(store(d), s, cfg.tasks)),
        WriteRow("js_interval", f"JS op_increment_stats() loop in Deno, {interval}",
                 lambda d, s: bench_js_ops(store(d), s, interval), unit="calls/s"),
        WriteRow("js_sync", "JS op_increment_stats() loop in Deno, sync",
                 lambda d, s: bench_js_ops(store(d), s, "sync"), unit="calls/s"),
    ]
    if cfg.postgres_url:
        rows += _postgres_rows(cfg, cfg.postgres_url)
    return rows


@contextmanager
def _postgres_schema(url: str) -> Iterator[str]:
    """A URL whose tables live in a new, temporary schema of the database; dropped afterwards."""
    import psycopg

    from ..storage.postgres import _url as _pgurl

    params: dict[str, Any] = dict(_pgurl.parse(url).params)  # libpq never sees the URL
    schema = f"krepis_bench_{os.getpid()}_{time.time_ns()}"
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield _pgurl.build({**params, "options": f"-csearch_path={schema}"})
    finally:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _postgres_rows(cfg: BenchConfig, url: str) -> list[WriteRow]:
    """The same record() rows on PostgreSQL; CPU is this process's (the client's), not the server's."""
    def run(kind: str) -> Callable[[str, float], Round]:
        def one(_directory: str, seconds: float) -> Round:
            with _postgres_schema(url) as scoped:
                if kind == "1":
                    return bench_record(scoped, seconds, flush="sync")
                if kind == "threads":
                    return bench_record(scoped, seconds, flush="sync", threads=cfg.threads)
                return bench_asyncio(scoped, seconds, cfg.tasks)
        return one

    return [
        WriteRow("pg_sync_1", "PostgreSQL record(), sync, 1 thread", run("1")),
        WriteRow("pg_sync_threads", f"PostgreSQL record(), sync, {cfg.threads} threads", run("threads")),
        WriteRow("pg_asyncio", f"PostgreSQL asyncio record(), sync, {cfg.tasks} tasks", run("asyncio")),
    ]
