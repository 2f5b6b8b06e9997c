"""``krepis backup`` and ``krepis restore``."""
from __future__ import annotations

from typing import Any

import click

from ._common import _emit_json, _storage, _storage_option, cli
from ._tlog import _b64, _verifiers


def _summary(what: str, result: Any, as_json: bool) -> None:
    if as_json:
        _emit_json({"path": result.path, "entries": result.entries, "tree_size": result.tree_size,
                    "root": _b64(result.root), "checkpoint": result.checkpoint})
    else:
        click.echo(f"{what} {result.path}: {result.entries} entries, tree of {result.tree_size} leaves "
                   f"(root {_b64(result.root)}), verified")

@cli.command()
@click.argument("destination", metavar="DEST")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_storage_option
@click.pass_context
def backup(ctx: click.Context, destination: str, as_json: bool) -> None:
    """Copy the store into the new directory DEST while writers keep writing.

    The copy is consistent (one read transaction), made durable, and verified
    (every entry, index and the Merkle tree) before this returns. PostgreSQL journals are
    backed up with pg_dump or pg_basebackup (docs/operations.md).
    """
    from ..storage import backup as run_backup

    _summary("backed up to", run_backup(_storage(ctx), destination), as_json)

@cli.command()
@click.argument("source", metavar="SRC")
@click.option("--force", is_flag=True, help="Replace the store at --storage (no process may have it open).")
@click.option("--vkey", "vkeys", multiple=True, metavar="FILE",
              help="Check the backup's newest checkpoint with this verifier key first.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_storage_option
@click.pass_context
def restore(ctx: click.Context, source: str, force: bool, vkeys: tuple[str, ...], as_json: bool) -> None:
    """Verify the backup SRC, then make it the store at --storage.

    The backup is checked first (entries, indexes, Merkle tree, and its newest checkpoint —
    signature too with --vkey); a store already there is replaced only with --force.
    """
    from ..storage import restore as run_restore

    result = run_restore(source, _storage(ctx), force=force, verifiers=list(_verifiers(vkeys)))
    _summary("restored into", result, as_json)
