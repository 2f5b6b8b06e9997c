"""The issue's targets, each judged met or missed from a run's figures."""
from __future__ import annotations

from typing import Any

#: What one line of the report says about the figures: read it before a "missed".
RATIOS_NOTE = ("Every write row ran in interleaved rounds on the same disk: on a shared machine the "
               "ratios between rows are what counts, not the absolute numbers. A missed target is a "
               "measurement, not an error.")

#: (key, what, row, against, goal, unit): a row's median ops/s ≥ goal × another row's median.
_RATIOS = (
    ("sync_1_vs_sqlite_full", "sync, 1 thread ≥ 1.5× sqlite3 FULL", "sync_1", "sqlite_full", 1.5),
    ("sync_1_vs_ceiling", "sync, 1 thread ≥ 0.6× the disk ceiling", "sync_1", "ceiling", 0.6),
    ("interval_1_vs_sqlite_normal", "interval, 1 thread ≥ 2× sqlite3 NORMAL", "interval_1",
     "sqlite_normal", 2),
    ("sync_threads_vs_sqlite_full", "sync, {threads} threads ≥ 4× sqlite3 FULL", "sync_threads",
     "sqlite_full", 4),
    ("asyncio_vs_sqlite_full", "asyncio, {tasks} tasks ≥ 4× sqlite3 FULL", "asyncio", "sqlite_full", 4),
)
#: (key, what, row, goal): a row's median CPU µs per op ≤ goal.
_CPU = (
    ("sync_1_cpu", "sync, 1 thread ≤ 60 µs CPU/op", "sync_1", 60),
    ("interval_1_cpu", "interval, 1 thread ≤ 40 µs CPU/op", "interval_1", 40),
    ("sync_threads_cpu", "sync, {threads} threads ≤ 30 µs CPU/op", "sync_threads", 30),
)
#: (key, what, row, goal): a row's median rate ≥ goal.
_RATES = (
    ("js_interval_rate", "JS op calls under interval ≥ 21,000/s", "js_interval", 21_000),
    ("js_sync_rate", "JS op calls under sync ≥ 5,000/s", "js_sync", 5_000),
)
BULK_GOAL = 200_000  # entries/s of each bulk row


def _target(key: str, what: str, measured: float, goal: float, unit: str, figure: str,
            lower: bool = False) -> dict[str, Any]:
    met = measured <= goal if lower else measured >= goal
    return {"key": key, "target": what, "measured": round(measured, 3), "goal": goal, "unit": unit,
            "lower": lower, "met": met, "status": "met" if met else "missed", "figure": figure}


#: the web console's targets: a page's server time (ms), the live viewers' lag (ms), the writer's drop (%)
WEB_PAGE_MS, WEB_LAG_MS, WEB_DROP_PCT = 50, 1000, 10


def evaluate(rows: list[dict[str, Any]], bulk: list[dict[str, Any]], size: list[dict[str, Any]],
             threads: int, tasks: int, web: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every target of the issue that the run's figures can judge, in the order of the issue."""
    by = {r["key"]: r for r in rows}
    out: list[dict[str, Any]] = []
    for key, what, row, against, goal in _RATIOS:
        a, b = by[row]["ops_per_s"], by[against]["ops_per_s"]
        ratio = a / b if b else 0.0
        out.append(_target(key, what.format(threads=threads, tasks=tasks), ratio, goal, "×",
                           f"{ratio:.2f}× ({a:,.0f} against {b:,.0f} ops/s)"))
    for key, what, row, goal in _CPU:
        cpu = by[row]["cpu_us_per_op"]
        out.append(_target(key, what.format(threads=threads, tasks=tasks), cpu, goal, "µs/op",
                           f"{cpu:,.1f} µs CPU/op", lower=True))
    for key, what, row, goal in _RATES:
        rate = by[row]["ops_per_s"]
        out.append(_target(key, what, rate, goal, "/s", f"{rate:,.0f} calls/s"))
    for b in bulk:
        out.append(_target(f"{b['key']}_rate", f"{b['name']} ≥ 200,000 entries/s", b["entries_per_s"],
                           BULK_GOAL, "/s", f"{b['entries_per_s']:,.0f} entries/s "
                           f"({b['entries']:,} in {b['seconds']:.2f} s)"))
    for s in size:
        out.append(_target(f"bytes_per_entry_{s['entries']}",
                           f"bytes per entry at {s['entries']:,} entries ≤ sqlite3's", s["ratio"], 1, "×",
                           f"{s['krepis_bytes_per_entry']:,.1f} B against "
                           f"{s['sqlite_bytes_per_entry']:,.1f} B ({s['ratio']:.2f}×)", lower=True))
    if web is not None:
        out += web_targets(web)
    return out


def web_targets(web: dict[str, Any]) -> list[dict[str, Any]]:
    """The web console's targets: each page's median server time, the live viewers' p99 lag, the
    writer's rate drop with them."""
    out: list[dict[str, Any]] = []
    for n, page in enumerate(web["reads"]):
        out.append(_target(f"web_page_{n}", f"web: {page['name']} ≤ {WEB_PAGE_MS} ms at "
                           f"{page['entries']:,} entries", page["server_ms_p50"], WEB_PAGE_MS, "ms",
                           f"{page['server_ms_p50']:,.2f} ms server time "
                           f"(p99 {page['server_ms_p99']:,.2f})", lower=True))
    live = web["live"]
    lag = live["lag_ms_p99"] if live["lag_ms_p99"] is not None else float("inf")
    out.append(_target("web_live_lag", f"web: {live['viewers']} live viewers' lag ≤ 1 s at "
                       f"{live['rate']:,} entries/s", lag, WEB_LAG_MS, "ms",
                       f"p99 {lag:,.0f} ms (p50 {live['lag_ms_p50']} ms, max {live['lag_ms_max']} ms)",
                       lower=True))
    out.append(_target("web_live_writer", f"web: the writer's rate drop with {live['viewers']} viewers "
                       f"≤ {WEB_DROP_PCT} %", live["writer_drop_pct"], WEB_DROP_PCT, "%",
                       f"{live['writer_drop_pct']:.1f} % ({live['writer_alone_per_s']:,.0f} alone, "
                       f"{live['writer_with_viewers_per_s']:,.0f}/s with them)", lower=True))
    return out
