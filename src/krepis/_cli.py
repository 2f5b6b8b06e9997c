"""The ``krepis`` command line: run the kernel, inspect and export the journal."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from ._errors import JournalError
from ._journal import DEFAULT_STORAGE, SovereignJournal
from ._kernel import Kernel
from ._model import LogStatus, TransactionLog

__all__ = ["cli", "main"]

_STATUS_STYLE = {"Started": "yellow", "Completed": "green", "Failed": "bold red"}


class _Group(click.Group):
    """Turns expected errors into one line on stderr and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JournalError as exc:
            raise click.ClickException(str(exc)) from exc
        except BrokenPipeError:
            # The reader went away (e.g. `krepis export | head`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except OSError as exc:
            raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from exc


def _console() -> Console:
    # Piped output gets wide lines rather than columns folded at 80 characters.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _storage(ctx: click.Context) -> str:
    return str(ctx.find_root().obj["storage"])


def _set_storage(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().obj["storage"] = value


def _storage_option(fn: Any) -> Any:
    """``--storage`` after the command name too (it overrides the group's)."""
    return click.option("--storage", metavar="PATH", default=None, expose_value=False,
                        callback=_set_storage,
                        help="Storage directory or postgresql:// URL (as before the command).")(fn)


def _parse_time(value: str | None, param: str) -> int | None:
    """Unix milliseconds, or an ISO-8601 date/time (UTC unless it names an offset)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither Unix milliseconds nor an ISO-8601 time (e.g. 2026-01-31T12:00:00Z)",
            param_hint=param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    try:
        moment = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    except (OverflowError, ValueError, OSError):
        return str(ms)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--storage", envvar="KREPIS_STORAGE", default=DEFAULT_STORAGE, show_default=True,
              metavar="PATH", help="Storage directory or postgresql:// URL (env: KREPIS_STORAGE).")
@click.version_option(__version__, prog_name="krepis")
@click.pass_context
def cli(ctx: click.Context, storage: str) -> None:
    """krepis — the Sovereign Journal: a durable audit trail and crash-safe op counters."""
    ctx.ensure_object(dict)
    ctx.obj["storage"] = storage


class _JsLogHandler(logging.Handler):
    """Shows what scripts log through op_log_from_js, on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"js {record.levelname.lower()}: {record.getMessage()}", err=True)


@cli.command()
@click.argument("script", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="S",
              help="End the script after S seconds (default 300; 0: no limit). Journaled as "
                   "kernel_error Timeout.")
@click.option("--memory-limit", "memory_limit", type=click.IntRange(min=16), default=None,
              metavar="MIB", help="Memory for the script, V8 heap and array buffers, in MiB "
                                  "(default 512). Exceeding it ends the run (MemoryLimit).")
@click.option("--max-ops", "max_ops", type=click.IntRange(min=0), default=None, metavar="N",
              help="End the script at its N+1-th op call (OpLimit; default: no cap).")
@click.option("--allow-read", "allow_read", multiple=True, metavar="PATH",
              help="Let the script read files below PATH: Deno's --allow-read for exactly that "
                   "path (resolved now), and what op_check_permission('read', …) answers. "
                   "Repeatable; default: nothing. Imports stay limited to the script itself.")
@click.option("--allow-write", "allow_write", multiple=True, metavar="PATH",
              help="Let the script write below PATH (Deno's --allow-write for that path; "
                   "op_check_permission('write', …)). Repeatable; default: nothing.")
@click.option("--allow-net", "allow_net", multiple=True, metavar="HOST",
              help="Let the script connect to HOST or HOST:PORT (Deno's --allow-net for it; "
                   "op_check_permission('net', …)). Repeatable; default: nothing.")
@click.option("--flush", "flush", metavar="POLICY", envvar="KREPIS_FLUSH", default="sync",
              show_default=True, help="sync or interval:Nms (env: KREPIS_FLUSH).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@_storage_option
@click.pass_context
def run(ctx: click.Context, script: str | None, timeout: float | None, memory_limit: int | None,
        max_ops: int | None, allow_read: tuple[str, ...], allow_write: tuple[str, ...],
        allow_net: tuple[str, ...], flush: str, as_json: bool) -> None:
    """Boot the kernel and run SCRIPT (JavaScript/TypeScript) in a sandboxed Deno.

    SCRIPT must have a script suffix (.js, .ts, .mjs, …). It runs with no permissions but the
    --allow-* ones, may import nothing but itself (no other file, not even next to it), and
    is ended at its limits (--timeout, --memory-limit, --max-ops). SIGTERM, SIGHUP or Ctrl-C
    kill it and are journaled. See docs/execution-plane.md.

    Without SCRIPT, runs the built-in bootstrap: it reads the context, logs through
    op_log_from_js, calls op_increment_stats 3 times and checks a read permission. Counters
    carry over between runs: the second run recovers what the first one counted.
    """
    from pathlib import Path

    from ._plane import PermissionPolicy, ScriptError, ScriptInterrupted, resolve_script

    con = _console()
    policy = PermissionPolicy()
    try:
        for path in allow_read:
            policy.allow_read(path)
        for path in allow_write:
            policy.allow_write(path)
        for host in allow_net:
            policy.allow_net(host)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    handler = _JsLogHandler()
    js_log = logging.getLogger("krepis.js")
    js_log.addHandler(handler)
    js_log.setLevel(logging.DEBUG)
    failure: ScriptError | None = None
    interrupted: BaseException | None = None
    target = Path(script) if script else resources.files("krepis").joinpath("_js/bootstrap.js")
    resolve_script(str(target))  # a bad SCRIPT is an error before the kernel boots
    try:
        with SovereignJournal(_storage(ctx), flush=flush) as journal:
            kernel = Kernel(journal, permissions=policy)
            ops_called: int | None = None
            try:
                with kernel:  # a failing script ends the kernel with kernel_error
                    recovered = kernel.recovered.js_ops_called
                    request_id = kernel.context.request_id
                    if not as_json:
                        con.print(f"[bold]krepis kernel booted[/] storage={journal.path}")
                        con.print(f"  request_id        {request_id}")
                        con.print(f"  recovered         js_ops_called={recovered} "
                                  f"contexts_created={kernel.recovered.contexts_created}")
                        con.print(f"  running           {script or 'built-in bootstrap'}")
                    ops_called = kernel.run_script(
                        str(target), timeout=timeout, memory_limit_mb=memory_limit,
                        max_ops=max_ops, request_id=request_id).ops_called
            except ScriptError as exc:
                failure = exc
            except (ScriptInterrupted, KeyboardInterrupt) as exc:
                interrupted = exc  # Deno is dead and the interruption journaled
            stats = kernel.stats
            entries = journal.journal_count()
    finally:
        js_log.removeHandler(handler)
    if interrupted is not None:
        signum = getattr(interrupted, "signum", 2)
        click.echo(f"Error: interrupted by signal {signum}; the script was killed", err=True)
        sys.exit(128 + signum)
    summary = {
        "ok": failure is None,
        "recovered": recovered,
        "js_ops_called": stats.js_ops_called,
        "contexts_created": stats.contexts_created,
        "journal_entries": entries,
        "request_id": request_id,
        "storage": journal.path,
        "script": script,
        "ops_called": ops_called,
        "error": None if failure is None else str(failure),
        "error_name": None if failure is None else failure.name,
    }
    if as_json:
        _emit_json(summary)
    elif failure is None:
        con.print(f"[bold green]done[/]: js_ops_called {recovered} → {stats.js_ops_called}, "
                  f"{ops_called} op calls, journal entries {entries}")
    if failure is not None:
        raise click.ClickException(f"script failed: {failure}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object name → value.")
@_storage_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Show every op counter."""
    with SovereignJournal(_storage(ctx), create=False) as journal:
        counts = journal.op_counts()
        entries = journal.journal_count()
    if as_json:
        _emit_json(counts)
        return
    table = Table(title="op counters")
    table.add_column("op")
    table.add_column("count", justify="right")
    for name, value in sorted(counts.items()):
        table.add_row(name, str(value))
    con = _console()
    con.print(table)
    con.print(f"{entries} journal entries in {journal.path}")


def _filters(op: str | None, status: str | None, request_id: str | None,
             since: str | None, until: str | None) -> dict[str, Any]:
    return {
        "op_name": op,
        "status": LogStatus(status) if status else None,
        "request_id": request_id,
        "since": _parse_time(since, "--since"),
        "until": _parse_time(until, "--until"),
    }


def _filter_options(fn: Any) -> Any:
    for option in reversed([
        click.option("--op", "op", metavar="NAME", help="Only entries of this op."),
        click.option("--status", type=click.Choice([s.value for s in LogStatus]),
                     help="Only entries with this status."),
        click.option("--request-id", metavar="ID", help="Only entries of this request."),
        click.option("--since", metavar="TIME",
                     help="From this time on (Unix ms or ISO-8601, inclusive)."),
        click.option("--until", metavar="TIME", help="Before this time (Unix ms or ISO-8601, exclusive)."),
    ]):
        fn = option(fn)
    return fn


def _matches(entry: TransactionLog, filters: dict[str, Any]) -> bool:
    return ((filters["op_name"] is None or entry.op_name == filters["op_name"])
            and (filters["status"] is None or entry.status is filters["status"])
            and (filters["request_id"] is None or entry.request_id == filters["request_id"])
            and (filters["since"] is None or entry.timestamp >= filters["since"])
            and (filters["until"] is None or entry.timestamp < filters["until"]))


def _line(entry: TransactionLog) -> str:
    duration = "" if entry.duration_us is None else f"  {entry.duration_us / 1000:.3f} ms"
    error = f"  {entry.error}" if entry.error else ""
    return (f"{_iso(entry.timestamp)}  {entry.op_name}  {entry.request_id}  "
            f"[{_STATUS_STYLE[entry.status.value]}]{entry.status.value}[/]{duration}{error}")


def _follow(journal: SovereignJournal, filters: dict[str, Any], limit: int, as_json: bool) -> None:
    """Print the last `limit` entries oldest first, then new ones as they are written."""
    con = _console()

    def show(entries: list[TransactionLog]) -> None:
        for entry in reversed(entries):  # newest-first in, oldest-first out
            if as_json:
                click.echo(entry.to_json())
            else:
                con.print(_line(entry), markup=True, highlight=False)
        sys.stdout.flush()

    seen = journal.journal_count()
    show(journal.query(limit=limit, **filters))
    try:
        while True:
            time.sleep(0.25)
            count = journal.journal_count()
            if count < seen:
                click.echo(f"(the journal was cleared: {seen} → {count} entries)", err=True)
            elif count > seen:
                show([e for e in journal.query(limit=count - seen) if _matches(e, filters)])
            seen = count
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(min=0),
              help="How many entries at most.")
@_filter_options
@click.option("-f", "--follow", is_flag=True,
              help="Print the last entries oldest first, then each new one as it is written "
                   "(Ctrl-C stops); with --json, one object per line.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of entries.")
@_storage_option
@click.pass_context
def logs(ctx: click.Context, limit: int, op: str | None, status: str | None, request_id: str | None,
         since: str | None, until: str | None, follow: bool, as_json: bool) -> None:
    """Show journal entries, newest first (or follow them as they are written)."""
    filters = _filters(op, status, request_id, since, until)
    with SovereignJournal(_storage(ctx), create=False) as journal:
        if follow:
            _follow(journal, filters, limit, as_json)
            return
        entries = journal.query(limit=limit, **filters)
    if as_json:
        _emit_json([e.to_dict() for e in entries])
        return
    table = Table(title=f"{len(entries)} newest journal entries")
    for col in ("time (UTC)", "op", "request_id", "status", "duration", "error"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(
            _iso(e.timestamp), e.op_name, e.request_id,
            f"[{_STATUS_STYLE[e.status.value]}]{e.status.value}[/]",
            "" if e.duration_us is None else f"{e.duration_us / 1000:.3f} ms",
            e.error or "",
        )
    _console().print(table)


@cli.command()
@_filter_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              default="-", show_default=True, help="File to write (- for stdout).")
@_storage_option
@click.pass_context
def export(ctx: click.Context, op: str | None, status: str | None, request_id: str | None,
           since: str | None, until: str | None, output: str) -> None:
    """Export the journal as JSON Lines, oldest first (one entry per line, stored form)."""
    filters = _filters(op, status, request_id, since, until)
    with SovereignJournal(_storage(ctx), create=False) as journal:
        logs_iter: Iterator[TransactionLog] = journal.iter_logs(newest_first=False, **filters)
        with click.open_file(output, "w", encoding="utf-8") as out:
            count = 0
            for entry in logs_iter:
                out.write(entry.to_json() + "\n")
                count += 1
    if output != "-":
        click.echo(f"exported {count} entries to {output}", err=True)


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_storage_option
@click.pass_context
def clear(ctx: click.Context, yes: bool) -> None:
    """Delete every journal entry and counter (durable; cannot be undone)."""
    path = _storage(ctx)
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to clear the journal without --yes")
        click.confirm(f"Delete every entry and counter in {os.path.abspath(path)}?", abort=True)
    with SovereignJournal(path, create=False) as journal:
        entries = journal.journal_count()
        journal.clear_all()
    click.echo(f"cleared {entries} entries and all counters in {journal.path}")


@cli.command()
@click.option("--quick", is_flag=True, help="Short rows (0.6 s) and a 100,000-entry large journal.")
@click.option("--seconds", type=click.FloatRange(min=0.01), default=None,
              help="Seconds per write row [default: 3, or 0.6 with --quick].")
@click.option("--large", type=click.IntRange(min=1), default=None, metavar="N",
              help="Entries in the large journal of the read rows [default: 1,000,000].")
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where the temporary stores go (default: the current directory's disk).")
@click.option("--storage", "storage", metavar="URL", default=None,
              help="A postgresql:// URL: adds PostgreSQL rows (in a temporary schema, dropped after).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def bench(ctx: click.Context, quick: bool, seconds: float | None, large: int | None,
          directory: str | None, storage: str | None, as_json: bool) -> None:
    """Measure krepis against the disk's fsync limit, the spec's design and sqlite3.

    All rows run side by side in one run on the same disk; compare the ratios, not the absolute
    numbers, on a shared machine.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ._bench import BenchConfig, run_bench

    cfg = BenchConfig.quick(directory) if quick else BenchConfig(directory=directory)
    if seconds is not None:
        cfg.seconds = seconds
    if large is not None:
        cfg.large = large
    from ._storage.postgres import is_postgres_url

    url = storage or _storage(ctx)
    if storage is not None and not is_postgres_url(storage):
        raise click.BadParameter("only a postgresql:// URL adds rows; LMDB rows always run",
                                 param_hint="--storage")
    if is_postgres_url(url):
        cfg.postgres_url = url
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmark", total=10 + (3 if cfg.postgres_url else 0))

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
    targets = Table(title="targets")
    for col in ("target", "measured", "goal", "met"):
        targets.add_column(col)
    for t in result["targets"]:
        sign = "≤" if t["unit"] == "µs" or "open" in t["target"] else "≥"
        goal = f"{t['goal']:,}" if isinstance(t["goal"], int) else str(t["goal"])
        targets.add_row(t["target"], f"{t['measured']:,}{t['unit']}", f"{sign} {goal}{t['unit']}",
                        "[green]yes[/]" if t["met"] else "[red]no[/]")
    con.print(targets)


@cli.command()
@click.option("--serve", "serve", metavar="[HOST:]PORT", default=None,
              help="Serve /metrics over HTTP (default host 127.0.0.1) until interrupted.")
@_storage_option
@click.pass_context
def metrics(ctx: click.Context, serve: str | None) -> None:
    """Print the counters and journal size in Prometheus' text format, or serve them."""
    from ._metrics import prometheus_text, serve_metrics

    with SovereignJournal(_storage(ctx), create=False) as journal:
        if serve is None:
            click.echo(prometheus_text(journal), nl=False)
            return
        host, _, port_text = serve.rpartition(":")
        try:
            port = int(port_text)
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{serve!r} is not [HOST:]PORT with PORT 0–65535",
                                     param_hint="--serve") from None

        def ready(bound_host: str, bound_port: int) -> None:
            click.echo(f"serving http://{bound_host}:{bound_port}/metrics (Ctrl-C to stop)", err=True)

        server = serve_metrics(journal, host or "127.0.0.1", port, ready=ready)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="krepis")


if __name__ == "__main__":  # pragma: no cover
    main()
