"""``krepis archive DIR``: move the journal's oldest entries into a compressed, verifiable archive."""

from __future__ import annotations

import click

from ..journal import SovereignJournal
from ._common import _READ_POLICY, _emit_json, _storage, _storage_option, _TimeType, cli, inert

__all__: list[str] = []


@cli.command()
@click.argument("directory", metavar="DIR")
@click.option("--before", metavar="TIME", type=_TimeType(), default=None,
              help="Archive every bundle whose entries are all older than TIME (the forms of "
                   "logs --since: ISO-8601, '30 days ago', Unix ms, @SECONDS).")
@click.option("--keep-last", metavar="N", type=click.IntRange(min=0), default=None,
              help="Keep at least the newest N entries in the store; archive the rest.")
@click.option("--keep-days", metavar="D", type=click.FloatRange(min=0, max=1_000_000), default=None,
              help="Keep the entries of the last D days (a number, may be fractional).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_storage_option
@click.pass_context
def archive(ctx: click.Context, directory: str, before: int | None, keep_last: int | None,
            keep_days: float | None, as_json: bool) -> None:
    """Move the oldest entries, in whole bundles of 256 in append order, into the archive DIR
    (zstd-compressed segments, a dictionary trained on this journal, a manifest with
    checksums) and remove them from the store.

    Each step is durable in DIR before any entry leaves the store; an interrupted run is
    completed by the next. Counters and the Merkle tree do not change: checkpoints and proofs
    keep working (archived entries' proofs read DIR). Read archived entries with
    `krepis logs --archive DIR` / `export --archive DIR`; check them with
    `krepis verify --archive DIR`. One archive directory per store.
    """
    given = [name for name, value in (("--before", before), ("--keep-last", keep_last),
                                      ("--keep-days", keep_days)) if value is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --before, --keep-last and --keep-days"
                               + (f" (got {' and '.join(given)})" if given else ""))
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        report = journal.archive(directory, before=before, keep_last=keep_last, keep_days=keep_days)
    if as_json:
        _emit_json(report.to_dict())
        return
    done = (f"archived {report.entries} entries ({report.bundles} bundles, {report.bytes} bytes"
            + (f", {report.bytes / report.entries:.1f} bytes/entry" if report.entries else "")
            + f") into {inert(report.directory)}")
    if report.completed_previous:
        done += "; completed an interrupted run"
    click.echo(f"{done}; the store now starts at seq {report.live_first_seq}, the archive holds "
               f"{report.archived_entries} entries of this log")
