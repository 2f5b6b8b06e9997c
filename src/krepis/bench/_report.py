"""The report for people: a run's figures as tables (``--json`` gives the same figures whole)."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ._queries import QUERY_NAMES


def _x(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def render(result: dict[str, Any], con: Console) -> None:
    """Print the tables of a run: writes, queries, bulk paths, bytes on disk, targets."""
    m, cfg = result["machine"], result["config"]
    con.print(f"[bold]krepis bench[/] — {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
              f"LMDB {m['lmdb']}, SQLite {m['sqlite']}; load average at the end "
              f"{', '.join(str(x) for x in m['load_average'])}")
    con.print(result["note"])

    rounds = "1 round" if cfg["rounds"] == 1 else f"the median of {cfg['rounds']} interleaved rounds"
    writes = Table(title=f"writes: {rounds} of {cfg['seconds']:g} s")
    for col in ("", "ops/s", "min–max", "CPU µs/op", "p50 µs", "p99 µs", "× ceiling", "× sqlite3 FULL"):
        writes.add_column(col, justify="left" if not col else "right")
    for row in result["rows"]:
        writes.add_row(row["name"], f"{row['ops_per_s']:,.0f}",
                       f"{row['ops_per_s_min']:,.0f}–{row['ops_per_s_max']:,.0f}",
                       f"{row['cpu_us_per_op']:,.1f}", f"{row['p50_us']:,.0f}", f"{row['p99_us']:,.0f}",
                       _x(row["ratio_ceiling"]), _x(row["ratio_sqlite_full"]))
    con.print(writes)

    q = result["queries"]
    small, large = q["sizes"]
    queries = Table(title="queries: krepis and sqlite3 (same rows, equivalent indexes), µs per call")
    both = small != large  # (one journal size only: one krepis column)
    columns = [f"krepis {small:,}"] if both else []
    for col in ("", *columns, f"krepis {large:,}", f"sqlite3 {large:,}", "krepis / sqlite3"):
        queries.add_column(col, justify="left" if not col else "right")
    for name in QUERY_NAMES:
        big = q[str(large)][name]
        first = [f"{q[str(small)][name]['krepis_us']:,.1f}"] if both else []
        queries.add_row(name, *first, f"{big['krepis_us']:,.1f}", f"{big['sqlite_us']:,.1f}",
                        _x(big["ratio"]))
    for name in ("recover_op_count", "journal_count"):
        first = [f"{q[str(small)][name]['krepis_us']:,.2f}"] if both else []
        queries.add_row(name, *first, f"{q[str(large)][name]['krepis_us']:,.2f}", "", "")
    con.print(queries)

    bulk = Table(title=f"bulk paths on {large:,} entries")
    for col in ("", "entries", "seconds", "entries/s", "CPU µs/entry"):
        bulk.add_column(col, justify="left" if not col else "right")
    for b in result["bulk"]:
        note = f" (process start {b['start_s']:.2f} s included)" if "start_s" in b else ""
        bulk.add_row(b["name"] + note, f"{b['entries']:,}", f"{b['seconds']:.2f}",
                     f"{b['entries_per_s']:,.0f}", f"{b['cpu_us_per_entry']:,.1f}")
    con.print(bulk)

    size = Table(title="bytes on disk per entry, written one entry per call (every file, at rest)")
    for col in ("entries", "krepis", "sqlite3", "krepis / sqlite3"):
        size.add_column(col, justify="right")
    for s in result["size"]:
        size.add_row(f"{s['entries']:,}", f"{s['krepis_bytes_per_entry']:,.1f} B",
                     f"{s['sqlite_bytes_per_entry']:,.1f} B", _x(s["ratio"]))
    con.print(size)

    web = result.get("web")
    if web:
        pages = Table(title="web console (krepis serve): server time per page, ms")
        for col in ("", "entries", "p50", "p99", "round trip p50"):
            pages.add_column(col, justify="left" if not col else "right")
        for p in web["reads"]:
            pages.add_row(p["name"], f"{p['entries']:,}", f"{p['server_ms_p50']:,.2f}",
                          f"{p['server_ms_p99']:,.2f}", f"{p['round_trip_ms_p50']:,.2f}")
        con.print(pages)
        live = web["live"]
        con.print(f"web console, live: {live['viewers']} viewers while {live['rate']:,} entries/s are "
                  f"written ({live['rounds']} rounds of {live['seconds']:g} s): lag p50 {live['lag_ms_p50']} "
                  f"ms, p99 {live['lag_ms_p99']} ms, max {live['lag_ms_max']} ms; writer "
                  f"{live['writer_alone_per_s']:,.0f}/s alone, {live['writer_with_viewers_per_s']:,.0f}/s "
                  f"with them ({live['writer_drop_pct']:.1f} % less); each viewer got at least "
                  f"{live['entries_per_viewer_min']:,} of the {live['entries_per_round']:,} entries of a "
                  f"round; {live['behind_events']} fell-behind notices")

    targets = Table(title="targets")
    for col in ("target", "measured", "verdict"):
        targets.add_column(col)
    for t in result["targets"]:
        targets.add_row(t["target"], t["figure"], "[green]met[/]" if t["met"] else "[yellow]missed[/]")
    con.print(targets)
    met = sum(t["met"] for t in result["targets"])
    con.print(f"{met} of {len(result['targets'])} targets met. A target is the project's goal for a "
              "row; missed means this run measured less (or, for bytes and CPU, more) on this machine "
              "— docs/performance.md has a reference run, and tiny --large sizes measure little.")
