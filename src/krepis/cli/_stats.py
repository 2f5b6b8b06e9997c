"""``krepis stats``: the counters and how many entries are where, or — with ``--by`` — a summary
per op (and status): counts, failure rate, exact duration percentiles."""
from __future__ import annotations

import csv
import io
import sys
from typing import Any

import click
from rich.cells import cell_len

from .._errors import StorageError
from .._model import LogStatus
from ..journal import EntryCounts, SovereignJournal, Summary, SummaryRow
from ._common import (
    _READ_POLICY,
    _emit_json,
    _inert_tsv,
    _storage,
    _storage_option,
    _TimeType,
    cli,
    inert,
    plural,
)
from ._output import _duration, _fit, _to_stdout, _use_color, _utc_iso, _width
from ._select import _check_history, _check_range, _history_options

__all__: list[str] = []

#: --sort: the row's value to order by (largest first, but for name)
_SORTS = ("failed", "entries", "rate", "p50", "p95", "p99", "max", "name")

_FIELDS = ("entries", "started", "completed", "failed", "failure_rate", "durations", "p50_us", "p95_us",
           "p99_us", "max_us")


class _ByType(click.ParamType):  # type: ignore[type-arg]
    """``op``, ``status``, ``op,status`` or ``status,op``."""

    name = "op[,status]"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        from ..journal._summary import check_by

        try:
            by = check_by(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not by:
            self.fail("name what to group by: op, status or op,status", param, ctx)
        return by


@cli.command()
@click.option("--by", "by", type=_ByType(), default=None, metavar="op[,status]",
              help="Summarize per op (and status): entries, failures, failure rate and the exact "
                   "p50/p95/p99/max of the durations. Implied by --since, --until, --op, --status.")
@click.option("--since", metavar="TIME", type=_TimeType(),
              help="Summarize entries from this time on (inclusive); the forms of logs --since.")
@click.option("--until", metavar="TIME", type=_TimeType(), help="Summarize entries before this time.")
@click.option("--op", "op", metavar="NAME", multiple=True, help="Only this op (repeat for either-of).")
@click.option("--status", multiple=True,
              type=click.Choice([s.value for s in LogStatus], case_sensitive=False),
              help="Only entries with this status (any case). Repeat for either-of.")
@click.option("--sort", "sort", type=click.Choice(_SORTS), default="failed", show_default=True,
              help="Order the groups by this (largest first; name: alphabetical).")
@click.option("-n", "--limit", "limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Only the first N groups (after --sort).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: storage, journal_entries, entries (live/archived/total), archive "
                   "and op_counts — or, with --by, the summary's rows and total.")
@click.option("--csv", "as_csv", is_flag=True,
              help="CSV with a header line (the counters, or the summary's rows).")
@_history_options
@_storage_option
@click.pass_context
def stats(ctx: click.Context, by: tuple[str, ...] | None, since: int | None, until: int | None,
          op: tuple[str, ...], status: tuple[str, ...], sort: str, limit: int | None, as_json: bool,
          as_csv: bool, archive: str | None, live_only: bool) -> None:
    """Show the counters and entry counts, or a summary per op.

    Every op counter and how many journal entries there are: live in the store, archived, and
    in all (the archive directory the store records is checked).

    With --by op (or --by op,status, or --by status), summarize the whole history instead — or the entries
    between --since and --until: per group, how many entries, how many failed, the failure rate
    (failed ÷ finished) and the exact p50/p95/p99/max of their durations (nearest rank: the
    percentiles `krepis export` gives too), with a TOTAL line. On a terminal a table; piped,
    tab-separated lines with a header; --csv, --json for programs.
    """
    _stats(ctx, by, since, until, op, status, sort, limit, as_json, as_csv, archive, live_only)


def _stats(ctx: click.Context, by: tuple[str, ...] | None, since: int | None, until: int | None,
           op: tuple[str, ...], status: tuple[str, ...], sort: str, limit: int | None, as_json: bool,
           as_csv: bool, archive: str | None, live_only: bool) -> None:
    """The body of ``krepis stats`` (a plain function, so that mutation testing reaches it)."""
    _check_history(archive, live_only)
    _check_range(since, until)
    if as_json and as_csv:
        raise click.UsageError("--json and --csv do not go together")
    if by is None and (since is not None or until is not None or op or status):
        by = ("op",)
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        if by is not None:
            summary = journal.summary(by, since=since, until=until, op_name=list(op) or None,
                                      status=list(status) or None, archive=archive, live_only=live_only)
            path = journal.path
        else:
            unreadable = None  # the counters do not need the archive: shown, then the error
            if not live_only:
                try:
                    journal.check_archive(archive)
                except StorageError as exc:
                    unreadable = exc
            counts = journal.op_counts()
            where = journal.entry_counts()
            path = journal.path
    if by is not None:
        _show_summary(summary, path, sort, limit, as_json, as_csv)
        return
    entries = where.live if live_only else where.total
    archive_dir = archive or where.archive
    if as_json:
        _emit_json({"storage": path, "journal_entries": entries,
                    "entries": {"live": where.live, "archived": where.archived, "total": where.total},
                    "archive": archive_dir, "op_counts": counts,
                    **({} if unreadable is None else {"archive_error": str(unreadable)})})
    else:
        _show_counts(counts, where, archive_dir, path, live_only, as_csv)
    if unreadable is not None:
        raise click.ClickException(f"{unreadable} (the counts above are the store's own)")


def _show_counts(counts: dict[str, int], where: EntryCounts, archive_dir: str | None, path: str,
                 live_only: bool, as_csv: bool) -> None:
    held = plural(where.total, "journal entry", "journal entries")
    if where.archived or archive_dir:
        held += f" ({where.live} live, {where.archived} archived" + (
            f" in {inert(archive_dir)})" if archive_dir else ")")
    if live_only:
        held = f"{where.live} live journal entries (--live-only; {where.archived} archived)"
    summary_line = f"{held}, {plural(len(counts), 'counter')} in {inert(path)}"
    names = sorted(counts)
    if as_csv:
        _to_stdout(_csv_lines([["counter", "value"], *([inert(n), counts[n]] for n in names)]))
        return
    if not counts:
        click.echo(f"no counters yet; {held} in {inert(path)}")
        return
    if not sys.stdout.isatty():
        _to_stdout(f"{_inert_tsv(name)}\t{counts[name]}" for name in names)
        click.echo(summary_line, err=True)
        return
    value_w = max(5, *(len(str(v)) for v in counts.values()))
    name_w = min(max(7, *(cell_len(inert(n)) for n in names)), _width() - value_w - 2)
    header = f"{_fit('COUNTER', name_w)}  {'VALUE'.rjust(value_w)}"
    lines = [click.style(header, bold=True) if _use_color() else header]
    lines += [f"{_fit(inert(name), name_w)}  {str(counts[name]).rjust(value_w)}" for name in names]
    _to_stdout([*lines, summary_line])


def _sorted(rows: tuple[SummaryRow, ...], sort: str) -> list[SummaryRow]:
    if sort == "name":
        return list(rows)  # (the summary's order: op name, then status)

    def value(row: SummaryRow) -> float:
        found = {"failed": row.failed, "entries": row.entries, "rate": row.failure_rate, "p50": row.p50_us,
                 "p95": row.p95_us, "p99": row.p99_us, "max": row.max_us}[sort]
        return -1.0 if found is None else float(found)

    # largest first; ties keep the summary's order (stable sort)
    return sorted(rows, key=lambda row: (-value(row), -row.entries))


def _csv_lines(rows: list[list[Any]]) -> list[str]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows(rows)
    return out.getvalue().splitlines()


def _show_summary(summary: Summary, path: str, sort: str, limit: int | None, as_json: bool,
                  as_csv: bool) -> None:
    rows = _sorted(summary.rows, sort)[:limit]
    keys = list(summary.by)
    if as_json:
        _emit_json({"storage": path, **summary.to_dict(), "rows": [r.to_dict() for r in rows],
                    "sort": sort})
        return
    span = _span(summary)
    footer = (f"{summary.total.entries} entries in {len(summary.rows)} groups ({summary.live_entries} "
              f"live, {summary.archived_entries} archived){span} in {inert(path)}")
    if as_csv or not sys.stdout.isatty():
        header = [k for k in keys] + list(_FIELDS)
        table = [[_key_text(row, k) for k in keys] + ["" if getattr(row, f) is None else getattr(row, f)
                                                      for f in _FIELDS] for row in rows]
        if as_csv:
            _to_stdout(_csv_lines([header, *table]))
        else:
            _to_stdout(["\t".join(header),
                        *("\t".join(_inert_tsv(str(v)) for v in line) for line in table)])
            click.echo(footer, err=True)
        return
    _to_stdout([*_table(rows, summary.total, keys), footer])


def _key_text(row: SummaryRow, key: str) -> str:
    if key == "op":
        return inert(row.op_name or "")
    return row.status.value if row.status is not None else ""


def _span(summary: Summary) -> str:
    parts = []
    if summary.since is not None:
        parts.append(f" since {_utc_iso(summary.since)}")
    if summary.until is not None:
        parts.append(f" until {_utc_iso(summary.until)}")
    return "".join(parts)


def _table(rows: list[SummaryRow], total: SummaryRow, keys: list[str]) -> list[str]:
    """The rows as aligned columns fitted to the terminal, and a TOTAL line."""
    def cells(row: SummaryRow, label: list[str] | None = None) -> list[str]:
        rate = "" if row.failure_rate is None else f"{row.failure_rate * 100:.1f}%"
        return [*(label if label is not None else [_key_text(row, k) for k in keys]), str(row.entries),
                str(row.failed), rate, _duration(row.p50_us), _duration(row.p95_us), _duration(row.p99_us),
                _duration(row.max_us)]

    head = [k.upper() for k in keys] + ["ENTRIES", "FAILED", "FAIL%", "P50", "P95", "P99", "MAX"]
    body = [cells(row) for row in rows]
    foot = cells(total, ["TOTAL"] + [""] * (len(keys) - 1))
    widths = [max(cell_len(line[i]) for line in (head, *body, foot)) for i in range(len(head))]
    numbers = sum(widths[len(keys):]) + 2 * (len(head) - len(keys))
    if keys and keys[0] == "op":  # the op column gives way on a narrow terminal
        widths[0] = max(8, min(widths[0], _width() - numbers - sum(widths[1:len(keys)]) - 2 * len(keys)))

    def line(cols: list[str]) -> str:
        out = [_fit(c, widths[i]) if i < len(keys) else c.rjust(widths[i]) for i, c in enumerate(cols)]
        return "  ".join(out).rstrip()

    text = line(head)
    return [click.style(text, bold=True) if _use_color() else text, *(line(c) for c in body), line(foot)]
