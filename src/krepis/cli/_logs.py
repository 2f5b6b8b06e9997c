"""Reading the journal: ``logs`` (with ``--follow``), ``export``, and ``clear`` (``stats`` is in
``_stats``)."""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import click

from .._model import TransactionLog
from ..journal import SovereignJournal
from ..storage._outfiles import atomic_output
from ._common import (
    _READ_POLICY,
    _LimitType,
    _reader_gone,
    _storage,
    _storage_option,
    cli,
    inert,
)
from ._find import _grep_options, compile_grep, resolve_requests
from ._output import (
    _BATCH,
    _emit_lines,
    _format_option,
    _headed,
    _json_seq_line,
    _renderer,
    _to_stdout,
    _use_color,
    _with_header,
    _with_seq,
)
from ._progress import Bar, _quiet_option, progress_bar
from ._select import (
    _check_range,
    _filter_options,
    _history_options,
    _newest_oldest_first,
    _Selection,
    _selection,
    select_entries,
)

#: a table's columns are fitted to its first entries, this many (about a screenful or two)
_SAMPLE = 100


def _follow(journal: SovereignJournal, selection: _Selection, limit: int | None,
            render: Callable[[TransactionLog], str]) -> None:
    """Print the last `limit` entries oldest first, then new ones as they are written."""

    def show(entries: Iterable[TransactionLog]) -> None:
        _to_stdout(render(entry) for entry in entries)
        sys.stdout.flush()

    # Follow by sequence number: every entry appended after the start is shown exactly once,
    # whatever its timestamp and however many processes write.
    start = journal.next_seq()
    epoch = journal.tree_head().epoch
    show(e for e in _newest_oldest_first(journal, selection, limit) if (e.seq or 0) < start)
    cursor = start - 1
    try:
        while not _reader_gone():
            time.sleep(0.25)
            head = journal.tree_head()
            if head.epoch != epoch:
                click.echo("(the journal was cleared)", err=True)
                epoch = head.epoch
            if head.first_seq + head.size - 1 > cursor:
                new = journal.iter_logs(order="append", newest_first=False,
                                        after=cursor if cursor >= 0 else None, archive=selection.archive,
                                        live_only=selection.live_only)
                for entry in new:
                    cursor = entry.seq if entry.seq is not None else cursor
                    if selection.matches(entry):
                        show((entry,))
    except KeyboardInterrupt:
        pass

@cli.command()
@click.option("-n", "--lines", "--limit", "limit", type=_LimitType(), default="20", show_default=True,
              help="How many entries at most (the newest), or 'all'.")
@click.option("--all", "show_all", is_flag=True, help="Every matching entry (the same as -n all).")
@_filter_options
@click.option("--reverse", is_flag=True,
              help="Oldest first: the same entries (the N newest matches) in the order they were written.")
@click.option("--count", "count_only", is_flag=True,
              help="Print only how many entries match (ignores -n).")
@click.option("-f", "--follow", is_flag=True,
              help="Print the last entries oldest first, then each new one as it is written "
                   "(Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one entry per line, its sequence number first ({\"seq\":41,…}), "
                   "then the stored form's fields (the same as --format jsonl).")
@_format_option("-o", "--format",
                help="table (the terminal's default: columns fitted to the width), tsv (piped "
                     "default), jsonl (as --json) or csv (with a header line).")
@click.option("--no-pager", is_flag=True, help="Never pipe the output through a pager.")
@_grep_options
@_history_options
@_storage_option
@click.pass_context
def logs(ctx: click.Context, limit: int | None, show_all: bool, op: tuple[str, ...],
         status: tuple[str, ...], request_id: tuple[str, ...], since: int | None, until: int | None,
         reverse: bool, count_only: bool, follow: bool, as_json: bool, fmt: str | None, no_pager: bool,
         grep: str | None, ignore_case: bool, archive: str | None, live_only: bool) -> None:
    """Show journal entries, newest first.

    Streamed as they are read: the whole history, archived entries included (--live-only: the
    live store alone).

    On a terminal: one line per entry fitted to its width (local time), through
    a pager (KREPIS_PAGER, PAGER or less) when longer than the screen. Piped:
    tab-separated lines (UTC time, op, request id, status, duration in µs,
    error). --format (-o) chooses: table, tsv, jsonl (--json) or csv. Text from
    the journal is printed inert: control characters and escape sequences
    appear as visible escapes.
    """
    _logs(ctx, limit, show_all, op, status, request_id, since, until, reverse, count_only, follow, as_json,
          fmt, no_pager, grep, ignore_case, archive, live_only)

def _logs(ctx: click.Context, limit: int | None, show_all: bool, op: tuple[str, ...], status: tuple[str, ...],
          request_id: tuple[str, ...], since: int | None, until: int | None, reverse: bool, count_only: bool,
          follow: bool, as_json: bool, fmt: str | None, no_pager: bool, grep: str | None, ignore_case: bool,
          archive: str | None, live_only: bool) -> None:
    """The body of ``krepis logs`` (a plain function, so that mutation testing reaches it)."""
    if show_all:
        limit = None
    if count_only and follow:
        raise click.UsageError("--count and --follow do not go together")
    _check_range(since, until)
    pattern = compile_grep(grep, ignore_case)
    selection = _selection(op, status, request_id, since, until, archive, live_only, pattern)
    if as_json and fmt is not None and fmt.lower() not in ("jsonl", "json"):
        raise click.UsageError(f"--json is --format jsonl: it does not go with --format {fmt}")
    tty = sys.stdout.isatty()
    fmt = "jsonl" if as_json else fmt.lower() if fmt is not None else "table" if tty else "tsv"
    as_json = fmt in ("jsonl", "json")  # (--count --json prints {"count": N})
    header, render = _renderer(fmt, color=_use_color())
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        found, misses = resolve_requests(journal, selection, keep_misses=follow)
        for miss in misses:
            click.echo(miss, err=True)
        if found is None:  # no --request-id value names a request: nothing matches
            if count_only:
                click.echo(json.dumps({"count": 0}) if as_json else "0")
            elif fmt == "table":
                click.echo("-- no entries --")
            elif header is not None:
                click.echo(header)
            return
        selection = found
        if count_only:
            if selection.everything:
                if not live_only:
                    journal.check_archive()  # (as every read: a missing archive is an error)
                total = journal.journal_count(live_only=live_only)
            else:
                total = sum(1 for _ in select_entries(journal, selection, newest_first=False, limit=None))
            click.echo(json.dumps({"count": total}) if as_json else str(total))
            return
        if follow:
            if header is not None:
                click.echo(header)
            _follow(journal, selection, limit, render)
            return
        if reverse:
            entries = _newest_oldest_first(journal, selection, limit)
        else:
            entries = select_entries(journal, selection, newest_first=True, limit=limit)
        if fmt == "table":  # columns fitted to the first screenful
            entries = iter(entries)
            sample = list(itertools.islice(entries, _SAMPLE))
            header, render = _renderer(fmt, color=_use_color(), sample=sample)
            entries = itertools.chain(sample, entries)
        lines: Iterator[str] = (render(entry) for entry in entries)
        if fmt == "table":
            lines = _with_header(header or "", lines)  # ("-- no entries --" when there is none)
        else:
            lines = _headed(header, lines)
        _emit_lines(lines, pager=tty and not no_pager)

@cli.command()
@_filter_options
@_grep_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              default="-", show_default=True, help="File to write (- for stdout).")
@_format_option("--format", help="jsonl (default), csv (with a header line), tsv or table (columns "
                                 "fitted to the terminal's width, or COLUMNS).")
@_history_options
@_quiet_option
@_storage_option
@click.pass_context
def export(ctx: click.Context, op: tuple[str, ...], status: tuple[str, ...], request_id: tuple[str, ...],
           since: int | None, until: int | None, grep: str | None, ignore_case: bool, output: str,
           fmt: str | None, archive: str | None, live_only: bool) -> None:
    """Export the journal as JSON Lines (or CSV, TSV), oldest first.

    One entry per line: its sequence number, then the stored form's fields
    ({"seq":41,"timestamp":…}); without its "seq":N, a line is the stored form byte for byte,
    what the Merkle tree hashes. --format csv, tsv or table prints the columns of krepis logs
    instead. The whole history, archived entries included (--live-only: the live store alone).

    -o FILE is replaced in one step once every entry is written (mode 0600), or left as it was
    if the export fails; a symbolic link there is refused, a FIFO is written as a stream.
    """
    _export(ctx, op, status, request_id, since, until, grep, ignore_case, output, fmt, archive, live_only)

def _export(ctx: click.Context, op: tuple[str, ...], status: tuple[str, ...], request_id: tuple[str, ...],
            since: int | None, until: int | None, grep: str | None, ignore_case: bool, output: str,
            fmt: str | None, archive: str | None, live_only: bool) -> None:
    """The body of ``krepis export`` (a plain function, so that mutation testing reaches it)."""
    _check_range(since, until)
    selection = _selection(op, status, request_id, since, until, archive, live_only,
                           compile_grep(grep, ignore_case))
    to_terminal = output == "-" and sys.stdout.isatty()  # (no bar over the entries themselves)
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal, \
            progress_bar(ctx, "exporting", unless=to_terminal) as bar:
        found, misses = resolve_requests(journal, selection)
        for miss in misses:
            click.echo(miss, err=True)
        entries: Iterator[TransactionLog] = iter(()) if found is None else _counted(
            select_entries(journal, found, newest_first=False, limit=None), bar,
            journal.journal_count(live_only=live_only) if found.everything else None)
        fmt = (fmt or "jsonl").lower()
        header: str | None
        render: Callable[[TransactionLog], str]
        if fmt in ("jsonl", "json"):  # seq and the stored form (inert JSON escapes on a terminal)
            to_stdout = _json_seq_line if sys.stdout.isatty() else _with_seq
            header, render = None, (to_stdout if output == "-" else _with_seq)
        else:
            header, render = _renderer(fmt, color=output == "-" and _use_color())
        if output == "-":
            _to_stdout(_headed(header, (render(entry) for entry in entries)))
            return
        # A file is replaced whole (written beside it, flushed, renamed over it) or left as it
        # was; a FIFO or a terminal is written as the stream it is.
        with atomic_output(output) as out:
            if header is not None:
                out.write(header + "\n")
            count = _write_entries(out, entries, render)
    click.echo(f"exported {count} entries to {inert(output)}", err=True)

def _counted(entries: Iterator[TransactionLog], bar: Bar, total: int | None) -> Iterator[TransactionLog]:
    """``entries``, reported to ``bar`` as they pass (``total``: how many will, when known)."""
    done = 0
    for entry in entries:
        yield entry
        done += 1
        if done % 4096 == 0:
            bar(done, total)
    bar(done, done)

def _write_entries(out: IO[str], entries: Iterable[TransactionLog],
                   render: Callable[[TransactionLog], str]) -> int:
    count = 0
    batch: list[str] = []
    for entry in entries:
        batch.append(render(entry))
        count += 1
        if len(batch) >= _BATCH:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
    return count

@cli.command()
@click.option("--yes", is_flag=True, help="Required: confirms the deletion (krepis never asks).")
@_storage_option
@click.pass_context
def clear(ctx: click.Context, yes: bool) -> None:
    """Delete every entry and counter; cannot be undone.

    Durable: the store keeps only the trace of the clear (the new log's first entry).
    Checkpoints of the old log stay, valid for it only."""
    _clear(ctx, yes)

def _clear(ctx: click.Context, yes: bool) -> None:
    """The body of ``krepis clear`` (a plain function, so that mutation testing reaches it)."""
    path = _storage(ctx)
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to clear the journal without --yes")
        click.confirm(f"Delete every entry and counter in {inert(os.path.abspath(path))}?", abort=True)
    with SovereignJournal(path, create=False, flush=_READ_POLICY, retention="off") as journal:
        entries = journal.journal_count()
        journal.clear_all()
    click.echo(f"cleared {entries} entries and all counters in {inert(journal.path)}")
