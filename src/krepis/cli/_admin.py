"""Operating a store: ``bench``, ``metrics``, ``migrate``."""
from __future__ import annotations

import sys
import threading
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..journal import SovereignJournal
from ._common import (
    _READ_POLICY,
    _console,
    _emit_json,
    _storage,
    _storage_option,
    cli,
    inert,
)


@cli.command()
@click.option("--quick", is_flag=True, help="Short rows (0.6 s) and a 100,000-entry large journal.")
@click.option("--seconds", type=click.FloatRange(min=0.01), default=None,
              help="Seconds per write row [default: 3, or 0.6 with --quick].")
@click.option("--large", type=click.IntRange(min=1), default=None, metavar="N",
              help="Entries in the large journal of the read rows [default: 1,000,000].")
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where the temporary stores go (default: the current directory's disk).")
@click.option("--storage", "storage", metavar="URL", default=None,
              help="A postgresql:// URL: adds PostgreSQL rows (in a temporary schema, dropped after). "
                   "KREPIS_STORAGE is not used.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def bench(ctx: click.Context, quick: bool, seconds: float | None, large: int | None,
          directory: str | None, storage: str | None, as_json: bool) -> None:
    """Measure krepis against the disk's fsync limit, the spec's design and sqlite3.

    Runs in temporary stores (removed afterwards); KREPIS_STORAGE is ignored. All rows run side
    by side in one run on the same disk; compare the ratios, not the absolute
    numbers, on a shared machine.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench import BenchConfig, run_bench

    cfg = BenchConfig.quick(directory) if quick else BenchConfig(directory=directory)
    if seconds is not None:
        cfg.seconds = seconds
    if large is not None:
        cfg.large = large
    from ..storage.postgres import is_postgres_url

    # Temporary stores only, unless --storage is given on the command line (before or after
    # `bench`, the same): an exported KREPIS_STORAGE never makes bench touch that database.
    url = storage if storage is not None else ctx.find_root().obj.get("storage_explicit")
    if url is not None:
        if not is_postgres_url(url):
            raise click.BadParameter(f"{inert(url)!r}: only a postgresql:// URL adds rows (the LMDB rows "
                                     "always run, in temporary stores)", param_hint="--storage")
        _check_postgres(url)  # before the LMDB rows: a wrong URL fails at once, in one line
        cfg.postgres_url = url
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmark", total=15 + (3 if cfg.postgres_url else 0))

        def step(label: str, advance: int) -> None:
            progress.update(task, description=label, advance=advance)

        result = run_bench(cfg, step)
    if as_json:
        _emit_json(result)
        return
    con = _console()
    m = result["machine"]
    con.print(f"[bold]krepis bench[/] — {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
              f"LMDB {m['lmdb']}, SQLite {m['sqlite']}")
    table = Table(title="writes (ratio: to the first row)")
    for col, justify in (("", "left"), ("ops/s", "right"), ("p50 µs", "right"), ("p99 µs", "right"),
                         ("ratio", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in result["rows"]:
        table.add_row(row["name"], f"{row['ops_per_s']:,.0f}", f"{row['p50_us']:,.1f}",
                      f"{row['p99_us']:,.1f}", f"{row['ratio']:.2f}×")
    con.print(table)
    r = result["reads"]
    reads = Table(title="reads and size")
    reads.add_column("")
    reads.add_column("value", justify="right")
    reads.add_row("recover_op_count", f"{r['recover_op_count_us']:.2f} µs")
    reads.add_row("get_recent_logs(100)", f"{r['get_recent_logs_100_us']:.1f} µs")
    reads.add_row("journal_count", f"{r['journal_count_us']:.2f} µs")
    reads.add_row(f"open + recover, {r['large_entries']:,} entries", f"{r['open_recover_large_us']:.0f} µs")
    reads.add_row(f"open + recover, {r['small_entries']:,} entries", f"{r['open_recover_small_us']:.0f} µs")
    reads.add_row("bytes on disk per entry (LMDB)", f"{r['bytes_per_entry']:.0f} B")
    reads.add_row("bytes on disk per entry (sqlite3)", f"{r['sqlite_bytes_per_entry']:.0f} B")
    con.print(reads)
    q = result["queries"]
    small, large = q["sizes"]
    queries = Table(title="queries: krepis and sqlite3 (same rows, equivalent indexes), µs per call")
    for col in ("", f"krepis {small:,}", f"krepis {large:,}", f"sqlite3 {large:,}", "ratio"):
        queries.add_column(col, justify="left" if not col else "right")
    for name, big in q[str(large)].items():
        if name == "bytes_per_entry":
            continue
        queries.add_row(name, f"{q[str(small)][name]['krepis_us']:,.1f}", f"{big['krepis_us']:,.1f}",
                        f"{big['sqlite_us']:,.1f}", f"{big['ratio']:.2f}×")
    size = q[str(large)]["bytes_per_entry"]
    queries.add_row("bytes on disk per entry", "", f"{size['krepis']:.0f}", f"{size['sqlite']:.0f}",
                    f"{size['krepis'] / size['sqlite']:.2f}×")
    con.print(queries)
    targets = Table(title="targets")
    for col in ("target", "measured", "goal", "met"):
        targets.add_column(col)
    for t in result["targets"]:
        sign = "≤" if t.get("lower") else "≥"
        goal = f"{t['goal']:,}" if isinstance(t["goal"], int) else str(t["goal"])
        targets.add_row(t["target"], f"{t['measured']:,}{t['unit']}", f"{sign} {goal}{t['unit']}",
                        "[green]yes[/]" if t["met"] else "[red]no[/]")
    con.print(targets)

def _check_postgres(url: str) -> None:
    from ..storage.postgres import _url as _pgurl
    from ..storage.postgres._schema import _first_line, redact

    try:
        import psycopg
    except ImportError:
        raise click.ClickException("PostgreSQL rows need psycopg: pip install 'krepis-journal[postgres]' "
                                   "(or pip install '.[postgres]' in a checkout)") from None
    try:
        params: dict[str, Any] = dict(_pgurl.parse(url).params)  # libpq never sees the URL
    except _pgurl.UrlError as exc:
        raise click.ClickException(f"{exc} ({redact(url)})") from None
    params.setdefault("connect_timeout", "10")
    try:
        psycopg.connect(**params, autocommit=True).close()
    except psycopg.Error as exc:
        raise click.ClickException(
            f"cannot connect to PostgreSQL at {redact(url)}: {_first_line(exc)}") from None

@cli.command()
@click.option("--serve", "serve", metavar="[HOST:]PORT", default=None,
              help="Serve /metrics over HTTP (default host 127.0.0.1) until interrupted.")
@_storage_option
@click.pass_context
def metrics(ctx: click.Context, serve: str | None) -> None:
    """Print the counters and journal size in Prometheus' text format, or serve them."""
    from .._metrics import prometheus_text, serve_metrics

    host, port = "", 0
    if serve is not None:
        host, _, port_text = serve.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            port = int(port_text)
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{serve!r} is not [HOST:]PORT with PORT 0–65535",
                                     param_hint="--serve") from None
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        if serve is None:
            click.echo(prometheus_text(journal), nl=False)
            return

        def ready(bound_host: str, bound_port: int) -> None:
            click.echo(f"serving http://{bound_host}:{bound_port}/metrics (Ctrl-C to stop)", err=True)

        server = serve_metrics(journal, host, port, ready=ready)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_storage_option
@click.pass_context
def migrate(ctx: click.Context, as_json: bool) -> None:
    """Convert a store written by an older krepis to the current storage format.

    Entries (every field, in their append order) and counters are kept exactly. Every row is
    checked by the rules of a write first: a malformed one stops the migration, named by its
    format-1 sequence number, and nothing changes. The new store must pass verify() before it
    replaces the old one; a crash at any point leaves either the old store untouched or the
    complete new one. Stop every process using the store first; a store already in the current
    format is left as it is.
    """
    from ..storage import migrate as run_migration

    location = _storage(ctx)
    if as_json or not sys.stderr.isatty():
        result = run_migration(location)
    else:
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("migrating", total=None)
            result = run_migration(location, progress=lambda done, total: bar.update(
                task, completed=done, total=total))
    if as_json:
        _emit_json({"storage": result.location, "from_format": result.from_format,
                    "to_format": result.to_format, "entries": result.entries,
                    "counters": result.counters})
    elif result.from_format == result.to_format:
        click.echo(f"{result.location} is already in storage format {result.to_format}; nothing to do")
    else:
        click.echo(f"migrated {result.location} from storage format {result.from_format} to "
                   f"{result.to_format}: {result.entries} entries, {result.counters} counters")
