"""``krepis du`` (what a store takes on disk) and ``krepis compact`` (give free pages back)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from rich.table import Table

from ._common import _READ_POLICY, _console, _emit_json, _storage, _storage_option, cli, inert
from ._progress import _quiet_option, progress_bar


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _lmdb_only(location: str, command: str) -> None:
    from ..storage.postgres import is_postgres_url

    if is_postgres_url(location):
        raise click.UsageError(f"krepis {command} works on LMDB stores; a PostgreSQL journal's space is "
                               "PostgreSQL's (VACUUM, pg_total_relation_size)")


def _archive_use(location: str) -> dict[str, Any] | None:
    """The archive the store records: its directory, the bytes its files take on disk (None when
    it is missing) and the current log's entries in it; None when the store records none."""
    from ..journal import SovereignJournal

    with SovereignJournal(location, create=False, flush=_READ_POLICY, retention="off") as journal:
        counts = journal.entry_counts()
    if counts.archive is None:
        return None
    try:
        with os.scandir(counts.archive) as found:
            size = sum(entry.stat(follow_symlinks=False).st_blocks * 512 for entry in found
                       if entry.is_file(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        size = None
    return {"directory": counts.archive, "bytes": size, "entries": counts.archived}


@cli.command("du")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object (bytes).")
@_storage_option
@click.pass_context
def du(ctx: click.Context, as_json: bool) -> None:
    """Show what the store and its archive take on disk.

    data.mdb and its free pages, the commit log and its state, the lock table; and the archive
    directory the store records, with how many entries it holds (a missing archive is shown as
    such, not an error: du reads no entry).

    Free pages are space LMDB reuses but never returns to the file system (after an archive
    or a clear, most of data.mdb may be free): krepis compact gives it back. Sizes are bytes
    allocated on disk."""
    from ..storage.lmdb import disk_use

    location = _storage(ctx)
    _lmdb_only(location, "du")
    use = disk_use(location)
    archive = _archive_use(location)
    if as_json:
        _emit_json({"storage": use.path, "data": use.data, "data_apparent": use.data_apparent,
                    "free": use.free, "log": use.log, "state": use.state, "lock": use.lock,
                    "total": use.total, "entries": use.entries, "archive": archive})
        return
    rows: list[tuple[str, int | None, str]] = [
            ("data.mdb", use.data, f"{use.entries:,} entries; {_size(use.free)} of it free pages"),
            ("commit.log", use.log, "writes LMDB has not applied yet, in a ring"),
            ("commit.state", use.state, "the log's head and durability marker"),
            ("lock.mdb", use.lock, "LMDB's lock table (no data)"),
            ("total", use.total, "the store")]
    if archive is not None:
        where = inert(archive["directory"])
        if archive["bytes"] is None:
            rows.append(("archive", None, f"{archive['entries']:,} archived entries should be in {where}"))
        else:
            rows.append(("archive", archive["bytes"], f"{archive['entries']:,} archived entries in {where}"))
    piped = not sys.stdout.isatty()
    if piped:  # tab-separated, sizes in bytes ("missing" for an archive not there)
        click.echo(f"file\tbytes\twhat it is\t{inert(use.path)}")
        for name, size, what in rows:
            click.echo(f"{name}\t{'missing' if size is None else size}\t{what}")
    else:
        table = Table(title=inert(use.path), show_header=True, title_justify="left")
        table.add_column("file")
        table.add_column("on disk", justify="right")
        table.add_column("what it is")
        for name, size, what in rows:
            table.add_row(name, "missing" if size is None else _size(size), what)
        _console().print(table)
    if use.data and use.free * 4 > use.data:
        click.echo(f"{_size(use.free)} of data.mdb is free: krepis compact returns it to the file system",
                   err=piped)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_quiet_option
@_storage_option
@click.pass_context
def compact(ctx: click.Context, as_json: bool) -> None:
    """Give data.mdb's free pages back to the file system.

    Rewrites data.mdb without its free pages.

    Every entry, index row, tree node, counter and checkpoint is kept byte for byte; the copy
    is built beside the store, verified, and swapped in with one rename, so a crash at any point
    leaves the old store or the new one, never less. Stop every process using the store first
    (it is refused while one has it open)."""
    from ..storage.lmdb import compact as run_compact

    location = _storage(ctx)
    _lmdb_only(location, "compact")
    with progress_bar(ctx, "copying") as bar:
        result = run_compact(location, progress=bar.then("verifying the copy"))
    if as_json:
        _emit_json({"storage": result.path, "before": result.before, "after": result.after,
                    "entries": result.entries})
        return
    click.echo(f"compacted {inert(result.path)}: data.mdb {_size(result.before)} → {_size(result.after)} "
               f"({result.entries:,} entries kept)")
