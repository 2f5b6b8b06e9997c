"""Running every row in one process, one after another, and the report."""
from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import lmdb

from .._version import __version__
from ..journal import SovereignJournal
from ._data import (
    fill,
)
from ._queries import (
    QUERY_NAMES,
    _disk_bytes,
    _open_and_recover_us,
    _per_call_us,
    bench_queries,
)
from ._rows import (
    NO_TREE,
    BenchConfig,
    Row,
    _postgres_plan,
    _without_tree,
    bench_asyncio,
    bench_fsync,
    bench_js_ops,
    bench_physical,
    bench_record,
    bench_spec_design,
    bench_sqlite,
)


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
        from ..storage.postgres._schema import redact

        config["postgres_url"] = redact(config["postgres_url"])
    return {"machine": machine(), "config": config, "rows": table, "reads": reads,
            "queries": queries, "targets": targets}
