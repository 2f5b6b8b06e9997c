"""One run: every write row in interleaved rounds, then the query, bulk and size rows; the
figures as one JSON-ready dict."""
from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import lmdb

from .._version import __version__
from ._bulk import bench_archive, bench_export, bench_migrate, bench_verify
from ._queries import query_rows
from ._rows import BenchConfig, Round, WriteRow, write_rows
from ._size import bench_sizes
from ._targets import RATIOS_NOTE, evaluate
from ._web import bench_web_live, bench_web_reads, web_available

#: progress(label of the step starting, steps done, steps in all)
Progress = Callable[[str, int, int], None]


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
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "lmdb": ".".join(map(str, lmdb.version())),
        "sqlite": sqlite3.sqlite_version,
        "krepis": __version__,
    }


def interleaved(rows: list[WriteRow], rounds: int) -> list[tuple[int, WriteRow]]:
    """The order the write rows run in: round 1 of every row, then round 2 of every row, …;
    each round starts one row further down the list (so no row always follows the same one)."""
    order: list[tuple[int, WriteRow]] = []
    for r in range(rounds):
        shift = r % len(rows)
        order += [(r, row) for row in rows[shift:] + rows[:shift]]
    return order


def summarise(row: WriteRow, rounds: list[tuple[int, Round]]) -> dict[str, Any]:
    """A write row's figures: every round (as measured), the median of each figure over the
    rounds, and the spread (min–max) of ops/s."""
    ordered = sorted(rounds, key=lambda item: item[1].ops_per_s)
    rates = [r.ops_per_s for _, r in ordered]
    median = statistics.median
    return {
        "key": row.key, "name": row.name, "unit": row.unit,
        "ops": sum(r.ops for _, r in rounds),
        "ops_per_s": round(median(rates), 1),
        "ops_per_s_min": round(rates[0], 1), "ops_per_s_max": round(rates[-1], 1),
        "cpu_us_per_op": round(median(r.cpu_us_per_op for _, r in rounds), 2),
        "p50_us": round(median(r.percentile(0.50) for _, r in rounds), 1),
        "p99_us": round(median(r.percentile(0.99) for _, r in rounds), 1),
        "rounds": [{"round": n + 1, "order": order, "ops": r.ops, "seconds": round(r.seconds, 4),
                    "ops_per_s": round(r.ops_per_s, 1), "cpu_seconds": round(r.cpu_seconds, 4),
                    "cpu_us_per_op": round(r.cpu_us_per_op, 2),
                    "child_cpu_us_per_op": round(r.child_cpu_seconds / r.ops * 1e6, 2) if r.ops else 0.0,
                    "p50_us": round(r.percentile(0.50), 1), "p99_us": round(r.percentile(0.99), 1)}
                   for n, (order, r) in enumerate(rounds)],
    }


def _with_ratios(rows: list[dict[str, Any]]) -> None:
    by = {r["key"]: r["ops_per_s"] for r in rows}
    for row in rows:
        for key in ("ceiling", "sqlite_full", "sqlite_normal"):
            base = by.get(key)
            row[f"ratio_{key}"] = round(row["ops_per_s"] / base, 3) if base else None


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run every row and return the figures (JSON-ready). Temporary stores go in a new
    directory under ``cfg.directory`` (default: the current directory), removed afterwards.
    ``progress(label, done, total)`` is called before each step and once at the end."""
    rows = write_rows(cfg)
    plan = interleaved(rows, cfg.rounds)
    small, large = min(cfg.query_small, cfg.large), cfg.large
    web_rows = web_available()
    total = len(plan) + 2 + 4 + 1 + (2 if web_rows else 0)
    done = [0]

    def step(label: str) -> None:
        if progress:
            progress(label, done[0], total)
        done[0] += 1

    measured: dict[str, list[tuple[int, Round]]] = {row.key: [] for row in rows}
    with _workdir(cfg.directory) as work:
        for order, (r, row) in enumerate(plan):
            step(f"round {r + 1}/{cfg.rounds}: {row.name}")
            directory = os.path.join(work, f"{row.key}-{r}")
            os.mkdir(directory)
            try:
                result = row.run(directory, cfg.seconds)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            measured[row.key].append((order, result))
        # the query rows; the large journal stays for the bulk rows
        queries: dict[str, Any] = {"sizes": [small, large]}
        big = os.path.join(work, "large")
        for n, path in ((small, os.path.join(work, "small")), (large, big)):
            step(f"queries: krepis and sqlite3 with {n:,} realistic entries")
            queries[str(n)] = query_rows(path, os.path.join(work, "queries.sqlite"), n)
            if path != big:
                shutil.rmtree(path)
        web: dict[str, Any] | None = None
        if web_rows:  # krepis serve (the web extra) on the large journal, then live viewers
            step(f"web console: page server times on {large:,} entries")
            web = {"reads": bench_web_reads(big, large)}
            step("web console: 50 live viewers while entries are written at 5,000/s")
            live_dir = os.path.join(work, "web")
            os.mkdir(live_dir)
            web["live"] = bench_web_live(live_dir, seconds=cfg.seconds, rounds=cfg.rounds)
            shutil.rmtree(live_dir)
        step(f"verify() of {large:,} entries")
        bulk = [{"key": "verify", **bench_verify(big)}]
        step(f"krepis export of {large:,} entries")
        bulk.append({"key": "export", **bench_export(big, os.path.join(work, "export.jsonl"), large)})
        step(f"archive of {large:,} entries")
        bulk.append({"key": "archive", **bench_archive(big, os.path.join(work, "archive"))})
        shutil.rmtree(big)
        step(f"migrate of a format-1 store of {large:,} entries")
        bulk.append({"key": "migrate", **bench_migrate(os.path.join(work, "format1"), large)})
        step("bytes on disk per entry")
        size = bench_sizes(work, cfg.sizes, lambda _label: None)
    if progress:
        progress("done", done[0], total)

    table = [summarise(row, measured[row.key]) for row in rows]
    _with_ratios(table)
    config = asdict(cfg)
    if config.get("postgres_url"):  # never print a password
        from ..storage.postgres._schema import redact

        config["postgres_url"] = redact(config["postgres_url"])
    return {"machine": machine(), "config": config, "note": RATIOS_NOTE, "rows": table,
            "queries": queries, "bulk": bulk, "size": size, "web": web,
            "targets": evaluate(table, bulk, size, cfg.threads, cfg.tasks, web)}
