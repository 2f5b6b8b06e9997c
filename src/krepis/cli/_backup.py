"""``krepis backup`` and ``krepis restore``."""
from __future__ import annotations

from typing import Any

import click

from ..journal import SovereignJournal
from ._common import _READ_POLICY, _emit_json, _storage, _storage_option, cli, inert, plural
from ._progress import _quiet_option, progress_bar
from ._tlog import _b64, _verifiers


def _summary(what: str, result: Any, as_json: bool, signatures: bool,
             extra: dict[str, Any] | None = None) -> None:
    if as_json:
        out = {"path": result.path, "entries": result.entries, "tree_size": result.tree_size,
               "root": _b64(result.root), "checkpoint": result.checkpoint, **(extra or {})}
        if signatures:
            out.update(signed_size=result.signed_size, signed_origin=result.signed_origin,
                       unsigned=result.unsigned)
        _emit_json(out)
        return
    click.echo(f"{what} {inert(result.path)}: {result.entries} entries, tree of {result.tree_size} "
               f"leaves (root {_b64(result.root)}), verified")
    if signatures:
        click.echo(_proved(result))


def _proved(result: Any) -> str:
    """What the signatures prove, in one line."""
    size, total = result.signed_size, result.tree_size
    if result.signed_origin is not None:
        origin = inert(result.signed_origin)
        if result.unsigned == 0:
            return f"signed: the checkpoint of {origin} covers all {total} leaves"
        covered = f"leaves 0–{size - 1}" if size else "no leaf"
        return (f"signed: the checkpoint of {origin} covers {covered} ({size} of {total}); the "
                f"{result.unsigned} leaves after it are covered by no signature")
    if result.checkpoint is not None:
        return ("no signature checked (give --vkey): the newest checkpoint matches the tree, but "
                f"nothing proves who wrote any of the {total} leaves")
    return f"no signature checked (no checkpoint kept): nothing proves who wrote any of the {total} leaves"

@cli.command()
@click.argument("destination", metavar="DEST")
@click.option("--archive-to", "archive_to", metavar="DIR", default=None,
              help="Copy the store's archive into DIR (new or empty) too, and make it the copy's.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_quiet_option
@_storage_option
@click.pass_context
def backup(ctx: click.Context, destination: str, archive_to: str | None, as_json: bool) -> None:
    """Copy the store into DEST while writers keep writing.

    The copy is consistent (one read transaction), made durable, and verified
    (every entry, index and the Merkle tree) before this returns. Archived entries are not in
    DEST: with --archive-to DIR the archive is copied into DIR (each file checked against its
    manifest), recorded as the copy's archive and verified against the copy's tree; without
    it they stay in the archive directory, which the copy records too, and the output says so.
    PostgreSQL journals are backed up with pg_dump or pg_basebackup (docs/operations.md).
    """
    from ..journal._backup import backup as run_backup

    with progress_bar(ctx, "copying") as bar:
        result = run_backup(_storage(ctx), destination, archive_to=archive_to,
                            progress=bar.then("verifying the copy"),
                            archive_progress=bar.then("verifying the archive"))
    directory = result.archive
    if result.archived and directory is None:
        with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
            directory = journal.get_archive_dir()
    if as_json:
        _summary("backed up to", result, as_json, signatures=False,
                 extra={"archived_not_copied": 0 if result.archive else result.archived,
                        "archive": directory, "archive_copied": result.archive is not None})
        return
    _summary("backed up to", result, as_json, signatures=False)
    if result.archive is not None:
        click.echo(f"archive copied to {inert(result.archive)} and verified: the backup's "
                   f"{plural(result.archived, 'archived entry', 'archived entries')} of this log are there")
    elif result.archived:
        click.echo(f"not in this backup: {plural(result.archived, 'archived entry', 'archived entries')} "
                   f"of this log, in {inert(directory or '(no archive recorded)')} — back that directory "
                   "up too (--archive-to DIR; docs/operations.md)")

@cli.command()
@click.argument("source", metavar="SRC")
@click.option("--force", is_flag=True, help="Replace the store at --storage (no process may have it open).")
@click.option("--vkey", "vkeys", multiple=True, metavar="FILE",
              help="Check the backup's newest checkpoint with this verifier key first.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_quiet_option
@_storage_option
@click.pass_context
def restore(ctx: click.Context, source: str, force: bool, vkeys: tuple[str, ...], as_json: bool) -> None:
    """Verify the backup SRC, then make it the store at --storage.

    A copy of the backup is checked first (entries, indexes, Merkle tree, every kept checkpoint
    against the tree; with --vkey, the newest checkpoint's signature, which must verify), then
    brought into place; a store already there is replaced only with --force. The output says
    what the signatures prove: the leaves the newest checked checkpoint covers, and how many
    after it no signature covers.
    """
    from ..storage import restore as run_restore

    keys = list(_verifiers(vkeys))
    with progress_bar(ctx, "verifying and restoring"):
        result = run_restore(source, _storage(ctx), force=force, verifiers=keys)
    _summary("restored into", result, as_json, signatures=True)
