"""Operating a store: ``bench``, ``metrics``, ``migrate``."""
from __future__ import annotations

import threading
from typing import Any

import click
from rich.console import Console

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
from ._progress import _quiet_option, progress_bar


@cli.command()
@click.option("--quick", is_flag=True,
              help="2 rounds of 0.5 s per write row and a 100,000-entry large journal.")
@click.option("--seconds", type=click.FloatRange(min=0.01), default=None, metavar="S",
              help="Seconds per round of each write row [default: 3, or 0.5 with --quick].")
@click.option("--rounds", type=click.IntRange(min=1), default=None, metavar="N",
              help="Rounds of every write row, interleaved; the median is reported [default: 3, or 2 "
                   "with --quick].")
@click.option("--large", type=click.IntRange(min=1), default=None, metavar="N",
              help="Entries of the journal of the query and bulk rows [default: 1,000,000, or "
                   "100,000 with --quick]; the bytes-per-entry rows use min(N, 300,000) and a third "
                   "of that.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where the temporary stores go (default: the current directory's disk).")
@click.option("--storage", "storage", metavar="URL", default=None,
              help="A postgresql:// URL: adds PostgreSQL rows (in a temporary schema, dropped after). "
                   "KREPIS_STORAGE is not used.")
@click.option("--json", "as_json", is_flag=True,
              help="Print every figure (each round of each row, medians, CPU, ratios, targets) as one "
                   "JSON object.")
@click.pass_context
def bench(ctx: click.Context, quick: bool, seconds: float | None, rounds: int | None, large: int | None,
          directory: str | None, storage: str | None, as_json: bool) -> None:
    """Measure krepis against the disk, sqlite3 and its targets.

    Each row says how fast krepis wrote (or read) and how that compares with the disk's
    one-writer ceiling (fsync per write: no journal can be faster with the same durability) and
    with sqlite3 holding the same rows; the targets section says, per target, "met" or "missed".

    Runs in temporary stores (removed afterwards); KREPIS_STORAGE is ignored. The write rows run
    in interleaved rounds on the same disk (round 1 of every row, then round 2, ...) and report
    medians; on a shared machine compare the ratios, not the absolute numbers. A missed target
    is a measurement, not an error: the command exits 0.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..bench import BenchConfig, render, run_bench

    cfg = BenchConfig.quick(directory) if quick else BenchConfig(directory=directory)
    if seconds is not None:
        cfg.seconds = seconds
    if rounds is not None:
        cfg.rounds = rounds
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
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmark", total=None)

        def step(label: str, done: int, total: int) -> None:
            progress.update(task, description=label, completed=done, total=total)

        result = run_bench(cfg, step)
    if as_json:
        _emit_json(result)
        return
    render(result, _console())

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
@click.option("--live-only", "live_only", is_flag=True,
              help="Never read the archive (it may be missing): per-op series of the live store's "
                   "entries alone, no archive size.")
@_storage_option
@click.pass_context
def metrics(ctx: click.Context, serve: str | None, live_only: bool) -> None:
    """Print the journal's metrics for Prometheus, or serve them.

    Counters, entry counts, sizes and per-op series, in Prometheus' text format."""
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
            click.echo(prometheus_text(journal, live_only=live_only), nl=False)
            return

        def ready(bound_host: str, bound_port: int) -> None:
            click.echo(f"serving http://{bound_host}:{bound_port}/metrics (Ctrl-C to stop)", err=True)

        server = serve_metrics(journal, host, port, ready=ready, live_only=live_only)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_quiet_option
@_storage_option
@click.pass_context
def migrate(ctx: click.Context, as_json: bool) -> None:
    """Convert a store of an older krepis to the current format.

    Entries (every field, in their append order) and counters are kept exactly. Every row is
    checked by the rules of a write first: a malformed one stops the migration, named by its
    format-1 sequence number, and nothing changes. The new store must pass verify() before it
    replaces the old one; a crash at any point leaves either the old store untouched or the
    complete new one. Stop every process using the store first; a store already in the current
    format is left as it is.
    """
    from ..storage import migrate as run_migration

    location = _storage(ctx)
    with progress_bar(ctx, "migrating") as bar:
        result = run_migration(location, progress=bar)
    if as_json:
        _emit_json({"storage": result.location, "from_format": result.from_format,
                    "to_format": result.to_format, "entries": result.entries,
                    "counters": result.counters})
    elif result.from_format == result.to_format:
        click.echo(f"{result.location} is already in storage format {result.to_format}; nothing to do")
    else:
        click.echo(f"migrated {result.location} from storage format {result.from_format} to "
                   f"{result.to_format}: {result.entries} entries, {result.counters} counters")
