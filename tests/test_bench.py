"""``krepis bench``'s own parts: the interleaved order, medians and spread, CPU per operation,
the targets' verdicts, the format-1 store it migrates, what it counts as bytes on disk, and a
whole run's progress and report. Speed itself is never asserted."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from krepis import SovereignJournal
from krepis.bench import (
    QUERY_NAMES,
    BenchConfig,
    Round,
    WriteRow,
    evaluate,
    interleaved,
    render,
    run_bench,
    summarise,
)
from krepis.bench._bulk import bench_migrate
from krepis.bench._data import realistic_entries
from krepis.bench._format1 import write_format1_store
from krepis.bench._queries import query_rows
from krepis.bench._rows import _children_cpu_seconds, bench_js_ops, bench_record
from krepis.bench._size import allocated_bytes
from krepis.storage import migrate

from format1 import read_lmdb_store


def _rows(*keys: str) -> list[WriteRow]:
    def never(_directory: str, _seconds: float) -> Round:
        raise AssertionError("not run")

    return [WriteRow(key, key.upper(), never) for key in keys]


def test_rounds_interleave_every_row() -> None:
    rows = _rows("a", "b", "c")
    order = [(r, row.key) for r, row in interleaved(rows, 4)]
    # round 1 of every row, then round 2 of every row, …; each round starts one row further on
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
                     (2, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c")]


def test_a_row_reports_the_median_of_its_rounds_and_their_spread() -> None:
    (row,) = _rows("sync_1")
    rounds = [(7, Round(ops=300, seconds=1.0, cpu_seconds=0.03, latencies_us=[1.0, 2.0, 9.0])),
              (0, Round(ops=100, seconds=1.0, cpu_seconds=0.02, latencies_us=[5.0])),
              (15, Round(ops=400, seconds=2.0, cpu_seconds=0.02, latencies_us=[3.0, 4.0]))]
    s = summarise(row, rounds)
    assert (s["ops_per_s"], s["ops_per_s_min"], s["ops_per_s_max"]) == (200, 100, 300)
    assert s["cpu_us_per_op"] == 100  # the median of 100, 200 and 50 µs per op
    assert s["ops"] == 800
    assert [(r["round"], r["order"], r["ops_per_s"]) for r in s["rounds"]] == [(1, 7, 300), (2, 0, 100),
                                                                              (3, 15, 200)]
    assert [r["cpu_us_per_op"] for r in s["rounds"]] == [100, 200, 50]


def _figures(**rates: float) -> list[dict[str, Any]]:
    base = {"ceiling": 10_000, "sqlite_full": 2_000, "sqlite_normal": 20_000, "sync_1": 3_000,
            "interval_1": 40_000, "sync_threads": 8_000, "asyncio": 8_000, "js_interval": 21_000,
            "js_sync": 4_999}
    base.update(rates)
    cpu = {"sync_1": 60, "interval_1": 40.01, "sync_threads": 30}
    return [{"key": k, "ops_per_s": v, "cpu_us_per_op": cpu.get(k, 1.0)} for k, v in base.items()]


def test_each_target_says_met_or_missed_with_its_figure() -> None:
    bulk = [{"key": "verify", "name": "verify()", "entries": 300_000, "seconds": 1.5,
             "entries_per_s": 200_000},
            {"key": "export", "name": "krepis export", "entries": 300_000, "seconds": 2,
             "entries_per_s": 150_000}]
    size = [{"entries": 100_000, "krepis_bytes_per_entry": 200.0, "sqlite_bytes_per_entry": 200.0,
             "ratio": 1.0},
            {"entries": 300_000, "krepis_bytes_per_entry": 201.0, "sqlite_bytes_per_entry": 200.0,
             "ratio": 1.005}]
    targets = evaluate(_figures(), bulk, size, threads=16, tasks=256)
    verdict = {t["key"]: t["status"] for t in targets}
    assert verdict == {
        "sync_1_vs_sqlite_full": "met",  # exactly 1.5×: a goal reached is met
        "sync_1_vs_ceiling": "missed",  # 0.3×
        "interval_1_vs_sqlite_normal": "met",
        "sync_threads_vs_sqlite_full": "met",
        "asyncio_vs_sqlite_full": "met",
        "sync_1_cpu": "met",  # ≤ 60 µs
        "interval_1_cpu": "missed",  # 40.01 > 40
        "sync_threads_cpu": "met",
        "js_interval_rate": "met",
        "js_sync_rate": "missed",
        "verify_rate": "met",
        "export_rate": "missed",
        "bytes_per_entry_100000": "met",
        "bytes_per_entry_300000": "missed",
    }
    by = {t["key"]: t for t in targets}
    assert by["sync_1_vs_ceiling"]["figure"] == "0.30× (3,000 against 10,000 ops/s)"
    assert by["sync_threads_vs_sqlite_full"]["target"] == "sync, 16 threads ≥ 4× sqlite3 FULL"
    assert by["interval_1_cpu"]["figure"] == "40.0 µs CPU/op" and by["interval_1_cpu"]["lower"] is True
    assert by["export_rate"]["figure"] == "150,000 entries/s (300,000 in 2.00 s)"
    assert by["bytes_per_entry_300000"]["figure"] == "201.0 B against 200.0 B (1.00×)"
    assert all(t["met"] == (t["status"] == "met") for t in targets)


@pytest.mark.parametrize("field", ["rounds", "large", "threads", "size_entries"])
def test_a_config_of_zero_is_refused_naming_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=f"bench {field} must be an int >= 1, got 0"):
        BenchConfig(**{field: 0})


def test_cpu_per_op_of_a_krepis_row_counts_the_whole_run(tmp_path: Path) -> None:
    r = bench_record(str(tmp_path / "s"), 0.2, flush="interval:10ms")
    assert r.ops > 0 and r.cpu_seconds > 0 and r.cpu_us_per_op == r.cpu_seconds / r.ops * 1e6
    with SovereignJournal(tmp_path / "s") as journal:  # every op was written, and counted
        assert journal.journal_count() == journal.recover_op_count("bench_op") == r.ops


def test_the_cpu_of_a_live_child_process_is_read(tmp_path: Path) -> None:
    """What the JS rows add for Deno: the CPU a live child used so far (it has not exited, so
    RUSAGE_CHILDREN would not count it yet)."""
    burn = ("import sys, time\n"
            "while time.process_time() < 0.3: pass\n"
            "print('burnt', flush=True)\n"
            "sys.stdin.read()\n")
    before = _children_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"
        assert _children_cpu_seconds() - before >= 0.25  # (clock ticks of 10 ms)
    finally:
        child.communicate("")


def test_the_js_row_counts_the_cpu_of_deno_too(tmp_path: Path) -> None:
    r = bench_js_ops(str(tmp_path / "s"), 0.3, "interval:10ms")
    assert r.ops > 0 and len(r.latencies_us) == r.ops
    assert 0 <= r.child_cpu_seconds < r.cpu_seconds  # Deno's CPU in the loop, plus this process's
    with SovereignJournal(tmp_path / "s") as journal:
        assert journal.recover_op_count("js_ops_called") == r.ops


def test_the_bench_writes_a_format1_store_that_tests_read_and_migrate_converts(tmp_path: Path) -> None:
    logs = list(realistic_entries(600))
    path = tmp_path / "old"
    assert write_format1_store(str(path), iter(logs), {"bench_op": 600}, chunk=250) == 600
    assert read_lmdb_store(path) == (logs, {"bench_op": 600})  # the tests' own reader of format 1
    result = migrate(path)
    assert (result.from_format, result.entries, result.counters) == (1, 600, 1)
    with SovereignJournal(path, create=False) as journal:
        assert [g.to_json() for g in journal.iter_logs(newest_first=False)] == [g.to_json() for g in logs]
        assert journal.recover_op_count("bench_op") == 600
    with pytest.raises(FileExistsError):  # never into an existing path
        write_format1_store(str(path), iter(logs), {})


def test_the_migrate_row_times_a_whole_migration(tmp_path: Path) -> None:
    row = bench_migrate(str(tmp_path / "old"), 700)
    assert row["entries"] == 700 and row["entries_per_s"] > 0 and row["cpu_us_per_entry"] > 0
    assert not (tmp_path / "old").exists()


def test_bytes_on_disk_count_every_file_of_the_store(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:10ms") as journal:
        for log in realistic_entries(500):
            journal.log_transaction(log)
    counted = allocated_bytes(str(store), str(tmp_path / "missing"))
    files = {f"s/{p.name}": p.stat().st_blocks * 512 for p in store.iterdir() if p.is_file()}
    assert counted == files
    assert {"s/data.mdb", "s/commit.log"} <= set(counted) and counted["s/commit.log"] > 0


def test_a_whole_run_reports_progress_to_the_end_and_renders(tmp_path: Path) -> None:
    cfg = BenchConfig(seconds=0.02, rounds=2, large=1000, query_small=300, directory=str(tmp_path))
    steps: list[tuple[str, int, int]] = []
    result = run_bench(cfg, lambda label, done, total: steps.append((label, done, total)))
    total = steps[0][2]
    assert [done for _, done, _ in steps] == list(range(total + 1)) and {t for *_, t in steps} == {total}
    assert steps[-1][0] == "done"
    assert sum(label.startswith("round ") for label, _, _ in steps) == 2 * len(result["rows"])
    assert os.listdir(tmp_path) == []  # every temporary store removed
    assert result["queries"]["sizes"] == [300, 1000]
    assert [s["entries"] for s in result["size"]] == [333, 1000]
    out = io.StringIO()
    render(result, Console(file=out, width=200))
    text = out.getvalue()
    for words in ("writes: the median of 2 interleaved rounds", "× sqlite3 FULL",
                  "bulk paths on 1,000 entries", "bytes on disk per entry", "targets met",
                  "ratios between rows are what counts"):
        assert words in text
    verdicts = re.findall(r"│ (met|missed) +│", text)  # each target says met or missed
    assert verdicts == [t["status"] for t in result["targets"]]


@pytest.mark.parametrize("entries", [1, 2, 3])
def test_the_query_rows_run_on_the_smallest_journals(tmp_path: Path, entries: int) -> None:
    out = query_rows(str(tmp_path / "k"), str(tmp_path / "q.sqlite"), entries)
    assert all(out[name]["krepis_us"] > 0 and out[name]["sqlite_us"] > 0 for name in QUERY_NAMES)
    assert out["journal_count"]["krepis_us"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # the sqlite3 side removed


def test_a_format1_store_that_fails_midway_is_removed(tmp_path: Path) -> None:
    def logs() -> Any:
        yield from realistic_entries(300)
        raise OSError("the source broke")

    with pytest.raises(OSError, match="the source broke"):
        write_format1_store(str(tmp_path / "old"), logs(), {}, chunk=100)
    assert list(tmp_path.iterdir()) == []  # nothing partial left behind
