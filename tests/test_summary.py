"""Summaries: `krepis stats --by op[,status]` and `journal.summary()` — counts, failure rate and
exact (nearest-rank) duration percentiles over the whole history — and the same numbers in the
Prometheus metrics."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from krepis import LogStatus, SovereignJournal, TransactionLog, ValidationError, prometheus_text
from krepis._metrics import BUCKETS_US, MetricsCollector
from krepis.cli import cli
from krepis.journal._summary import percentile
from test_archive import fill_fast, realistic

KREPIS = str(Path(sys.executable).parent / "krepis")


def nearest_rank(values: list[int], p: int) -> int | None:
    """The textbook definition, written independently: the smallest value with at least p% of
    the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def reference(entries: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple[str, ...], dict[str, Any]]:
    """Per group, what a summary must say, computed from exported JSON objects."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        groups[tuple(e["op_name"] if k == "op" else e["status"] for k in keys)].append(e)
    out = {}
    for key, members in groups.items():
        durations = [e["duration_us"] for e in members if "duration_us" in e]
        failed = sum(e["status"] == "Failed" for e in members)
        finished = failed + sum(e["status"] == "Completed" for e in members)
        out[key] = {"entries": len(members), "failed": failed,
                    "failure_rate": None if not finished else failed / finished,
                    "durations": len(durations), "p50_us": nearest_rank(durations, 50),
                    "p95_us": nearest_rank(durations, 95), "p99_us": nearest_rank(durations, 99),
                    "max_us": max(durations) if durations else None}
    return out


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert [percentile([15, 20, 35, 40, 50], p) for p in (5, 30, 40, 50, 100)] == [15, 20, 20, 35, 50]
    ten = list(range(1, 11))
    assert (percentile(ten, 50), percentile(ten, 95), percentile(ten, 99)) == (5, 10, 10)
    assert percentile([7], 99) == 7
    hundred = list(range(1, 101))
    assert (percentile(hundred, 50), percentile(hundred, 95), percentile(hundred, 99)) == (50, 95, 99)
    for n in range(1, 60):
        values = [(i * 7919) % 1000 for i in range(n)]
        for p in (1, 50, 95, 99, 100):
            assert percentile(sorted(values), p) == nearest_rank(values, p), (n, p)


@pytest.fixture(params=["lmdb", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "store")


def test_summary_over_the_whole_history_matches_a_reference(location: str, tmp_path: Path) -> None:
    logs = realistic(3000, seed=5)
    with SovereignJournal(location, flush="interval:20ms") as journal:
        fill_fast(journal, logs)
        before = journal.summary(("op", "status"))
        journal.archive(tmp_path / "cold", keep_last=700)
        entries = [json.loads(x.to_json()) for x in journal.query(order="append", newest_first=False)]
        for keys in (("op",), ("op", "status"), ("status",), ("status", "op"), ()):
            summary = journal.summary(keys)
            want = reference(entries, keys)
            got = {tuple(r.op_name if k == "op" else r.status.value for k in keys): r  # type: ignore[union-attr]
                   for r in summary.rows}
            assert set(got) == set(want), keys
            for key, row in got.items():
                for field, value in want[key].items():
                    assert getattr(row, field) == value, (keys, key, field)
            assert summary.total.entries == 3000
            assert (summary.live_entries, summary.archived_entries) == (3000 - 2048, 2048)
        after = journal.summary(("op", "status"))
        assert (after.rows, after.total) == (before.rows, before.total)  # archiving changes nothing
        # rows are ordered by the keys: op name, then Started, Completed, Failed
        rows = journal.summary("op,status").rows
        order = {"Started": 0, "Completed": 1, "Failed": 2}
        assert [(r.op_name, order[r.status.value]) for r in rows] == \
            sorted((r.op_name, order[r.status.value]) for r in rows)  # type: ignore[union-attr]
        # a time window (through the time index and the bundles in range), filters
        lo, hi = logs[1000].timestamp, logs[2500].timestamp
        window = [e for e in entries if lo <= e["timestamp"] < hi]
        summary = journal.summary(since=lo, until=hi)
        assert {r.op_name: r.entries for r in summary.rows} == \
            {k[0]: v["entries"] for k, v in reference(window, ("op",)).items()}
        durations = [e["duration_us"] for e in window if "duration_us" in e]
        assert summary.total.p99_us == nearest_rank(durations, 99)
        only = journal.summary(op_name=["op_03", "op_04"], status="failed", since=lo)
        assert {r.op_name for r in only.rows} <= {"op_03", "op_04"}
        assert all(r.failed == r.entries for r in only.rows)
        assert journal.summary(op_name=[]).total.entries == 0
        live = journal.summary(live_only=True)
        assert (live.total.entries, live.archived_entries) == (3000 - 2048, 0)


def test_summary_refuses_bad_arguments(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        for by, error in (("hour", ValidationError), (("op", "op"), ValidationError), (3, TypeError),
                          (["op", "x"], ValidationError)):
            with pytest.raises(error):
                journal.summary(by)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="since"):
            journal.summary(since="not a time")
        with pytest.raises(ValidationError):
            journal.summary(status="done")
        empty = journal.summary()
        assert empty.rows == () and empty.total.entries == 0 and empty.total.p50_us is None
        assert empty.total.failure_rate is None


# -- the command line --------------------------------------------------------------------------------
def _cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}
    return subprocess.run([KREPIS, *args, "--storage", str(store)], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A store of 4,000 entries with failures and durations, 3,072 of them archived, and what
    `krepis export` gives for it."""
    root = tmp_path_factory.mktemp("summary")
    store = root / "s"
    logs = realistic(4000, seed=11)
    logs.append(TransactionLog(logs[-1].timestamp, "we,ird \"op\"\n", "r", LogStatus.Failed, duration_us=5,
                               error="x"))
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, logs)
    assert _cli(store, "archive", str(root / "cold"), "--keep-last", "900").returncode == 0
    exported = _cli(store, "export").stdout.splitlines()
    return store, [json.loads(line) for line in exported]


def test_stats_by_op_percentiles_equal_those_of_export(archived: tuple[Path, list[dict[str, Any]]]) -> None:
    store, entries = archived
    assert len(entries) == 4001
    for by, keys in (("op", ("op",)), ("op,status", ("op", "status"))):
        out = json.loads(_cli(store, "stats", "--by", by, "--json").stdout)
        assert (out["live_entries"], out["archived_entries"]) == (4001 - 3072, 3072)
        want = reference(entries, keys)
        got = {tuple(row[k] for k in keys): row for row in out["rows"]}
        assert set(got) == set(want)
        for key, row in got.items():
            for field, value in want[key].items():
                assert row[field] == value, (by, key, field)
        assert out["total"]["entries"] == 4001
        durations = [e["duration_us"] for e in entries if "duration_us" in e]
        assert out["total"]["p95_us"] == nearest_rank(durations, 95)
    # a window: the same as the export of that window
    lo, hi = entries[1500]["timestamp"], entries[3500]["timestamp"]
    window = json.loads(_cli(store, "stats", "--since", str(lo), "--until", str(hi), "--json").stdout)
    assert window["by"] == ["op"] and (window["since"], window["until"]) == (lo, hi)
    part = [json.loads(line) for line in
            _cli(store, "export", "--since", str(lo), "--until", str(hi)).stdout.splitlines()]
    want = reference(part, ("op",))
    assert {row["op"]: (row["entries"], row["p50_us"], row["p99_us"]) for row in window["rows"]} == \
        {k[0]: (v["entries"], v["p50_us"], v["p99_us"]) for k, v in want.items()}


def test_stats_by_op_as_csv_tsv_and_sorted(archived: tuple[Path, list[dict[str, Any]]]) -> None:
    store, _entries = archived
    as_json = json.loads(_cli(store, "stats", "--by", "op", "--json").stdout)
    failures = [row["failed"] for row in as_json["rows"]]
    assert failures == sorted(failures, reverse=True)  # --sort failed (default): which failed most
    rows = list(csv.DictReader(io.StringIO(_cli(store, "stats", "--by", "op", "--csv").stdout)))
    assert [r["op"] for r in rows] == [r["op"].replace("\n", "\\n") for r in as_json["rows"]]
    assert "we,ird \"op\"\\n" in [r["op"] for r in rows]  # quoted, and the newline inert
    for r, j in zip(rows, as_json["rows"], strict=True):
        assert (int(r["entries"]), int(r["failed"]), int(r["p95_us"])) == \
            (j["entries"], j["failed"], j["p95_us"])
    piped = _cli(store, "stats", "--by", "op", "--sort", "p99", "-n", "3")
    lines = piped.stdout.splitlines()
    assert lines[0].split("\t")[:4] == ["op", "entries", "started", "completed"]
    p99 = [int(line.split("\t")[10]) for line in lines[1:]]
    assert len(p99) == 3 and p99 == sorted(p99, reverse=True)
    assert "4001 entries in 21 groups (929 live, 3072 archived)" in piped.stderr
    names = [line.split("\t")[0] for line in _cli(store, "stats", "--by", "op", "--sort", "name").stdout
             .splitlines()[1:]]
    assert names == sorted(names)
    failed = _cli(store, "stats", "--by", "status", "--status", "failed", "--json")
    assert [row["status"] for row in json.loads(failed.stdout)["rows"]] == ["Failed"]
    live = json.loads(_cli(store, "stats", "--by", "op", "--live-only", "--json").stdout)
    assert live["archived_entries"] == 0


@pytest.mark.parametrize("cols", [80, 50])
def test_stats_by_op_on_a_terminal_is_a_table(archived: tuple[Path, list[dict[str, Any]]], cols: int) -> None:
    from test_cli_logs import on_terminal

    store, _entries = archived
    status, shown = on_terminal("stats", "--by", "op", "--storage", str(store), cwd=store.parent, cols=cols,
                                env={"NO_COLOR": "1"})
    assert status == 0, shown
    lines = shown.splitlines()
    assert re.match(r"OP\s+ENTRIES\s+FAILED\s+FAIL%\s+P50\s+P95\s+P99\s+MAX$", lines[0]), lines[0]
    assert len(lines) == 1 + 21 + 2
    assert lines[-2].startswith("TOTAL") and " 4001 " in lines[-2]
    assert "4001 entries in 21 groups (929 live, 3072 archived)" in lines[-1]
    if cols == 50:  # the op column gives way first
        assert any(line.startswith("we,ird …") for line in lines)
    if cols == 80:
        assert any(line.startswith("we,ird") and "\\n" in line for line in lines)  # inert: no line forged
        assert all(len(line) <= cols for line in lines[:-1])
        assert re.search(r"\d+\.\d%\s+\d", lines[1]) and "ms" in lines[1]  # a rate, durations with units


def test_stats_by_refuses_bad_input(tmp_path: Path) -> None:
    SovereignJournal(tmp_path / "s").close()
    runner = CliRunner()
    for args, words in ((["--by", "hour"], "groups by op and status"), (["--by", "op,op"], "twice"),
                        (["--by", ""], "name what to group by"), (["--json", "--csv"], "do not go together"),
                        (["--since", "soon"], "since")):
        res = runner.invoke(cli, ["--storage", str(tmp_path / "s"), "stats", *args])
        assert res.exit_code == 2 and words in res.output, (args, res.output)


# -- metrics -------------------------------------------------------------------------------------------
_SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The exposition's samples by name, with their labels (the escapes undone)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) [a-z_]+ ", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, line
        labels = {}
        for name, value in re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""):
            labels[name] = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)
        out[match.group(1)].append((labels, float(match.group(3))))
    return out


def test_metrics_carry_the_whole_history_per_op(archived: tuple[Path, list[dict[str, Any]]]) -> None:
    store, entries = archived
    text = _cli(store, "metrics").stdout
    samples = parse(text)
    assert samples["krepis_journal_entries"] == [({}, 4001.0)]
    assert samples["krepis_journal_live_entries"] == [({}, 929.0)]
    assert samples["krepis_journal_archived_entries"] == [({}, 3072.0)]
    assert samples["krepis_journal_last_entry_timestamp_seconds"] == [({}, entries[-1]["timestamp"] / 1000)]
    files = sum(os.path.getsize(store / f) for f in ("data.mdb", "commit.log"))
    assert samples["krepis_store_bytes"][0][1] == files
    cold = store.parent / "cold"
    files = sum(f.stat().st_size for f in cold.iterdir() if f.is_file())
    assert samples["krepis_archive_bytes"][0][1] == files
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in entries:
        by_op[e["op_name"]].append(e)
    failures = {labels["op"]: value for labels, value in samples["krepis_op_failures_total"]}
    assert failures == {op: sum(e["status"] == "Failed" for e in es) for op, es in by_op.items()}
    statuses = {(labels["op"], labels["status"]): value
                for labels, value in samples["krepis_op_entries_total"]}
    assert sum(statuses.values()) == 4001
    assert statuses[("op_03", "Started")] == sum(e["status"] == "Started" for e in by_op["op_03"])
    buckets: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for labels, value in samples["krepis_op_duration_seconds_bucket"]:
        buckets[labels["op"]].append((labels["le"], value))
    for op, es in by_op.items():
        durations = [e["duration_us"] for e in es if "duration_us" in e]
        got = buckets[op]
        assert [le for le, _ in got] == [f"{b / 1e6:g}" for b in BUCKETS_US] + ["+Inf"]
        assert [v for _, v in got] == [sum(d <= b for d in durations) for b in BUCKETS_US] + [len(durations)]
        assert dict((labels["op"], v) for labels, v in samples["krepis_op_duration_seconds_count"])[op] == \
            len(durations)
        total = dict((labels["op"], v) for labels, v in samples["krepis_op_duration_seconds_sum"])[op]
        assert total == pytest.approx(sum(durations) / 1e6, rel=1e-12)


def test_the_collector_counts_each_entry_once_and_starts_again_after_a_clear(tmp_path: Path) -> None:
    store, cold = tmp_path / "s", tmp_path / "cold"
    collector = MetricsCollector()

    def failures(journal: SovereignJournal) -> float:
        return sum(v for _, v in parse(prometheus_text(journal, collector))["krepis_op_failures_total"])

    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(1000, seed=3))
        first = failures(journal)
        assert first == sum(x.status is LogStatus.Failed for x in journal.query())
        journal.log_transaction(TransactionLog(5, "op_01", "r", LogStatus.Failed, duration_us=1))
        journal.archive(cold, keep_last=0)  # (moved, not new: nothing counts twice)
        assert failures(journal) == first + 1
        assert failures(journal) == first + 1
        journal.clear_all()
        journal.log_transaction(TransactionLog(6, "op_02", "r", LogStatus.Failed, duration_us=1))
        assert failures(journal) == 1
        text = prometheus_text(journal, collector)
        assert "krepis_journal_last_entry_timestamp_seconds 0.006" in text


def test_metrics_of_a_moved_archive_are_an_error_naming_it(tmp_path: Path) -> None:
    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(600))
        journal.archive(cold, keep_last=0)
    cold.rename(tmp_path / "moved")
    done = _cli(store, "metrics")
    assert done.returncode == 1 and f"in its archive at {cold}, which cannot be read" in done.stderr
