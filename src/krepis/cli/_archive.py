"""``krepis archive [DIR]``: move the journal's oldest entries into a compressed, verifiable
archive; ``krepis archive --set-dir DIR``: record where the store's archive is."""

from __future__ import annotations

import click

from ..journal import SovereignJournal
from ._common import _READ_POLICY, _emit_json, _storage, _storage_option, _TimeType, cli, inert
from ._progress import _quiet_option, progress_bar

__all__: list[str] = []


@cli.command()
@click.argument("directory", metavar="[DIR]", required=False)
@click.option("--before", metavar="TIME", type=_TimeType(), default=None,
              help="Archive every bundle whose entries are all older than TIME (the forms of "
                   "logs --since: ISO-8601, '30 days ago', Unix ms, @SECONDS).")
@click.option("--keep-last", metavar="N", type=click.IntRange(min=0), default=None,
              help="Keep at least the newest N entries in the store; archive the rest.")
@click.option("--keep-days", metavar="D", type=click.FloatRange(min=0, max=1_000_000), default=None,
              help="Keep the entries of the last D days (a number, may be fractional).")
@click.option("--set-dir", "set_dir", metavar="DIR", default=None,
              help="Archive nothing: record DIR as the store's archive (after moving it there), once "
                   "checked to hold every archived entry.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@_quiet_option
@_storage_option
@click.pass_context
def archive(ctx: click.Context, directory: str | None, before: int | None, keep_last: int | None,
            keep_days: float | None, set_dir: str | None, as_json: bool) -> None:
    """Move the oldest entries into a compressed, verifiable archive.

    The oldest entries go, in whole bundles of 256 in append order, into the archive DIR
    (zstd-compressed segments, a dictionary trained on this journal, a manifest with
    checksums) and remove them from the store.

    The store records DIR as its archive the first time (krepis stats shows it): later runs
    may leave DIR out, every reading command (logs, export, stats, verify, prove, tlog) reads
    archived entries from there, and another DIR is refused — one archive per store. To move
    the archive: stop archiving, move the directory, then `krepis archive --set-dir NEWDIR`.

    Each step is durable in DIR before any entry leaves the store; an interrupted run is
    completed by the next. Counters and the Merkle tree do not change: checkpoints and proofs
    keep working.
    """
    _archive(ctx, directory, before, keep_last, keep_days, set_dir, as_json)


def _archive(ctx: click.Context, directory: str | None, before: int | None, keep_last: int | None,
             keep_days: float | None, set_dir: str | None, as_json: bool) -> None:
    """The body of ``krepis archive`` (a plain function, which mutation testing can reach: mutmut
    does not mutate decorated functions)."""
    given = [name for name, value in (("--before", before), ("--keep-last", keep_last),
                                      ("--keep-days", keep_days)) if value is not None]
    if set_dir is not None:
        if given or directory is not None:
            raise click.UsageError("--set-dir records where the archive is and archives nothing: give it "
                                   "alone (without DIR, --before, --keep-last, --keep-days)")
        with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
            before_dir = journal.get_archive_dir()
            path = journal.set_archive_dir(set_dir)
            counts = journal.entry_counts()
        if as_json:
            _emit_json({"archive": path, "previous": before_dir, "archived_entries": counts.archived})
            return
        click.echo(f"the store at {inert(journal.path)} now records its archive at {inert(path)}"
                   + ("" if before_dir is None else f" (was {inert(before_dir)})")
                   + f"; it holds the {counts.archived} archived entries of the current log")
        return
    if len(given) != 1:
        raise click.UsageError("give exactly one of --before, --keep-last and --keep-days"
                               + (f" (got {' and '.join(given)})" if given else "")
                               + ", or --set-dir DIR")
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal, \
            progress_bar(ctx, "archiving") as bar:
        report = journal.archive(directory, before=before, keep_last=keep_last, keep_days=keep_days,
                                 progress=bar)
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
