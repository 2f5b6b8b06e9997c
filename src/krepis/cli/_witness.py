"""``krepis witness serve | status`` and ``krepis tlog watch``: a witness that cosigns logs'
checkpoints only when they are consistent with what it saw, and a monitor that follows a log."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from .._errors import CorruptStorageError, JournalError, ValidationError
from ..journal import SovereignJournal
from ..tlog._cosig import Cosigner, CosignerKey
from ..tlog._monitor import Alarm, MonitorState
from ..tlog._note import NoteError, Verifier
from ..tlog._witness import COSIGNED_OP, MAX_BODY, Refusal, Witness
from ._common import _emit_json, cli, inert
from ._tlog import _key_text, _read_text, _utc, _verifiers, tlog
from ._tlog_serve import Reply, TileServer

#: where a witness keeps its journal and lock file unless told otherwise
DEFAULT_STATE = os.path.join(".krepis", "witness")


def _state_dir(path: str) -> tuple[str, str]:
    """The witness's journal and lock file in the directory ``path`` (made, mode 0700, if missing)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot make the witness's directory {path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise click.ClickException(f"{path} is not a directory")
    return os.path.join(path, "journal"), os.path.join(path, "lock")


def _cosigner(path: str) -> Cosigner:
    try:
        return Cosigner.parse(_read_text(path, "the witness key"))
    except NoteError as exc:
        raise click.ClickException(f"{path}: {exc}") from None


def _listen(listen: str) -> tuple[str, int]:
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    return host or "127.0.0.1", int(port_text)


def witness_handlers(witness: Witness, log: Callable[[str], None]) -> tuple[
        Callable[[str], Reply], Callable[[str, bytes], Reply]]:
    """What ``krepis witness serve`` answers: ``POST /add-checkpoint`` (C2SP tlog-witness) —
    200 with the cosignature line, or the spec's status with a plain-text reason (409 with the
    ``text/x.tlog.size`` body) — and 404/405 for anything else."""

    def get(path: str) -> Reply:
        if path == "/add-checkpoint":
            return Reply(405, b"add-checkpoint is a POST\n", headers=(("Allow", "POST"),))
        return Reply.text(404, "not found: a witness answers POST /add-checkpoint")

    def post(path: str, body: bytes) -> Reply:
        if path != "/add-checkpoint":
            return Reply.text(404, "not found: a witness answers POST /add-checkpoint")
        try:
            done = witness.add_checkpoint(body)
        except Refusal as exc:
            log(f"krepis witness: {exc.status}: {inert(str(exc))[:300]}")
            if exc.status == 409 and exc.size is not None:
                return Reply(409, f"{exc.size}\n".encode(), "text/x.tlog.size")
            return Reply.text(exc.status, str(exc))
        except CorruptStorageError as exc:
            log(f"krepis witness: {inert(str(exc))}")
            return Reply.text(500, str(exc))
        except JournalError as exc:
            log(f"krepis witness: {inert(str(exc))}")
            return Reply.text(503, f"{exc}; try again")
        log(f"krepis witness: cosigned {inert(done.checkpoint.origin)[:200]} at tree size "
            f"{done.checkpoint.size}")
        return Reply(200, done.line.encode())

    return get, post


@cli.group()
def witness() -> None:
    """Run a witness: cosign logs' consistent checkpoints.

    A C2SP tlog witness: it cosigns each log's checkpoint only when it is consistent with the
    last one it cosigned."""


@witness.command("serve")
@click.option("--key", "key_file", required=True, metavar="FILE",
              help="The witness's key (krepis keygen NAME --witness --key FILE).")
@click.option("--log", "log_keys", multiple=True, required=True, metavar="VKEY",
              help="The verifier key of a log to witness (file or the key itself; its name is the log's "
                   "origin). Repeat for each log; several keys may name one origin.")
@click.option("--listen", default="127.0.0.1:8081", show_default=True, metavar="HOST:PORT",
              help="Address to serve on.")
@click.option("--state", "state", default=DEFAULT_STATE, show_default=True, metavar="DIR",
              help="Where the witness keeps its journal (DIR/journal, a krepis store) and lock file; "
                   "every witness process of one key must use the same DIR.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True, metavar="SECONDS",
              help="Time a client has to send its request, and again to take the response.")
@click.option("--max-connections", type=click.IntRange(min=1, max=4096), default=256, show_default=True,
              metavar="N", help="Open connections at most; at the cap a new one closes the oldest.")
def witness_serve(key_file: str, log_keys: tuple[str, ...], listen: str, state: str, timeout: float,
                  max_connections: int) -> None:
    """Serve the witness over HTTP (Ctrl-C stops).

    Answers POST /add-checkpoint (C2SP tlog-witness) with cosignature/v1 cosignatures.

    A checkpoint is cosigned only when signed by a log's key and consistent with the latest one
    this witness cosigned for its origin (the request's old size and consistency proof). Each
    cosignature is an entry of the witness's own journal, durable before the answer: checking
    and recording happen under one lock, so concurrent requests — from any process sharing DIR —
    can never roll the witness back.
    """
    _witness_serve(key_file, log_keys, listen, state, timeout, max_connections)


def _witness_serve(key_file: str, log_keys: tuple[str, ...], listen: str, state: str, timeout: float,
                   max_connections: int) -> None:
    """The body of ``krepis witness serve`` (a plain function, so that mutation testing reaches it)."""
    key = _cosigner(key_file)
    logs = _verifiers(log_keys)
    address = _listen(listen)
    store, lock = _state_dir(state)
    journal = SovereignJournal(store, flush="sync", retention="off")
    try:
        core = Witness(key, logs, journal, lock)
    except (ValidationError, JournalError):
        journal.close()
        raise

    def log(line: str) -> None:
        click.echo(line, err=True)

    get, post = witness_handlers(core, log)
    try:
        server = TileServer(address, get, post=post, max_body=MAX_BODY, max_connections=max_connections,
                            timeout=timeout, log=log)
    except OSError as exc:
        core.close()
        journal.close()
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    host, port = server.address
    click.echo(f"witness {key.verifier()} serving http://{host!s}:{port}/add-checkpoint for "
               f"{', '.join(inert(o) for o in core.origins)} (Ctrl-C to stop)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        core.close()
        journal.close()


@witness.command("status")
@click.option("--state", "state", default=DEFAULT_STATE, show_default=True, metavar="DIR",
              help="The witness's directory (as given to witness serve).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per log.")
def witness_status(state: str, as_json: bool) -> None:
    """Show the latest checkpoint cosigned for each log.

    Per log: its origin, the tree size, when it was cosigned, and the seq of the entry of the
    witness's own journal that records it (krepis prove SEQ --storage STATE/journal proves it)."""
    _witness_status(state, as_json)


def _witness_status(state: str, as_json: bool) -> None:
    """The body of ``krepis witness status`` (a plain function, so that mutation testing reaches it)."""
    store = os.path.join(state, "journal")
    seen: set[str] = set()
    with SovereignJournal(store, create=False, flush="sync", retention="off") as journal:
        for entry in journal.iter_logs(op_name=COSIGNED_OP):
            if entry.request_id in seen:
                continue
            seen.add(entry.request_id)
            lines = (entry.error or "").split("\n")
            size = lines[1] if len(lines) > 2 else "?"
            if as_json:
                _emit_json({"origin": entry.request_id, "tree_size": int(size) if size.isdigit() else None,
                            "seq": entry.seq, "cosigned_at_ms": entry.timestamp, "note": entry.error})
            else:
                when = _utc(entry.timestamp // 1000)
                click.echo(f"{inert(entry.request_id)}\ttree size {size}\tcosigned {when}\t"
                           f"witness journal seq {entry.seq}")
    if not seen and not as_json:
        click.echo("the witness has cosigned nothing yet", err=True)


# -- the monitor -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _state_lock(path: str) -> Iterator[None]:
    """One monitor per state file: an exclusive flock on ``FILE.lock``, or an error at once."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"another monitor uses {path} (its lock {path}.lock is held)") \
                from None
        yield
    finally:
        os.close(fd)


def _entry_json(index: int, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
        if isinstance(value, dict):
            return {"index": index, "entry": value}
    except (UnicodeDecodeError, ValueError):
        pass
    return {"index": index, "data": base64.b64encode(data).decode()}


def _alarm(alarm: Alarm) -> None:
    _emit_json({"alarm": alarm.kind, "message": alarm.message, "checkpoints": list(alarm.checkpoints)})
    sys.stdout.flush()
    click.echo(f"krepis: ALARM: {inert(alarm.message)}", err=True)
    for note in alarm.checkpoints:
        click.echo("\n".join("  " + inert(line) for line in note.rstrip("\n").split("\n")), err=True)


@tlog.command("watch")
@click.argument("url")
@click.option("--vkey", "vkeys", multiple=True, required=True, metavar="FILE",
              help="The log's verifier key (file or the key itself).")
@click.option("--witness-vkey", "witness_vkeys", multiple=True, metavar="FILE",
              help="A witness's key: a checkpoint is accepted only with a quorum of their cosignatures.")
@click.option("--quorum", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --witness-vkey: cosignatures needed (default: every witness given).")
@click.option("--state", "state_file", default=None, metavar="FILE",
              help="Keep the last verified checkpoint (and the tree's edge) in FILE, durably, and start "
                   "from it (default: start from the first entry, keep nothing).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              metavar="SECONDS", help="Time between two fetches of the checkpoint.")
@click.option("--once", is_flag=True, help="Check the log once and exit (0 when it is consistent).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, metavar="SECONDS",
              help="Time each fetch has.")
def tlog_watch(url: str, vkeys: tuple[str, ...], witness_vkeys: tuple[str, ...], quorum: int | None,
               state_file: str | None, interval: float, once: bool, timeout: float) -> None:
    """Follow a tiles log: check and print every new entry.

    Follows the tiles log at URL (krepis tlog serve, or any C2SP tiles log): verifies every new
    checkpoint and every new entry against the tree, and prints each new entry as a JSON line.

    Each new checkpoint must carry the log's signature (and a quorum of witness cosignatures
    with --witness-vkey), and the new entries, appended to the tree of the last checkpoint,
    must give its root. Entries are printed only once the whole step verified, at least once
    (the state is saved after they are printed). When the log contradicts itself — a smaller
    tree, another root, entries that do not lead to the new root — the monitor prints an alarm
    (a JSON line {"alarm": …} naming both signed checkpoints: the proof of misbehaviour, also on
    stderr) and exits with status 3. A log that cannot be reached, or a checkpoint that does not
    verify, is a warning on stderr (with --once: status 1); the watch goes on.
    """
    _tlog_watch(url, vkeys, witness_vkeys, quorum, state_file, interval, once, timeout)


def _tlog_watch(url: str, vkeys: tuple[str, ...], witness_vkeys: tuple[str, ...], quorum: int | None,
                state_file: str | None, interval: float, once: bool, timeout: float) -> None:
    """The body of ``krepis tlog watch`` (a plain function, so that mutation testing reaches it)."""
    from ..tlog._http import reader
    from ..tlog._monitor import load_state

    logs = _verifiers(vkeys)
    witnesses = []
    for text in witness_vkeys:
        try:
            witnesses.append(CosignerKey.parse(_key_text(text)))
        except NoteError as exc:
            raise click.BadParameter(f"{text[:200]}: {exc}", param_hint="--witness-vkey") from None
    if quorum is not None and quorum > len(witnesses):
        raise click.BadParameter(f"{quorum} is more than the {len(witnesses)} --witness-vkey given",
                                 param_hint="--quorum")
    try:
        fetch = reader(url, timeout)
    except JournalError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    with contextlib.ExitStack() as stack:
        state = None
        if state_file is not None:
            stack.enter_context(_state_lock(state_file))
            state = load_state(state_file, logs)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the state is saved after each step
            _watch(fetch, state, state_file, logs, witnesses, quorum, interval, once)


def _watch(fetch: Callable[[str, int], bytes], state: MonitorState | None, state_file: str | None,
           logs: list[Verifier], witnesses: list[CosignerKey], quorum: int | None, interval: float,
           once: bool) -> None:
    from ..tlog._monitor import Advance, follow, save_state

    while True:
        try:
            step = follow(fetch, state, logs, witnesses, quorum)
        except (JournalError, OSError) as exc:
            click.echo(f"krepis: warning: {inert(str(exc))}", err=True)
            if once:
                sys.exit(1)
            time.sleep(interval)
            continue
        if isinstance(step, Alarm):
            _alarm(step)
            sys.exit(3)
        if isinstance(step, Advance):
            try:
                for index, data in step.entries():
                    _emit_json(_entry_json(index, data))
                sys.stdout.flush()
            finally:
                step.close()
            state = step.state
            if state_file is not None:
                save_state(state_file, state)
            click.echo(f"krepis: checkpoint of tree size {state.checkpoint.size} verified "
                       f"({step.count} new entries)", err=True)
        if once:
            return
        time.sleep(interval)
