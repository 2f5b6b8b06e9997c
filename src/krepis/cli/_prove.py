"""``krepis prove``: an inclusion proof for one entry (by SEQ) or for every entry of a request
(``--request-id``), or a consistency proof from an older checkpoint."""

from __future__ import annotations

from typing import Any

import click

from .._errors import ValidationError
from .._model import TransactionLog
from ..journal import SovereignJournal
from ..tlog import verify_consistency
from ..tlog._note import NoteError, open_checkpoint, parse_checkpoint
from ._common import _READ_POLICY, _emit_json, _reader_gone, _storage, _storage_option, cli, inert
from ._find import resolve_requests
from ._select import _check_history, _history_options, _Selection
from ._tlog import _b64, _note_text, _read_text, _verifiers

__all__: list[str] = []


@cli.command()
@click.argument("seq", type=int, required=False)
@click.option("--request-id", "request_id", metavar="ID", default=None,
              help="Prove every entry of this request (its id, or a prefix no other request id has): "
                   "one JSON line per entry, oldest first.")
@click.option("--tree-size", type=int, default=None, metavar="N",
              help="Prove against the tree of N leaves (default: the latest checkpoint's).")
@click.option("--consistency", "old_file", metavar="OLD_CHECKPOINT_FILE", default=None,
              help="Instead: prove that this older checkpoint's tree is a prefix of today's.")
@click.option("--vkey", "vkeys", multiple=True, metavar="FILE",
              help="A verifier key (file or the key itself): the old checkpoint's signature, by the key "
                   "named as its origin, and the latest checkpoint's must verify.")
@_history_options
@_storage_option
@click.pass_context
def prove(ctx: click.Context, seq: int | None, request_id: str | None, tree_size: int | None,
          old_file: str | None, vkeys: tuple[str, ...], archive: str | None, live_only: bool) -> None:
    """Print an inclusion or a consistency proof (JSON).

    An inclusion proof for entry SEQ, or — with --request-id — for every entry of a request,
    one JSON line each (the entries in time order; krepis logs --json shows their seq). Each
    proof holds the entry's stored form, its leaf hash, the path and the root (base64), and is
    against the latest checkpoint kept for the current log (part of the output), or the current
    tree when there is none or --tree-size is given. An entry the checkpoint does not cover is
    an error, and nothing is printed: sign a newer checkpoint (krepis checkpoint) first.

    With --consistency, the old checkpoint's signature and origin are checked first with
    --vkey; without it no signature is checked, and the output says so ("signature_checked":
    false, and a line on stderr). An archived entry (or leaf) is read from the archive the
    store records.
    """
    _check_history(archive, live_only)
    if sum(x is not None for x in (seq, request_id, old_file)) != 1:
        raise click.UsageError("give SEQ, --request-id ID or --consistency OLD_CHECKPOINT_FILE")
    verifiers = _verifiers(vkeys)
    old = None
    if old_file is not None:  # checked before the store is even opened
        old_note = _read_text(old_file, "the old checkpoint")
        try:
            old = open_checkpoint(old_note, verifiers) if verifiers else \
                parse_checkpoint(_note_text(old_note))
        except ValidationError as exc:
            raise click.ClickException(f"{old_file}: {exc}") from None
        if not verifiers:
            click.echo(f"krepis: the signature of {old_file} was not checked (no --vkey): the proof shows "
                       "only that its tree is a prefix of today's", err=True)
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        note = journal.latest_checkpoint()
        head = journal.tree_head()
        if note is not None and verifiers:
            try:
                open_checkpoint(note, verifiers)
            except NoteError as exc:
                raise click.ClickException(f"the journal's latest checkpoint: {exc}") from None
        size = head.size
        if old is not None:  # to the current tree
            if note is not None and parse_checkpoint(_note_text(note)).size != size:
                note = None
        elif tree_size is not None:
            size, note = tree_size, None
        elif note is not None:
            size = parse_checkpoint(_note_text(note)).size
        if old is not None:
            if old.size > size:
                raise click.ClickException(
                    f"{old_file}: its tree of {old.size} leaves is bigger than the journal's ({size}): "
                    "entries were removed, or it is a checkpoint of another log")
            cproof = journal.consistency_proof(old.size, size, archive=archive, live_only=live_only)
            if cproof.old_root != old.root or not verify_consistency(
                    old.size, size, old.root, cproof.new_root, cproof.path):
                raise click.ClickException(
                    f"{old_file}: its root for tree size {old.size} is not this journal's; the log it "
                    "signed is not a prefix of this one")
            _emit_json({"old_size": old.size, "new_size": size, "old_root": _b64(cproof.old_root),
                        "new_root": _b64(cproof.new_root), "proof": [_b64(p) for p in cproof.path],
                        "checkpoint": note, "signature_checked": bool(verifiers)})
            return
        if request_id is not None:
            _prove_request(journal, request_id, size, note, archive, live_only)
            return
        assert seq is not None
        if note is not None and head.first_seq + size <= seq < head.first_seq + head.size:
            raise click.ClickException(
                f"entry {seq} is newer than the latest checkpoint (tree size {size}, entries "
                f"{head.first_seq}…{head.first_seq + size - 1}): sign a newer one first (krepis "
                f"checkpoint --key FILE), or prove it against the unsigned current tree with "
                f"--tree-size {head.size}")
        _emit_json(_inclusion(journal, None, seq, size, note, archive, live_only))


def _inclusion(journal: SovereignJournal, entry: TransactionLog | None, seq: int, size: int,
               note: str | None, archive: str | None, live_only: bool) -> dict[str, Any]:
    proof = journal.inclusion_proof(seq, tree_size=size, archive=archive, live_only=live_only)
    if entry is None:  # (after the proof: a seq outside the tree is its error, not a KeyError)
        entry = journal.entry(seq, archive=archive, live_only=live_only)
    return {"seq": seq, "index": proof.index, "tree_size": proof.tree_size,
            "leaf_hash": _b64(proof.leaf_hash), "entry": entry.to_json(),
            "proof": [_b64(p) for p in proof.path], "root": _b64(proof.root),
            "checkpoint": note}


def _prove_request(journal: SovereignJournal, request_id: str, size: int, note: str | None,
                   archive: str | None, live_only: bool) -> None:
    """One proof line per entry of the request, once every entry is known to be covered."""
    found, misses = resolve_requests(journal, _Selection(request_ids=(request_id,), archive=archive,
                                                         live_only=live_only), globs=False)
    if found is None:
        raise click.ClickException(misses[0].removeprefix("krepis: "))
    rid = found.request_ids[0]
    first = journal.tree_head().first_seq
    # First pass: every entry must be in the tree proved against (nothing partial is printed).
    for entry in journal.iter_logs(request_id=rid, newest_first=False, archive=archive, live_only=live_only):
        assert entry.seq is not None
        if entry.seq - first >= size:
            what = "the latest checkpoint" if note is not None else "the tree"
            raise click.ClickException(
                f"entry {entry.seq} of request {inert(rid)} is not in {what} (tree size {size}): sign a "
                "newer checkpoint (krepis checkpoint --key FILE) or give --tree-size")
    for entry in journal.iter_logs(request_id=rid, newest_first=False, archive=archive, live_only=live_only):
        assert entry.seq is not None
        _emit_json(_inclusion(journal, entry, entry.seq, size, note, archive, live_only))
        if _reader_gone():
            return
