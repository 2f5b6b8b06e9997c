"""``krepis.cli._witness``'s helpers in-process: the witness's directory and key, ``--listen``'s
every edge, the HTTP handlers of ``witness serve`` (each answer and log line, word for word:
cosigned, each refusal, 409 with its size, a damaged or busy journal), the monitor's lock, how an
entry is printed, the alarm on stdout and stderr, and the watch loop over a real journal's tile
responder (``--once``, a warning and status 1, an alarm and status 3, the state kept, the waits
between fetches)."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from krepis import CorruptStorageError, JournalError, LogStatus, SovereignJournal, TransactionLog
from krepis.cli import _witness, cli
from krepis.cli._tlog_serve import Reply, TileServer, tile_responder
from krepis.cli._witness import (
    DEFAULT_STATE,
    _alarm,
    _cosigner,
    _entry_json,
    _listen,
    _state_dir,
    _state_lock,
    _watch,
    witness_handlers,
)
from krepis.tlog import Checkpoint, generate_cosigner, generate_signer
from krepis.tlog._monitor import Alarm, load_state
from krepis.tlog._note import format_checkpoint, sign_note
from krepis.tlog._witness import COSIGNED_OP, Refusal, Witness

from conftest import script_sleeps

LOG = generate_signer("example.com/log")
WITNESS = generate_cosigner("witness.example/w1")
T0 = 1_700_000_000_000
Cap = pytest.CaptureFixture[str]


def _grow(journal: SovereignJournal, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        journal.log_transaction(TransactionLog(T0 + i, "op", f"r{i}", LogStatus.Completed))


def _note(journal: SovereignJournal, size: int) -> str:
    return sign_note(format_checkpoint(Checkpoint(LOG.name, size, journal.tree_root(size))), LOG)


def _body(journal: SovereignJournal, old: int, new: int) -> bytes:
    proof = journal.consistency_proof(old, new).path if old else []
    return ("".join(f"{line}\n" for line in [f"old {old}", *(base64.b64encode(h).decode() for h in proof)])
            + "\n" + _note(journal, new)).encode()


# -- the witness's directory, key and address ------------------------------------------------------

def test_default_state() -> None:
    assert DEFAULT_STATE == os.path.join(".krepis", "witness")


def test_state_dir_made_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "w"
    assert _state_dir(str(path)) == (str(path / "journal"), str(path / "lock"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert _state_dir(str(path)) == (str(path / "journal"), str(path / "lock"))  # (already there)


def test_state_dir_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(click.ClickException) as raised:
        _state_dir(str(tmp_path / "file" / "w"))
    assert raised.value.message == f"cannot make the witness's directory {tmp_path}/file/w: Not a directory"
    assert raised.value.__suppress_context__


def test_cosigner_key(tmp_path: Path) -> None:
    good = tmp_path / "w.key"
    good.write_text(str(WITNESS) + "\n")
    assert _cosigner(str(good)).name == WITNESS.name
    bad = tmp_path / "bad.key"
    bad.write_text("PRIVATE+KEY+nothing\n")
    with pytest.raises(click.ClickException) as raised:
        _cosigner(str(bad))
    assert raised.value.message.startswith(f"{bad}: ") and raised.value.__suppress_context__
    with pytest.raises(click.ClickException) as raised:
        _cosigner(str(tmp_path / "missing"))
    assert raised.value.message == (f"cannot read the witness key {tmp_path}/missing: "
                                    "No such file or directory")


@pytest.mark.parametrize(("listen", "address"), [
    ("127.0.0.1:8081", ("127.0.0.1", 8081)), ("[::1]:80", ("::1", 80)), (":0", ("127.0.0.1", 0)),
    ("example.com:65535", ("example.com", 65535)), ("[]:1", ("127.0.0.1", 1)), ("a:b:7", ("a:b", 7)),
    ("XhostX:5", ("XhostX", 5)),
])
def test_listen(listen: str, address: tuple[str, int]) -> None:
    assert _listen(listen) == address


@pytest.mark.parametrize("listen", ["h:65536", "h:-1", "h:", "h", "h:\u0663", "h:\u00b2", "h: 8"])
def test_listen_refused(listen: str) -> None:
    with pytest.raises(click.BadParameter) as raised:
        _listen(listen)
    assert raised.value.format_message() == f"Invalid value for --listen: {listen!r} is not HOST:PORT"


# -- the handlers --------------------------------------------------------------------------------------

@pytest.fixture
def log(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "log", flush="interval:1000ms") as journal:
        _grow(journal, 20)
        journal.flush()
        yield journal


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[Witness]:
    (tmp_path / "w").mkdir()
    journal = SovereignJournal(tmp_path / "w" / "journal", retention="off")
    core = Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "w" / "lock"))
    try:
        yield core
    finally:
        core.close()
        journal.close()


def test_get(witness: Witness) -> None:
    get, _ = witness_handlers(witness, print)
    assert get("/add-checkpoint") == Reply(405, b"add-checkpoint is a POST\n", headers=(("Allow", "POST"),))
    assert get("/") == Reply(404, b"not found: a witness answers POST /add-checkpoint\n")


def test_post_cosigns_and_logs_it(witness: Witness, log: SovereignJournal) -> None:
    lines: list[str] = []
    _, post = witness_handlers(witness, lines.append)
    not_found = Reply(404, b"not found: a witness answers POST /add-checkpoint\n")
    assert post("/other", _body(log, 0, 5)) == not_found
    reply = post("/add-checkpoint", _body(log, 0, 5))
    assert reply.status == 200 and reply.content_type == "text/plain; charset=utf-8" and reply.headers == ()
    assert reply.body.decode().startswith(f"\u2014 {WITNESS.name} ") and reply.body.endswith(b"\n")
    assert lines == [f"krepis witness: cosigned {LOG.name} at tree size 5"]


def test_post_refusals(witness: Witness, log: SovereignJournal) -> None:
    lines: list[str] = []
    _, post = witness_handlers(witness, lines.append)
    assert post("/add-checkpoint", _body(log, 0, 5)).status == 200
    lines.clear()
    stale = post("/add-checkpoint", _body(log, 0, 7))  # the witness has seen 5: old must be 5
    assert stale == Reply(409, b"5\n", "text/x.tlog.size")
    [line] = lines
    assert line.startswith("krepis witness: 409: ")
    lines.clear()
    bad = post("/add-checkpoint", b"not a request")
    assert bad.status == 400 and bad.content_type == "text/plain; charset=utf-8"
    assert lines == [f"krepis witness: 400: {bad.body.decode().rstrip()}"]


class _Failing:
    """A witness whose every request ends in ``error`` (what a damaged or busy journal raises)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def add_checkpoint(self, body: bytes) -> None:
        raise self.error


@pytest.mark.parametrize(("error", "reply", "line"), [
    (Refusal(403, "no\x1b key"), Reply(403, b"no\x1b key\n"), "krepis witness: 403: no\\x1b key"),
    (Refusal(409, "behind"), Reply(409, b"behind\n"), "krepis witness: 409: behind"),
    (Refusal(409, "behind", 0), Reply(409, b"0\n", "text/x.tlog.size"), "krepis witness: 409: behind"),
    (Refusal(422, "x" * 400), Reply(422, b"x" * 400 + b"\n"), "krepis witness: 422: " + "x" * 300),
    (CorruptStorageError("damaged\x1b at /w"), Reply(500, b"damaged\x1b at /w\n"),
     "krepis witness: damaged\\x1b at /w"),
    (JournalError("busy\x1b"), Reply(503, b"busy\x1b; try again\n"), "krepis witness: busy\\x1b"),
])
def test_post_errors(error: Exception, reply: Reply, line: str) -> None:
    lines: list[str] = []
    _, post = witness_handlers(_Failing(error), lines.append)  # type: ignore[arg-type]
    assert post("/add-checkpoint", b"x") == reply
    assert lines == [line]


def test_the_cosigned_origin_is_logged_inert_and_cut(tmp_path: Path) -> None:
    name = "example.com/" + "\x9b" * 100
    signer = generate_signer(name)
    (tmp_path / "w").mkdir()
    with SovereignJournal(tmp_path / "log", flush="interval:1000ms") as log, \
            SovereignJournal(tmp_path / "w" / "journal", retention="off") as journal:
        _grow(log, 3)
        core = Witness(WITNESS, [signer.verifier()], journal, str(tmp_path / "w" / "lock"))
        try:
            lines: list[str] = []
            _, post = witness_handlers(core, lines.append)
            note = sign_note(format_checkpoint(Checkpoint(name, 3, log.tree_root(3))), signer)
            assert post("/add-checkpoint", f"old 0\n\n{note}".encode()).status == 200
        finally:
            core.close()
    assert lines == ["krepis witness: cosigned " + ("example.com/" + "\\x9b" * 100)[:200] + " at tree size 3"]


# -- the monitor ----------------------------------------------------------------------------------------

def test_state_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "s.json")
    old = os.umask(0)
    try:
        with _state_lock(path):
            assert stat.S_IMODE(os.stat(path + ".lock").st_mode) == 0o600
            with pytest.raises(click.ClickException) as raised, _state_lock(path):
                pass
            assert raised.value.message == f"another monitor uses {path} (its lock {path}.lock is held)"
            assert raised.value.__suppress_context__
    finally:
        os.umask(old)
    with _state_lock(path):  # released
        pass


def test_state_lock_refuses_a_link(tmp_path: Path) -> None:
    os.symlink(tmp_path / "elsewhere", tmp_path / "s.json.lock")
    with pytest.raises(OSError), _state_lock(str(tmp_path / "s.json")):
        pass
    assert not (tmp_path / "elsewhere").exists()


def test_state_lock_closes_its_descriptor(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with _state_lock(str(tmp_path / "s.json")):
        assert len(os.listdir("/proc/self/fd")) == before + 1
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(("data", "shown"), [
    (b'{"a":1}', {"index": 4, "entry": {"a": 1}}),
    (b"[1]", {"index": 4, "data": "WzFd"}),
    (b"\xff{}", {"index": 4, "data": "/3t9"}),
    (b"{nope", {"index": 4, "data": "e25vcGU="}),
])
def test_entry_json(data: bytes, shown: dict[str, object]) -> None:
    assert _entry_json(4, data) == shown


def test_alarm_prints_each_line_of_the_notes_as_it_is(capsys: Cap) -> None:
    _alarm(Alarm("rollback", "smaller", ("a b\nc \t\n", "c\nX\n")))
    assert capsys.readouterr().err == "krepis: ALARM: smaller\n  a b\n  c \\t\n  c\n  X\n"


def test_alarm(capsys: Cap) -> None:
    _alarm(Alarm("fork", "two \x1b roots", ("a\nb\x1b\n", "c\n")))
    out = capsys.readouterr()
    assert json.loads(out.out) == {"alarm": "fork", "message": "two \x1b roots",
                                   "checkpoints": ["a\nb\x1b\n", "c\n"]}
    assert out.out.count("\n") == 1
    assert out.err == "krepis: ALARM: two \\x1b roots\n  a\n  b\\x1b\n  c\n"


def _fetch(journal: SovereignJournal) -> Callable[[str, int], bytes]:
    """The monitor's fetch, answered by ``tlog serve``'s responder on ``journal`` (no sockets)."""
    respond = tile_responder(journal)

    def fetch(rel: str, limit: int) -> bytes:
        reply = respond("/" + rel)
        if reply.status != 200:
            raise OSError(f"GET {rel}: {reply.status}")
        return reply.body[:limit]
    return fetch



def _script(monkeypatch: pytest.MonkeyPatch, *steps: Callable[[], None]) -> list[float]:
    return script_sleeps(monkeypatch, _witness, *steps)


def test_watch_once(log: SovereignJournal, tmp_path: Path, capsys: Cap) -> None:
    log.sign_checkpoint(LOG)
    state_file = str(tmp_path / "s.json")
    _watch(_fetch(log), None, state_file, [LOG.verifier()], [], None, 5.0, True)
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert [line["index"] for line in lines] == list(range(20))
    assert lines[3] == {"index": 3, "entry": {"timestamp": T0 + 3, "op_name": "op", "request_id": "r3",
                                              "status": "Completed"}}
    assert out.err == "krepis: checkpoint of tree size 20 verified (20 new entries)\n"
    state = load_state(state_file, [LOG.verifier()])
    assert state is not None and state.checkpoint.size == 20
    # from the state kept: nothing new, nothing printed
    _watch(_fetch(log), state, state_file, [LOG.verifier()], [], None, 5.0, True)
    assert capsys.readouterr() == ("", "")


def test_watch_with_a_quorum_of_witnesses(log: SovereignJournal, capsys: Cap) -> None:
    note = log.sign_checkpoint(LOG)
    w1, w2 = generate_cosigner("w1.example"), generate_cosigner("w2.example")
    cosigned = note + w1.cosign(note.split("\n\n")[0] + "\n", 1_700_000_000)
    served = _fetch(log)

    def fetch(rel: str, limit: int) -> bytes:
        return cosigned.encode()[:limit] if rel == "checkpoint" else served(rel, limit)
    witnesses = [w1.verifier(), w2.verifier()]
    _watch(fetch, None, None, [LOG.verifier()], witnesses, 1, 5.0, True)  # type: ignore[list-item]
    assert capsys.readouterr().err == "krepis: checkpoint of tree size 20 verified (20 new entries)\n"
    with pytest.raises(SystemExit) as raised:  # every witness by default: one is not enough
        _watch(fetch, None, None, [LOG.verifier()], witnesses, None, 5.0, True)  # type: ignore[list-item]
    assert raised.value.code == 1 and "fewer than the quorum of 2" in capsys.readouterr().err


def test_watch_without_a_state_file(log: SovereignJournal, tmp_path: Path, capsys: Cap) -> None:
    log.sign_checkpoint(LOG)
    _watch(_fetch(log), None, None, [LOG.verifier()], [], None, 5.0, True)
    assert capsys.readouterr().err == "krepis: checkpoint of tree size 20 verified (20 new entries)\n"
    assert os.listdir(tmp_path) == ["log"]


def test_watch_goes_on_until_stopped(log: SovereignJournal, monkeypatch: pytest.MonkeyPatch,
                                     capsys: Cap) -> None:
    log.sign_checkpoint(LOG)

    def grow() -> None:
        _grow(log, 2, start=20)
        log.flush()
        log.sign_checkpoint(LOG)
    waits = _script(monkeypatch, grow, lambda: None)
    with pytest.raises(KeyboardInterrupt):
        _watch(_fetch(log), None, None, [LOG.verifier()], [], None, 7.5, False)
    out = capsys.readouterr()
    assert [json.loads(line)["index"] for line in out.out.splitlines()] == list(range(22))
    assert out.err == ("krepis: checkpoint of tree size 20 verified (20 new entries)\n"
                       "krepis: checkpoint of tree size 22 verified (2 new entries)\n")
    assert waits == [7.5, 7.5, 7.5]


def test_watch_warns_and_goes_on(log: SovereignJournal, monkeypatch: pytest.MonkeyPatch, capsys: Cap) -> None:
    waits = _script(monkeypatch, lambda: log.sign_checkpoint(LOG))  # no checkpoint yet: a 404
    with pytest.raises(KeyboardInterrupt):
        _watch(_fetch(log), None, None, [LOG.verifier()], [], None, 2.0, False)
    out = capsys.readouterr()
    assert out.err == ("krepis: warning: GET checkpoint: 404\n"
                       "krepis: checkpoint of tree size 20 verified (20 new entries)\n")
    assert len(out.out.splitlines()) == 20 and waits == [2.0, 2.0]


def test_watch_once_warns_with_status_1(log: SovereignJournal, capsys: Cap) -> None:
    with pytest.raises(SystemExit) as raised:
        _watch(_fetch(log), None, None, [LOG.verifier()], [], None, 2.0, True)
    assert raised.value.code == 1
    assert capsys.readouterr() == ("", "krepis: warning: GET checkpoint: 404\n")
    other = generate_signer(LOG.name)
    log.sign_checkpoint(other)
    with pytest.raises(SystemExit) as raised:
        _watch(_fetch(log), None, None, [LOG.verifier()], [], None, 2.0, True)
    assert raised.value.code == 1
    assert capsys.readouterr().err.startswith("krepis: warning: ")


def test_watch_alarm_with_status_3(log: SovereignJournal, tmp_path: Path, capsys: Cap) -> None:
    log.sign_checkpoint(LOG)
    state_file = str(tmp_path / "s.json")
    _watch(_fetch(log), None, state_file, [LOG.verifier()], [], None, 2.0, True)
    capsys.readouterr()
    state = load_state(state_file, [LOG.verifier()])
    with SovereignJournal(tmp_path / "forked", flush="interval:1000ms") as forked:  # another history
        for i in range(25):
            forked.log_transaction(TransactionLog(T0 + i, "op", f"x{i}", LogStatus.Completed))
        forked.flush()
        forked.sign_checkpoint(LOG)
        with pytest.raises(SystemExit) as raised:
            _watch(_fetch(forked), state, state_file, [LOG.verifier()], [], None, 2.0, True)
    assert raised.value.code == 3
    out = capsys.readouterr()
    alarm = json.loads(out.out)
    assert set(alarm) == {"alarm", "message", "checkpoints"} and len(alarm["checkpoints"]) == 2
    assert out.err.startswith(f"krepis: ALARM: {alarm['message']}\n")
    kept = load_state(state_file, [LOG.verifier()])
    assert kept is not None and kept.checkpoint.size == 20  # the alarm moved nothing


# -- the commands' bodies, in process ------------------------------------------------------------------

def _cli(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_witness_status(tmp_path: Path, log: SovereignJournal, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "w"
    state.mkdir()
    with SovereignJournal(state / "journal", retention="off") as journal:
        pass
    result = _cli("witness", "status", "--state", str(state))
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == "the witness has cosigned nothing yet\n"
    assert _cli("witness", "status", "--state", str(state), "--json").output == ""
    other = generate_signer("example.com/other")
    with SovereignJournal(state / "journal", retention="off") as journal:
        core = Witness(WITNESS, [LOG.verifier(), other.verifier()], journal, str(state / "lock"))
        try:
            core.add_checkpoint(_body(log, 0, 5))
            core.add_checkpoint(_body(log, 5, 12))
            note = sign_note(format_checkpoint(Checkpoint(other.name, 3, log.tree_root(3))), other)
            core.add_checkpoint(f"old 0\n\n{note}".encode())
        finally:
            core.close()
        cosigned = journal.query(op_name=COSIGNED_OP)  # newest first
        # records the status reads but cannot make sense of: shown, never a crash
        journal.log_transaction(TransactionLog(T0, COSIGNED_OP, "example.org/odd", LogStatus.Completed,
                                               error="example.org/odd\nnot a size\nroot\n"))
        journal.log_transaction(TransactionLog(T0 - 1000, COSIGNED_OP, "example.org/three",
                                               LogStatus.Completed, error="example.org/three\n7\nroot"))
        journal.log_transaction(TransactionLog(T0 - 2000, COSIGNED_OP, "example.org/none",
                                               LogStatus.Completed))
        journal.log_transaction(TransactionLog(T0 + 5000, "witness_other_op", "example.org/not-shown",
                                               LogStatus.Completed, error="x\n1\ny\n"))
        journal.log_transaction(TransactionLog(T0 + 1000, COSIGNED_OP, "example.org/short",
                                               LogStatus.Completed,
                                               error="example.org/short\n3"))
    monkeypatch.setenv("KREPIS_FLUSH", "whenever")
    monkeypatch.setenv("KREPIS_RETENTION", "keep-forever-please")
    result = _cli("witness", "status", "--state", str(state))
    assert (result.exit_code, result.stderr) == (0, "")
    lines = result.stdout.splitlines()  # the latest per origin, newest first
    assert len(lines) == 6
    assert lines[0].startswith("example.com/other\ttree size 3\tcosigned ")
    assert lines[1].startswith(f"{LOG.name}\ttree size 12\tcosigned ")
    assert lines[1].endswith(f"\twitness journal seq {cosigned[1].seq}")
    odd = cosigned[0].seq + 1
    assert lines[2] == ("example.org/short\ttree size ?\tcosigned 2023-11-14T22:13:21Z\t"
                        f"witness journal seq {odd + 4}")
    assert lines[3] == ("example.org/odd\ttree size not a size\tcosigned 2023-11-14T22:13:20Z\t"
                        f"witness journal seq {odd}")
    assert lines[4] == ("example.org/three\ttree size 7\tcosigned 2023-11-14T22:13:19Z\t"
                        f"witness journal seq {odd + 1}")
    assert lines[5] == ("example.org/none\ttree size ?\tcosigned 2023-11-14T22:13:18Z\t"
                        f"witness journal seq {odd + 2}")
    result = _cli("witness", "status", "--state", str(state), "--json")
    shown = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(s["origin"], s["tree_size"]) for s in shown] == [
        ("example.com/other", 3), (LOG.name, 12), ("example.org/short", None), ("example.org/odd", None),
        ("example.org/three", 7), ("example.org/none", None)]
    assert shown[5]["note"] is None
    assert shown[1] == {"origin": LOG.name, "tree_size": 12, "seq": cosigned[1].seq,
                        "cosigned_at_ms": cosigned[1].timestamp, "note": cosigned[1].error}


def test_witness_status_of_no_witness(tmp_path: Path) -> None:
    result = _cli("witness", "status", "--state", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert f"there is no krepis store at {tmp_path / 'none' / 'journal'}" in result.stderr
    assert not (tmp_path / "none").exists()


@pytest.fixture
def served(log: SovereignJournal) -> Iterator[str]:
    """``log`` served by ``tlog serve``'s server in a thread: its URL."""
    server = TileServer(("127.0.0.1", 0), tile_responder(log), timeout=5.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_tlog_watch(served: str, log: SovereignJournal, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    log.sign_checkpoint(LOG)
    vkey = str(LOG.verifier())
    state = str(tmp_path / "s.json")
    result = _cli("tlog", "watch", served, "--vkey", vkey, "--once", "--state", state)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 20
    assert result.stderr == "krepis: checkpoint of tree size 20 verified (20 new entries)\n"
    assert _cli("tlog", "watch", served, "--vkey", vkey, "--once", "--state", state).output == ""  # kept
    with _state_lock(state):
        result = _cli("tlog", "watch", served, "--vkey", vkey, "--once", "--state", state)
    assert result.exit_code == 1
    assert result.stderr == f"Error: another monitor uses {state} (its lock {state}.lock is held)\n"
    _script(monkeypatch, lambda: None)  # the second wait: Ctrl-C
    result = _cli("tlog", "watch", served, "--vkey", vkey, "--interval", "0.5")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 20


def test_tlog_watch_with_witnesses(log: SovereignJournal, tmp_path: Path) -> None:
    note = log.sign_checkpoint(LOG)
    w1, w2 = generate_cosigner("w1.example"), generate_cosigner("w2.example")
    cosigned = note + w1.cosign(note.split("\n\n")[0] + "\n", 1_700_000_000)
    respond = tile_responder(log)

    def responder(path: str) -> Reply:
        return Reply(200, cosigned.encode()) if path == "/checkpoint" else respond(path)
    server = TileServer(("127.0.0.1", 0), responder, timeout=5.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.address[1]}"
        (tmp_path / "w2.pub").write_text(f"{w2.verifier()}\n")
        keys = ["--witness-vkey", str(w1.verifier()), "--witness-vkey", str(tmp_path / "w2.pub")]
        result = _cli("tlog", "watch", url, "--vkey", str(LOG.verifier()), *keys, "--quorum", "1", "--once")
        assert result.exit_code == 0, result.output
        result = _cli("tlog", "watch", url, "--vkey", str(LOG.verifier()), *keys, "--once")
        assert result.exit_code == 1 and "fewer than the quorum of 2" in result.stderr
        result = _cli("tlog", "watch", url, "--vkey", str(LOG.verifier()), *keys, "--quorum", "2", "--once")
        assert result.exit_code == 1 and "fewer than the quorum of 2" in result.stderr  # (allowed: 2 of 2)
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_tlog_watch_refusals(tmp_path: Path) -> None:
    vkey = str(LOG.verifier())
    result = _cli("tlog", "watch", "http://127.0.0.1:9", "--vkey", vkey, "--witness-vkey", "x" * 300)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: Invalid value for --witness-vkey: {'x' * 200}: ")
    result = _cli("tlog", "watch", "http://127.0.0.1:9", "--vkey", vkey, "--quorum", "2",
                  "--witness-vkey", str(WITNESS.verifier()))
    assert result.exit_code == 2
    assert result.stderr == ("Error: Invalid value for --quorum: 2 is more than the 1 --witness-vkey given "
                             "(see cli tlog watch --help)\n")
    result = _cli("tlog", "watch", "http://127.0.0.1:9", "--vkey", vkey, "--quorum", "1")
    assert result.exit_code == 2 and "1 is more than the 0 --witness-vkey given" in result.stderr
    result = _cli("tlog", "watch", "ftp://example.com", "--vkey", vkey, "--once")
    assert result.exit_code == 2 and result.stderr.startswith("Error: Invalid value for URL: ")
    assert "is not an http:// or https:// URL" in result.stderr
    result = _cli("tlog", "watch", "http://127.0.0.1:9", "--vkey", vkey, "--once", "--state",
                  str(tmp_path / "s.json"))
    assert result.exit_code == 1 and result.stderr.startswith("krepis: warning: ")


def test_tlog_watch_timeout(tmp_path: Path) -> None:
    """A log that never answers: the fetch gives up after --timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # (connections wait in its backlog)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = _cli("tlog", "watch", url, "--vkey", str(LOG.verifier()), "--once", "--timeout", "0.2")
    assert result.exit_code == 1
    assert result.stderr == f"krepis: warning: GET {url}/checkpoint: no whole answer within 0.2 s\n"


def _serve_in_process(tmp_path: Path, log: SovereignJournal, *args: str, body: bytes | None = None,
                      then: Callable[[int], None] | None = None,
                      logs: tuple[str, ...] = ()) -> tuple[Result, list[tuple[int, bytes]]]:
    """``krepis witness serve`` run by CliRunner in this (the main) thread; a helper thread POSTs
    ``body`` (once the server answers) and then interrupts it with SIGINT, as Ctrl-C does."""
    import http.client
    import signal
    import time

    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    answers: list[tuple[int, bytes]] = []
    returned = threading.Event()  # the command ended (or never served): nothing to interrupt

    def post() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not returned.is_set():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("POST", "/add-checkpoint", body=body if body is not None else _body(log, 0, 5))
                reply = conn.getresponse()
                answers.append((reply.status, reply.read()))
                conn.close()
                break
            except OSError:
                time.sleep(0.05)
        try:
            if then is not None and answers:
                then(port)
        finally:
            if not returned.is_set():
                os.kill(os.getpid(), signal.SIGINT)

    key = tmp_path / "w.key"
    key.write_text(f"{WITNESS}\n")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        helper = threading.Thread(target=post, daemon=True)
        helper.start()
        keys = [arg for text in logs or (str(LOG.verifier()),) for arg in ("--log", text)]
        result = _cli("witness", "serve", "--key", str(key), *keys,
                      "--listen", f"127.0.0.1:{port}", "--state", str(tmp_path / "state"), *args)
        returned.set()
        helper.join(timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    return result, answers


def test_witness_serve_cosigns_until_ctrl_c(tmp_path: Path, log: SovereignJournal) -> None:
    result, answers = _serve_in_process(tmp_path, log, "--timeout", "5", "--max-connections", "4")
    assert result.exit_code == 0, result.output
    [(status, line)] = answers
    assert status == 200 and line.decode().startswith(f"\u2014 {WITNESS.name} ")
    port = result.stderr.split("http://127.0.0.1:")[1].split("/")[0]
    assert result.stderr == (f"witness {WITNESS.verifier()} serving http://127.0.0.1:{port}/add-checkpoint "
                             f"for {LOG.name} (Ctrl-C to stop)\n"
                             f"krepis witness: cosigned {LOG.name} at tree size 5\n")
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    with SovereignJournal(tmp_path / "state" / "journal", create=False) as journal:  # closed: it opens again
        [entry] = journal.query(op_name=COSIGNED_OP)
        assert entry.request_id == LOG.name
    result, answers = _serve_in_process(tmp_path, log, body=b"nonsense")
    assert result.exit_code == 0 and answers[0][0] == 400
    assert result.stderr.splitlines()[1].startswith("krepis witness: 400: ")


def test_witness_serve_refusals(tmp_path: Path, log: SovereignJournal) -> None:
    key = tmp_path / "w.key"
    key.write_text(f"{WITNESS}\n")
    state = tmp_path / "state"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _cli("witness", "serve", "--key", str(key), "--log", str(LOG.verifier()), "--listen",
                      f"127.0.0.1:{port}", "--state", str(state))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert result.stderr.count("\n") == 1
    with SovereignJournal(state / "journal", create=False):  # closed again
        pass
    result = _cli("witness", "serve", "--key", str(key), "--log", str(LOG.verifier()), "--listen", "nope",
                  "--state", str(tmp_path / "other"))
    assert result.exit_code == 2 and "Invalid value for --listen: 'nope' is not HOST:PORT" in result.stderr
    assert not (tmp_path / "other").exists()
    result = _cli("witness", "serve", "--key", str(key), "--log", "not a key", "--state",
                  str(tmp_path / "other"))
    assert result.exit_code == 1 and result.stderr.startswith("Error: not a key: ")
    logkey = tmp_path / "log.key"
    logkey.write_text(f"{LOG}\n")
    result = _cli("witness", "serve", "--key", str(logkey), "--log", str(LOG.verifier()), "--state",
                  str(tmp_path / "other"))
    assert result.exit_code == 1 and result.stderr.startswith(f"Error: {logkey}: ")
    assert not (tmp_path / "other").exists()


def test_witness_serve_of_two_logs_reads_no_policy_of_the_environment(
        tmp_path: Path, log: SovereignJournal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KREPIS_FLUSH", "whenever")
    monkeypatch.setenv("KREPIS_RETENTION", "keep-forever-please")
    other = generate_signer("example.com/other")
    result, answers = _serve_in_process(tmp_path, log, logs=(str(LOG.verifier()), str(other.verifier())))
    assert result.exit_code == 0, result.output
    assert answers[0][0] == 200
    assert result.stderr.splitlines()[0].endswith(f" for {LOG.name}, example.com/other (Ctrl-C to stop)")


def test_witness_serve_timeout_and_connection_cap(tmp_path: Path, log: SovereignJournal) -> None:
    seen: list[bytes] = []

    def idle_client(port: int) -> None:
        # a client that sends nothing is closed once --timeout passed (long before the 10 s default)
        with socket.create_connection(("127.0.0.1", port), timeout=8) as idle:
            seen.append(idle.recv(100))

    result, _ = _serve_in_process(tmp_path, log, "--timeout", "0.3", then=idle_client)
    assert result.exit_code == 0, result.output

    def over_the_cap(port: int) -> None:
        # at the cap of one connection, a new one closes the oldest at once (not after --timeout)
        with socket.create_connection(("127.0.0.1", port), timeout=8) as oldest:
            with socket.create_connection(("127.0.0.1", port), timeout=8) as newer:
                newer.sendall(b"GET / HTTP/1.0\r\n\r\n")
                seen.append(oldest.recv(100))

    result, _ = _serve_in_process(tmp_path, log, "--timeout", "60", "--max-connections", "1",
                                  then=over_the_cap)
    assert result.exit_code == 0, result.output
    assert seen == [b"", b""]
