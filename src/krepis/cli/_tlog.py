"""``krepis keygen | checkpoint | prove | verify | tlog | backup | restore``: the journal as a
verifiable log, and copies of it that can be trusted."""

from __future__ import annotations

import base64
import datetime
import os
from typing import Any

import click

from .._errors import JournalError, ValidationError
from ..journal import SovereignJournal
from ..tlog import verify_consistency
from ..tlog._collect import QuorumError, WitnessAnswer, WitnessEndpoint
from ..tlog._cosig import Cosigner, CosignerKey, generate_cosigner
from ..tlog._note import (
    NoteError,
    Signer,
    Verifier,
    generate_signer,
    open_checkpoint,
    parse_checkpoint,
)
from ._common import _READ_POLICY, _emit_json, _storage, _storage_option, cli, inert, plural
from ._progress import _quiet_option, progress_bar
from ._select import _check_history, _history_options


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

def _read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise click.ClickException(f"cannot read {what} {path}: {reason}") from None

def _signer(path: str) -> Signer:
    try:
        return Signer.parse(_read_text(path, "the signer key"))
    except NoteError as exc:
        raise click.ClickException(f"{path}: {exc}") from None

def _verifiers(paths: tuple[str, ...]) -> list[Verifier]:
    out = []
    for path in paths:
        text = _read_text(path, "the verifier key") if os.path.exists(path) else path
        try:
            out.append(Verifier.parse(text))
        except NoteError as exc:
            raise click.ClickException(f"{path}: {exc}") from None
    return out

def _note_text(note: str) -> str:
    split = note.rfind("\n\n")
    if split < 0:
        raise ValidationError("not a signed note (no blank line before the signatures)")
    return note[:split + 1]

@cli.command()
@click.argument("origin")
@click.option("--key", "key_file", required=True, metavar="FILE",
              help="Where to write the signer (private) key; never overwritten, mode 0600.")
@click.option("--witness", "witness", is_flag=True,
              help="Make a witness's cosignature key (C2SP tlog-cosignature, type 0x04) named ORIGIN "
                   "instead of a log's key.")
def keygen(origin: str, key_file: str, witness: bool) -> None:
    """Make an Ed25519 key for signing checkpoints of ORIGIN.

    ORIGIN is the log's name, such as example.com/log.

    Writes the signer key (signed-note format, PRIVATE+KEY+…) to FILE and prints the verifier
    key — <name>+<key ID>+<key> — which verifiers and witnesses need, on one line. With
    --witness, the key is a witness's (krepis witness serve --key FILE), and the printed key is
    what logs and clients give as the witness's key.
    """
    signer: Signer | Cosigner
    try:
        signer = generate_cosigner(origin) if witness else generate_signer(origin)
    except NoteError as exc:
        raise click.BadParameter(str(exc), param_hint="ORIGIN") from None
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{key_file} exists; krepis never overwrites a key") from None
    except OSError as exc:
        raise click.ClickException(f"cannot create {key_file}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{signer}\n")
    click.echo(str(signer.verifier()))

@cli.command()
@click.option("--key", "key_file", required=True, metavar="FILE", help="The signer key (from keygen).")
@click.option("--witness", "witness_specs", multiple=True, metavar="NAME=URL:VKEY",
              help="A witness to cosign the checkpoint: a name for messages, its URL (it answers POST "
                   "URL/add-checkpoint) and, after the URL's last ':', its key (file or the key itself). "
                   "Repeat for each witness.")
@click.option("--quorum", type=click.IntRange(min=1), default=None, metavar="N",
              help="Cosignatures needed (default: every witness); fewer is an error and nothing is kept.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="Time the witnesses have, together, to answer.")
@click.option("--archive", "archive", metavar="DIR", default=None,
              help="Read archived entries from DIR when a witness's consistency proof needs them.")
@_storage_option
@click.pass_context
def checkpoint(ctx: click.Context, key_file: str, witness_specs: tuple[str, ...], quorum: int | None,
               timeout: float, archive: str | None) -> None:
    """Sign a checkpoint of the current tree, keep it, print it.

    A C2SP checkpoint of the journal's current tree, kept in the store.

    With --witness, the checkpoint is sent to every witness (in parallel, with a consistency
    proof from the size each cosigned last) and kept — with their cosignatures, as the
    checkpoint tlog export and tlog serve publish — only once a quorum cosigned it; each
    witness's answer is a line on stderr.
    """
    signer = _signer(key_file)
    if quorum is not None and not witness_specs:
        raise click.UsageError("--quorum needs --witness")
    witnesses = []
    for spec in witness_specs:
        try:
            witnesses.append(WitnessEndpoint.parse(spec, _key_text))
        except ValidationError as exc:
            raise click.BadParameter(str(exc), param_hint="--witness") from None
    if quorum is not None and quorum > len(witnesses):
        raise click.BadParameter(f"{quorum} is more than the {len(witnesses)} witness(es) given",
                                 param_hint="--quorum")
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        if not witnesses:
            click.echo(journal.sign_checkpoint(signer), nl=False)
            return
        try:
            result = journal.cosign_checkpoint(signer, witnesses, quorum=quorum, timeout=timeout,
                                               archive=archive)
        except QuorumError as exc:
            for answer in exc.answers:
                _said(answer)
            raise click.ClickException(f"{exc.summary}; nothing was kept") from None
        for answer in result.answers:
            _said(answer)
        click.echo(result.note, nl=False)

def _key_text(text: str) -> str:
    """A key given on the command line: the key itself, or a file holding it."""
    return _read_text(text, "the key") if os.path.exists(text) else text

def _said(answer: WitnessAnswer) -> None:
    if answer.cosignature is not None:
        click.echo(f"krepis: witness {answer.witness.label} cosigned ({_utc(answer.cosignature.timestamp)})",
                   err=True)
    else:
        click.echo(f"krepis: witness {answer.witness.label}: {answer.error}", err=True)

@cli.command()
@click.option("--vkey", "vkeys", multiple=True, metavar="FILE",
              help="A verifier key (file or the key itself): checkpoint signatures must verify. With "
                   "--vkey, verify needs --trusted.")
@click.option("--trusted", "trusted", metavar="FILE|DIR", default=None,
              help="The newest checkpoint you trust: a signed checkpoint you kept (krepis checkpoint "
                   "prints one), or a krepis tlog export directory (its checkpoint). Verify fails "
                   "unless today's log extends it. Needs --vkey.")
@click.option("--tlog", "tlog_dir", metavar="DIR|URL", default=None,
              help="Check an exported tiles tree in DIR, or a tiles log served at URL (krepis tlog "
                   "serve), instead of the store (needs --vkey).")
@click.option("--witness-vkey", "witness_vkeys", multiple=True, metavar="FILE",
              help="With --tlog: a witness's key (file or the key itself); the checkpoint is accepted "
                   "only with valid cosignatures of a quorum of these witnesses.")
@click.option("--quorum", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --witness-vkey: cosignatures needed (default: every witness given).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_history_options
@_quiet_option
@_storage_option
@click.pass_context
def verify(ctx: click.Context, vkeys: tuple[str, ...], trusted: str | None, tlog_dir: str | None,
           witness_vkeys: tuple[str, ...], quorum: int | None, as_json: bool, archive: str | None,
           live_only: bool) -> None:
    """Check the journal end to end; exit 1 naming what is wrong.

    Exits non-zero, naming the first bad entry, if anything was edited, deleted, reordered or
    inserted.

    Recomputes every leaf from the stored entries against the stored Merkle tree, checks every
    index row, and each kept checkpoint: its signature (with --vkey), its root against the
    tree, and its consistency with the next. With --vkey and --trusted, proves that today's log
    extends the checkpoint you trust — the store's own checkpoints prove nothing alone, since
    whoever can write the store can delete them.

    The archive is checked too when entries are archived (or --archive DIR is given): every
    file against the manifest's checksum, every archived entry against the Merkle tree.
    --live-only checks the store alone.
    """
    _check_history(archive, live_only)
    verifiers = _verifiers(vkeys)
    if trusted is not None and not verifiers:
        raise click.UsageError("--trusted needs --vkey: the checkpoint is only as good as its signature")
    trusted_note = None if trusted is None else _trusted_note(trusted)
    witnesses = _witness_keys(witness_vkeys, quorum, tlog_dir)
    if tlog_dir is not None:
        _verify_tlog(tlog_dir, verifiers, trusted, trusted_note, witnesses, quorum, as_json)
        return
    if verifiers and trusted_note is None:
        raise click.ClickException(
            "--vkey needs the newest checkpoint you trust: pass --trusted FILE (a signed checkpoint you "
            "kept: krepis checkpoint prints one) or --trusted DIR (a krepis tlog export directory). "
            "The checkpoints kept in the store prove nothing by themselves: whoever can write the store "
            "can delete them")
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal, \
            progress_bar(ctx, "verifying") as bar:
        if trusted_note is not None:
            try:
                proved = journal.verify_extends(trusted_note, verifiers, archive=archive, live_only=live_only)
            except NoteError as exc:
                raise click.ClickException(f"{trusted}: {exc}") from None
            entries, archived_entries, tree_size, root = (proved.entries, proved.archived, proved.tree_size,
                                                          proved.root)
            archived = None
            if not live_only and (archive is not None or archived_entries):
                bar.phase("verifying the archive")
                archived = journal.verify_archive(journal.check_archive(archive), progress=bar)
        else:
            report = journal.verify(archive=archive, live_only=live_only, progress=bar)
            entries, archived_entries, tree_size, root = (report.entries, report.archived, report.tree_size,
                                                          report.root)
            archived = report.archive
        head = journal.tree_head()
        bar.phase("checking the checkpoints")
        checked, earlier, others, unread = _check_checkpoints(journal, head.epoch, verifiers, archive,
                                                              live_only)
    out: dict[str, Any] = {"entries": entries, "tree_size": tree_size, "root": _b64(root),
                           "checkpoints": checked, "checkpoints_of_earlier_logs": earlier,
                           "checkpoints_of_other_keys": others, "checkpoints_needing_archive": unread,
                           "signatures_checked": bool(verifiers), "ok": True}
    out["archived_entries"] = archived_entries
    if trusted_note is not None:
        out["trusted"] = {"origin": proved.checkpoint.origin, "tree_size": proved.checkpoint.size}
    if archived is not None:
        out["archive"] = {"directory": archived.directory, "segments": archived.segments,
                          "bundles": archived.bundles, "entries": archived.entries}
    if as_json:
        _emit_json(out)
        return
    counted = f"{entries} entries" + (f" and {archived_entries} archived" if archived_entries else "")
    if trusted_note is not None:
        counted += (f", tree of {tree_size} leaves extends the trusted checkpoint of "
                    f"{proved.checkpoint.origin} (tree size {proved.checkpoint.size})")
    else:
        counted += f", tree of {tree_size} leaves"
    click.echo(f"ok: {counted}, {plural(checked, 'checkpoint')} consistent"
               + (f" ({others} of other keys: roots checked, signatures not)" if others else "")
               + (f" ({earlier} of logs before a clear not checkable)" if earlier else "")
               + (f" ({unread} of archived entries not checked: --live-only)" if unread else "")
               + ("" if verifiers else " (signatures not checked: pass --vkey and --trusted)")
               + ("" if archived is None else
                  f"; archive: {archived.entries} entries in {archived.bundles} bundles, "
                  f"{plural(archived.segments, 'segment')} match"))

def _witness_keys(texts: tuple[str, ...], quorum: int | None, tlog_dir: str | None) -> list[CosignerKey]:
    if (texts or quorum is not None) and tlog_dir is None:
        raise click.UsageError("--witness-vkey and --quorum check the checkpoint of --tlog DIR|URL")
    if quorum is not None and quorum > len(texts):
        raise click.BadParameter(f"{quorum} is more than the {len(texts)} --witness-vkey given",
                                 param_hint="--quorum")
    keys = []
    for text in texts:
        try:
            keys.append(CosignerKey.parse(_key_text(text)))
        except NoteError as exc:
            raise click.BadParameter(f"{text[:200]}: {exc}", param_hint="--witness-vkey") from None
    return keys

def _verify_tlog(tlog_dir: str, verifiers: list[Verifier], trusted: str | None, trusted_note: str | None,
                 witnesses: list[CosignerKey], quorum: int | None, as_json: bool) -> None:
    from ..tlog._http import reader
    from ..tlog._tiles import check_tiles

    if not verifiers:
        raise click.UsageError("--tlog needs --vkey: an exported tree is only as good as its signature")
    try:
        trusted_cp = None if trusted_note is None else open_checkpoint(trusted_note, verifiers)
    except NoteError as exc:
        raise click.ClickException(f"{trusted}: {exc}") from None
    try:
        read = reader(tlog_dir) if tlog_dir.startswith(("http://", "https://")) else None
        result = check_tiles(tlog_dir, verifiers, trusted=trusted_cp, read=read, witnesses=witnesses,
                             quorum=quorum)
    except (JournalError, OSError) as exc:
        raise click.ClickException(f"{tlog_dir}: {exc}") from None
    found: dict[str, Any] = {"tlog": tlog_dir, "origin": result.checkpoint.origin,
                             "tree_size": result.checkpoint.size, "root": _b64(result.checkpoint.root),
                             "tiles": result.tiles, "ok": True}
    if trusted_cp is not None:
        found["trusted"] = {"origin": trusted_cp.origin, "tree_size": trusted_cp.size}
    if witnesses:
        found["cosignatures"] = [{"witness": c.witness, "timestamp": c.timestamp}
                                 for c in result.cosignatures]
    if as_json:
        _emit_json(found)
        return
    cosigned = ", ".join(f"{c.witness} at {_utc(c.timestamp)}" for c in result.cosignatures)
    click.echo(f"ok: {result.entries} entries and {result.tiles} tiles match the checkpoint of "
               f"{result.checkpoint.origin} (tree size {result.checkpoint.size})"
               + ("" if trusted_cp is None else
                  f", which extends the trusted checkpoint (tree size {trusted_cp.size})")
               + ("" if not witnesses else f"; cosigned by {cosigned}"))

def _utc(timestamp: int) -> str:
    return f"{datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"

def _trusted_note(path: str) -> str:
    """The signed checkpoint in the file ``path``, or in ``path/checkpoint`` for a tlog export
    directory: a regular file (never a FIFO or device), at most 1 MiB of UTF-8."""
    from ..tlog._tiles import MAX_NOTE, read_regular

    file = os.path.join(path, "checkpoint") if os.path.isdir(path) else path
    try:
        return read_regular(file, MAX_NOTE).decode("utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{file}: the checkpoint is not UTF-8") from None
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from None

def _check_checkpoints(journal: SovereignJournal, epoch: int, verifiers: list[Verifier],
                       archive: str | None, live_only: bool) -> tuple[int, int, int, int]:
    """Every kept checkpoint of the current log against the tree (its root, and consistency
    with the one before): (how many, how many of earlier logs, how many of another origin than
    the verifiers' names — those are checked against the tree, their signatures not — and, with
    ``live_only``, how many were not checked because their root needs archived leaves)."""
    checked = earlier = others = archived = 0
    names = {v.name for v in verifiers}
    previous: tuple[int, bytes] | None = None
    kept = journal.checkpoints()
    size = journal.tree_head().size  # read after them: every kept checkpoint is of a tree no bigger
    for note_epoch, note in kept:
        if note_epoch != epoch:
            earlier += 1
            continue
        try:
            cp = parse_checkpoint(_note_text(note))
            if verifiers and cp.origin in names:  # the key's checkpoints: their signatures must verify
                cp = open_checkpoint(note, verifiers)
            elif verifiers:
                others += 1
        except ValidationError as exc:
            raise JournalError(f"a stored checkpoint is bad ({_described(note)}): {exc}") from None
        if cp.size > size:
            raise JournalError(f"the stored checkpoint of tree size {cp.size} is of a bigger tree than the "
                               f"journal's ({size} leaves): entries were removed")
        try:
            root = journal.tree_root(cp.size, archive=archive, live_only=live_only)
        except ValidationError:
            if not live_only:
                raise
            archived += 1  # its root needs archived leaves, which --live-only does not read
            continue
        if root != cp.root:
            raise JournalError(f"the stored checkpoint of tree size {cp.size} does not match the tree: "
                               f"an entry before seq {journal.tree_head().first_seq + cp.size} changed")
        if previous is not None:
            proof = journal.consistency_proof(previous[0], cp.size, archive=archive, live_only=live_only)
            if not verify_consistency(previous[0], cp.size, previous[1], cp.root, proof.path):
                raise JournalError(f"checkpoints of sizes {previous[0]} and {cp.size} are inconsistent")
        previous = (cp.size, cp.root)
        checked += 1
    return checked, earlier, others, archived


def _described(note: str) -> str:
    """A kept checkpoint as a person finds it: its origin and tree size, as far as they read."""
    lines = note.split("\n", 2)
    if len(lines) < 3:
        return "not a checkpoint"
    return f"origin {inert(lines[0][:100])!r}, tree size {inert(lines[1][:24])}"

@cli.group()
def tlog() -> None:
    """Publish the journal as C2SP tiles (files or HTTP)."""

@tlog.command("export")
@click.argument("directory", metavar="DIR")
@click.option("--key", "key_file", metavar="FILE", default=None,
              help="Sign a new checkpoint now (default: the latest kept checkpoint).")
@_history_options
@_storage_option
@click.pass_context
def tlog_export(ctx: click.Context, directory: str, key_file: str | None, archive: str | None,
                live_only: bool) -> None:
    """Write the log as static tiles into DIR.

    Writes DIR/checkpoint, hash tiles DIR/tile/<L>/<N>[.p/<W>] and entry bundles
    DIR/tile/entries/<N>[.p/<W>]; only what changed since the last export. Bundles of archived
    entries come from the archive the store records (or --archive)."""
    _check_history(archive, live_only)
    signer = _signer(key_file) if key_file else None
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        written = journal.export_tiles(directory, signer, archive=archive, live_only=live_only)
        published = parse_checkpoint(_note_text(_trusted_note(directory)))
        newer = journal.tree_head().size - published.size
    click.echo(f"{plural(written, 'file')} written to {directory}: the checkpoint of "
               f"{inert(published.origin)}, tree size {published.size}"
               + (f"; {plural(newer, 'newer entry', 'newer entries')} not in it (sign a checkpoint: "
                  "--key FILE)" if newer > 0 else ""), err=True)

@tlog.command("serve")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Address to serve on.")
@_history_options
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="Time a client has to send its request, and again to take the response.")
@click.option("--max-connections", type=click.IntRange(min=1, max=4096), default=256, show_default=True,
              metavar="N", help="Open connections at most; at the cap a new one closes the oldest.")
@_storage_option
@click.pass_context
def tlog_serve(ctx: click.Context, listen: str, archive: str | None, live_only: bool, timeout: float,
               max_connections: int) -> None:
    """Serve the log's tiles over HTTP (Ctrl-C stops).

    /checkpoint and /tile/…, straight from the store.

    The tiles and bundles of archived entries come from the archive the store records (or
    --archive), checked before the server starts; --live-only answers them 404. A fixed pool
    of threads answers; an idle client holds a connection (of at most N), not a thread, and
    only until the timeout. Errors are answered in plain text.
    """
    from ._tlog_serve import TileServer, tile_responder

    _check_history(archive, live_only)
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    journal = SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off")
    try:
        if not live_only:  # a missing archive, or one of another store, is refused now, not per request
            journal.check_archive(archive)
        server = TileServer((host or "127.0.0.1", int(port_text)),
                            tile_responder(journal, archive, live_only),
                            max_connections=max_connections, timeout=timeout)
    except OSError as exc:
        journal.close()
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    except BaseException:
        journal.close()
        raise
    bound_host, bound_port = server.address
    click.echo(f"serving http://{bound_host!s}:{bound_port}/checkpoint (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        journal.close()
